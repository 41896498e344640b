// The WebSocket connection, with the protocol's promises kept on the page's side (the same as
// lib/src/client.rs keeps for Rust clients; frames as in docs/contract/asyncapi.json):
//
// - every send carries an idempotency key and stays queued (in localStorage: a reload or a
//   closed tab loses nothing) until `message_ack`; one send per conversation is on the wire at
//   a time, so the server numbers them in the order they were written; after a reconnect the
//   head of each queue goes again with the same key;
// - messages reach the page in sequence order per conversation: a message ahead of a gap is
//   held and the gap asked for with `retransmit`; numbers the server says will never exist
//   (`missing`) are skipped; every message that arrives is acknowledged (`delivery_ack`); one
//   this page sent takes its place in that order from its `message_ack` (the server posts it to
//   the user's other connections, not back to this one, and needs no acknowledgement of it);
//   a conversation first met mid-way waits a moment for lower numbers and starts at the lowest
//   that came;
// - reconnects back off (0.5 s doubling to 10 s, with jitter) and resume with `sync` from the
//   last number seen per conversation; while the browser says it is offline nothing is tried,
//   and its `online` event reconnects at once;
// - told `migration`, it opens the new connection first, syncs there, and only then closes the
//   old one (make before break): the user sees no disconnect.

const HEARTBEAT_MS = 30_000;
/**
 * How long the first live messages of a conversation this page knows nothing about wait for
 * lower numbers before it starts at the lowest it has (as the Rust client's
 * `FIRST_MESSAGE_WAIT`).
 */
const FIRST_MESSAGE_WAIT_MS = 300;
/** A heartbeat not answered within this (after the next one is due) means the link is dead. */
const HEARTBEAT_ACK_MS = 10_000;
/** A connection not open and synced within this is given up and tried again. */
const CONNECT_TIMEOUT_MS = 10_000;
const MIN_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 10_000;
/** A message number not filled by `retransmit` within this is asked for again. */
const GAP_RETRY_MS = 2_000;
/** Errors after which the same send is tried again later (the rest fail it). */
const RETRYABLE = new Set(["unavailable", "rate_limited", "timeout", "internal"]);

/** Connection states shown to the user. */
export const Status = Object.freeze({
  CONNECTING: "connecting",
  ONLINE: "online",
  OFFLINE: "offline",
});

export class Connection extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.wsUrl WebSocket API (`ws://...`, no token).
   * @param {() => Promise<string>} options.token a valid access token (refreshed if needed).
   * @param {Storage} options.storage where the queue and the sequence state are kept.
   * @param {string} options.storageKey prefix of its keys (one per user and device).
   * @param {(item: object) => Promise<object>} options.prepare turns a queued send into the
   *   payload of its `message` frame (the page seals it there: end-to-end encryption).
   */
  constructor({ wsUrl, token, storage, storageKey, prepare }) {
    super();
    this.wsUrl = wsUrl;
    this.token = token;
    this.storage = storage;
    this.key = storageKey;
    this.prepare = prepare;
    this.socket = null;
    this.status = Status.OFFLINE;
    this.backoff = MIN_BACKOFF_MS;
    this.closed = false;
    this.migrations = 0;
    /** conversation -> last sequence number released to the page. */
    this.last = this.load("last", {});
    /** conversation -> Map(sequence -> message) held behind a gap. */
    this.held = new Map();
    /** The signed-in user, from `auth_success` (the sender of what this page sends). */
    this.userId = null;
    /** conversation -> [send] waiting for `message_ack`, oldest first. */
    this.queues = this.load("queues", {});
    /** conversation -> highest number asked for with `retransmit`, and when. */
    this.requested = new Map();
    this.heartbeat = null;
    this.onlineListener = () => this.reconnectNow();
    this.offlineListener = () => this.drop();
    globalThis.addEventListener?.("online", this.onlineListener);
    globalThis.addEventListener?.("offline", this.offlineListener);
  }

  load(name, fallback) {
    try {
      return JSON.parse(this.storage.getItem(`${this.key}.${name}`)) ?? fallback;
    } catch {
      return fallback;
    }
  }

  save(name, value) {
    this.storage.setItem(`${this.key}.${name}`, JSON.stringify(value));
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  setStatus(status) {
    if (this.status !== status) {
      this.status = status;
      this.emit("status", status);
    }
  }

  /** Opens the connection (and keeps it open until `close`). */
  start() {
    this.closed = false;
    this.open(this.wsUrl);
  }

  async open(endpoint, { migrating = null } = {}) {
    // The latest attempt wins: one started while this one awaited its token replaces it.
    const attempt = migrating ? null : (this.attempt = {});
    if (!migrating) this.setStatus(Status.CONNECTING);
    let token;
    try {
      token = await this.token();
    } catch (e) {
      this.emit("auth_failed", String(e.message ?? e));
      if (!attempt || this.attempt === attempt) this.scheduleReconnect();
      return;
    }
    if (attempt && this.attempt !== attempt) return;
    const url = `${endpoint.replace(/\/$/, "")}/?token=${encodeURIComponent(token)}`;
    let socket;
    try {
      socket = new WebSocket(url);
    } catch {
      this.scheduleReconnect();
      return;
    }
    socket.onopen = () => {
      socket.send(JSON.stringify({ type: "sync", since: this.last }));
    };
    // A socket can hang while connecting (a network that drops packets): it is not waited for.
    setTimeout(() => {
      if (socket.readyState !== WebSocket.CLOSED && !socket.synced) socket.close();
    }, CONNECT_TIMEOUT_MS);
    socket.onmessage = (event) => {
      socket.lastFrameAt = Date.now();
      this.onFrame(socket, event.data, migrating);
    };
    socket.onclose = () => {
      if (socket !== this.socket) return; // a retired connection
      this.socket = null;
      clearInterval(this.heartbeat);
      if (!this.closed) {
        this.setStatus(Status.OFFLINE);
        this.scheduleReconnect();
      }
    };
    if (!migrating) this.socket = socket;
  }

  scheduleReconnect() {
    if (this.closed || this.reconnectTimer) return;
    // The browser knows it has no network: wait for its `online` event instead of failing.
    if (globalThis.navigator?.onLine === false) return;
    const delay = this.backoff * (0.5 + Math.random() / 2);
    this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (!this.socket && !this.closed) this.open(this.wsUrl);
    }, delay);
  }

  reconnectNow() {
    if (this.closed || this.socket?.synced) return;
    // A connection attempt made while the network was gone may never finish: start afresh.
    if (this.socket) {
      const stale = this.socket;
      this.socket = null;
      stale.onclose = null;
      stale.close();
    }
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.backoff = MIN_BACKOFF_MS;
    this.open(this.wsUrl);
  }

  /** Closes for good (sign-out). */
  close() {
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.heartbeat);
    globalThis.removeEventListener?.("online", this.onlineListener);
    globalThis.removeEventListener?.("offline", this.offlineListener);
    this.socket?.close();
    this.socket = null;
    this.setStatus(Status.OFFLINE);
  }

  /**
   * Gives the connection up as lost (the browser went offline, heartbeats go unanswered): the
   * page shows it at once and reconnects, without waiting for a close handshake that a dead
   * network never completes.
   */
  drop() {
    const socket = this.socket;
    if (!socket) return;
    this.socket = null;
    socket.onclose = null;
    socket.onmessage = null;
    socket.close();
    clearInterval(this.heartbeat);
    if (!this.closed) {
      this.setStatus(Status.OFFLINE);
      this.scheduleReconnect();
    }
  }

  send(frame) {
    if (this.socket?.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  // ---- sending messages -------------------------------------------------------------------

  /**
   * Queues a message: `{conversation_id, text, extra, type, reply_to_message_id, ...}`.
   * Returns its client message id; `ack` or `send_failed` tells how it ended.
   */
  enqueue(message) {
    const item = {
      client_message_id: crypto.randomUUID(),
      idempotency_key: crypto.randomUUID(),
      queued_at: Date.now(),
      ...message,
    };
    const queue = (this.queues[message.conversation_id] ??= []);
    queue.push(item);
    this.save("queues", this.queues);
    if (queue.length === 1) this.sendHead(message.conversation_id);
    return item.client_message_id;
  }

  /** Sends still waiting for their ack, per conversation. */
  pending(conversationId) {
    return this.queues[conversationId] ?? [];
  }

  async sendHead(conversationId) {
    const item = this.queues[conversationId]?.[0];
    if (!item || this.status !== Status.ONLINE || item.sending) return;
    if (!item.payload) {
      item.sending = true;
      try {
        item.payload = await this.prepare(item);
        this.save("queues", this.queues);
      } catch (e) {
        item.sending = false;
        if (e.retryable === false) {
          this.fail(conversationId, item.client_message_id, e.code ?? "invalid_request", e.message);
        } else {
          setTimeout(() => this.sendHead(conversationId), 1000);
        }
        return;
      }
      item.sending = false;
    }
    if (this.queues[conversationId]?.[0] !== item) return;
    this.send({
      type: "message",
      client_message_id: item.client_message_id,
      idempotency_key: item.idempotency_key,
      payload: { ...item.payload, timestamp: Date.now() },
    });
  }

  answered(clientMessageId) {
    for (const [conversation, queue] of Object.entries(this.queues)) {
      const index = queue.findIndex((i) => i.client_message_id === clientMessageId);
      if (index < 0) continue;
      const [item] = queue.splice(index, 1);
      if (queue.length === 0) delete this.queues[conversation];
      this.save("queues", this.queues);
      if (index === 0) this.sendHead(conversation);
      return item;
    }
    return null;
  }

  fail(conversationId, clientMessageId, code, message) {
    const item = this.answered(clientMessageId);
    if (item) this.emit("send_failed", { item, code, message });
  }

  // ---- receiving ----------------------------------------------------------------------------

  onFrame(socket, text, migrating) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    switch (frame.type) {
      case "auth_success":
        this.onReady(socket, frame.payload, migrating);
        break;
      case "auth_error":
        this.emit("auth_failed", frame.error);
        break;
      case "message":
        this.accept(frame.payload);
        break;
      case "messages": {
        const { conversation_id: conversation, messages, missing } = frame.payload;
        if (!(conversation in this.last) && messages.length) {
          this.startAt(conversation, messages[0].sequence_number);
        }
        for (const m of messages) this.accept({ conversation_id: conversation, ...m });
        if (missing?.length) this.skip(conversation, missing);
        break;
      }
      case "message_ack": {
        const item = this.answered(frame.client_message_id);
        if (!item) break;
        this.emit("ack", { item, ack: frame.payload });
        // The ack and what was sent are the message on this connection.
        const { message_id, sequence_number, timestamp } = frame.payload;
        this.accept(
          {
            ...item.payload,
            conversation_id: item.conversation_id,
            sender_id: this.userId,
            message_id,
            sequence_number,
            timestamp,
            status: "sent",
          },
          { arrived: false },
        );
        break;
      }
      case "error": {
        const id = frame.client_message_id;
        if (id && RETRYABLE.has(frame.code)) {
          const item = Object.values(this.queues).flat().find((i) => i.client_message_id === id);
          if (item) {
            const wait = Math.min(30, Math.max(1, frame.retry_after ?? 1)) * 1000;
            setTimeout(() => this.sendHead(item.conversation_id), wait);
          }
        } else if (id) {
          const item = Object.values(this.queues).flat().find((i) => i.client_message_id === id);
          if (item) this.fail(item.conversation_id, id, frame.code, frame.message);
        } else {
          this.emit("server_error", frame);
        }
        break;
      }
      case "migration":
        this.migrate(socket, frame.payload);
        break;
      case "heartbeat_ack":
        break;
      default:
        // Receipts, typing, presence, agent runs and deltas, to_device and key lists: the page's.
        this.emit(frame.type, frame.payload ?? frame);
    }
  }

  onReady(socket, payload, migrating) {
    socket.synced = true;
    this.userId = payload.user_id ?? this.userId;
    if (migrating) {
      // The new connection has synced: it takes over, then the old one goes.
      const old = this.socket;
      this.socket = socket;
      this.migrations += 1;
      if (old && old !== socket) {
        old.onclose = null;
        setTimeout(() => old.close(1000, "migrated"), 200);
      }
    }
    this.backoff = MIN_BACKOFF_MS;
    this.setStatus(Status.ONLINE);
    clearInterval(this.heartbeat);
    socket.lastFrameAt = Date.now();
    this.heartbeat = setInterval(() => {
      // Nothing heard since the last heartbeat, not even its ack: the connection is dead.
      if (Date.now() - this.socket?.lastFrameAt > HEARTBEAT_MS + HEARTBEAT_ACK_MS) {
        this.drop();
        return;
      }
      this.send({ type: "heartbeat", timestamp: Date.now() });
    }, HEARTBEAT_MS);
    this.emit("ready", payload);
    for (const conversation of Object.keys(this.queues)) {
      const head = this.queues[conversation][0];
      if (head) head.sending = false;
      this.sendHead(conversation);
    }
  }

  migrate(oldSocket, payload) {
    if (oldSocket !== this.socket) return;
    this.emit("migrating", payload);
    this.open(payload.new_endpoint || this.wsUrl, { migrating: oldSocket });
  }

  /**
   * Takes a message through the ordering (see the module comment). One this page sent
   * (`arrived: false`) needs no acknowledgement: the device's floor moves with the next message.
   */
  accept(m, { arrived = true } = {}) {
    const conversation = m.conversation_id;
    if (!conversation) return;
    if (arrived) this.send({
      type: "delivery_ack",
      message_id: m.message_id,
      timestamp: Date.now(),
      conversation_id: conversation,
      sequence_number: m.sequence_number,
    });
    let held = this.held.get(conversation);
    if (!held) this.held.set(conversation, (held = new Map()));
    if (!(conversation in this.last)) {
      if (m.sequence_number === 1) {
        // Numbers start at 1: nothing lower can come, so the conversation starts here.
        this.last[conversation] = 0;
      } else {
        // A conversation this page knows nothing about, met mid-way: two of its messages can
        // reach this connection out of order (concurrent fan-outs), and starting at whichever
        // came first would drop the other as a repeat. Hold what comes for a moment, then start
        // at the lowest number seen (unless a `messages` batch started it meanwhile).
        const first = held.size === 0;
        held.set(m.sequence_number, m);
        if (first) {
          setTimeout(() => {
            const waiting = this.held.get(conversation);
            if (conversation in this.last || !waiting?.size) return;
            this.startAt(conversation, Math.min(...waiting.keys()));
            this.release(conversation);
          }, FIRST_MESSAGE_WAIT_MS);
        }
        return;
      }
    }
    if (m.sequence_number <= this.last[conversation]) return; // a repeat
    held.set(m.sequence_number, m);
    this.release(conversation);
  }

  startAt(conversation, first) {
    const held = this.held.get(conversation);
    const lowest = held?.size ? Math.min(first, ...held.keys()) : first;
    this.last[conversation] = lowest - 1;
  }

  skip(conversation, missing) {
    let next = this.last[conversation] ?? 0;
    for (const s of [...missing].sort((a, b) => a - b)) if (s === next + 1) next = s;
    if (next > (this.last[conversation] ?? 0)) {
      this.last[conversation] = next;
      this.release(conversation);
    }
  }

  release(conversation) {
    const held = this.held.get(conversation) ?? new Map();
    let last = this.last[conversation] ?? 0;
    while (held.has(last + 1)) {
      const m = held.get(last + 1);
      held.delete(last + 1);
      last += 1;
      this.last[conversation] = last;
      this.emit("message", m);
    }
    this.save("last", this.last);
    if (held.size === 0) {
      this.requested.delete(conversation);
      return;
    }
    const wanted = Math.min(...held.keys()) - 1;
    const asked = this.requested.get(conversation);
    if (!asked || asked.upTo < wanted || Date.now() - asked.at > GAP_RETRY_MS) {
      this.requested.set(conversation, { upTo: wanted, at: Date.now() });
      this.send({
        type: "retransmit",
        conversation_id: conversation,
        from_sequence: last + 1,
        to_sequence: wanted,
      });
      setTimeout(() => {
        if (this.held.get(conversation)?.size) this.release(conversation);
      }, GAP_RETRY_MS + 100);
    }
  }

  /** Marks messages read (their senders get `read_receipt` or the group's `receipts`). */
  read(messageIds) {
    for (let at = 0; at < messageIds.length; at += 500) {
      this.send({
        type: "read_receipt",
        message_ids: messageIds.slice(at, at + 500),
        timestamp: Date.now(),
      });
    }
  }
}
