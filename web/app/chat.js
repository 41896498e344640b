// A signed-in device's messaging session, without any DOM: the connection, the keyring, the
// HTTP API and the device's history wired together. The page renders what it says (a
// `change` event names what changed) and calls its actions (send, read, typing, cancel, ...).

import { Connection } from "./connection.js";
import { Keyring } from "./e2ee.js";
import { History } from "./history.js";
import * as media from "./media.js";

/** How long the browser's push service may take to subscribe this browser. */
const PUSH_SUBSCRIBE_TIMEOUT_MS = 10_000;
/** How long a typing indicator lasts without a new `typing` frame. */
const TYPING_SHOWN_MS = 6_000;
/** A `typing start` is repeated at most this often while the user types. */
const TYPING_REPEAT_MS = 3_000;
/** A message delta ahead of what arrived waits this long before `sync` fetches a snapshot. */
const DELTA_GAP_WAIT_MS = 1_000;

export class Chat extends EventTarget {
  /**
   * @param {object} options
   * @param {object} options.config `config.json` (api_url, ws_url).
   * @param {import("./api.js").Api} options.api signed in.
   * @param {Function} options.crypto the crypto module's call.
   * @param {{user_id: string, device_id: string, name: string}} options.me
   * @param {Storage} options.storage
   */
  constructor({ config, api, crypto, me, storage }) {
    super();
    this.api = api;
    this.me = me;
    const prefix = `msg.${me.user_id}.${me.device_id}`;
    this.history = new History(storage, `${prefix}.history`);
    this.keyring = new Keyring(crypto, api, me, storage);
    this.connection = new Connection({
      wsUrl: config.ws_url,
      token: () => api.token(),
      storage,
      storageKey: prefix,
      prepare: (item) => this.keyring.seal(item),
    });
    this.conversations = new Map(); // id -> ConversationView
    this.typing = new Map(); // conversation -> Map(user -> until)
    this.presence = new Map(); // user -> {status, last_seen}
    this.runs = new Map(); // conversation -> Map(run -> run state)
    this.streams = new Map(); // "conversation|run" -> {have, text, agent_id, pending}
    this.marks = new Map(); // group -> {delivered: Map(user -> up_to), read: Map}
    this.readUpTo = JSON.parse(storage.getItem(`${prefix}.read`) ?? "{}");
    this.storage = storage;
    this.prefix = prefix;
    this.lastTyping = new Map();
    this.names = new Map(); // user id -> display name (or the promise of it)
    this.readyUrls = new Map(); // media id -> object URL of its opened bytes
    this.wire();
  }

  changed(what, conversationId = null) {
    this.dispatchEvent(new CustomEvent("change", { detail: { what, conversationId } }));
  }

  /** Publishes keys if needed, reads the conversation list, connects. */
  async start() {
    await this.keyring.start();
    await this.refreshConversations();
    this.connection.start();
  }

  stop() {
    this.connection.close();
  }

  wire() {
    const on = (type, handler) =>
      this.connection.addEventListener(type, (event) => {
        Promise.resolve(handler(event.detail)).catch((e) => console.error(type, e));
      });
    on("status", () => this.changed("status"));
    on("ready", () => this.refreshConversations());
    on("message", (m) => this.onMessage(m));
    on("ack", ({ item, ack }) => this.onAck(item, ack));
    on("send_failed", ({ item, code, message }) => {
      this.history.put(item.conversation_id, {
        ...this.ownView(item),
        status: "failed",
        failure: `${code}: ${message}`,
        message_id: item.client_message_id,
        sequence_number: Number.MAX_SAFE_INTEGER,
      });
      this.changed("messages", item.conversation_id);
    });
    on("delivery_ack", (p) => this.onReceipt(p.message_ids, "delivered"));
    on("read_receipt", (p) => this.onReceipt(p.message_ids, "read"));
    on("receipts", (p) => this.onGroupReceipts(p));
    on("typing", (p) => this.onTyping(p));
    on("presence", (p) => {
      this.presence.set(p.user_id, p);
      this.changed("presence");
    });
    on("agent_run", (p) => this.onRun(p));
    on("message_delta", (p) => this.onDelta(p));
    on("to_device", async (p) => {
      const sequences = await this.keyring.openToDevice(p.messages);
      if (sequences.length) this.connection.send({ type: "to_device_ack", sequences });
    });
    on("device_list", (p) => this.keyring.forget(p.user_id));
    on("one_time_keys_low", () => this.keyring.topUp());
    this.keyring.addEventListener("identity_changed", (e) =>
      this.dispatchEvent(new CustomEvent("identity_changed", { detail: e.detail })),
    );
  }

  // ---- conversations ------------------------------------------------------------------------

  async refreshConversations() {
    const page = await this.api.call("GET", "/v1/conversations?limit=100");
    this.conversations = new Map(page.conversations.map((c) => [c.conversation_id, c]));
    this.changed("conversations");
  }

  /** The conversation list: pinned first, then by last activity; archived ones apart. */
  list({ archived = false, query = "" } = {}) {
    const q = query.trim().toLowerCase();
    return [...this.conversations.values()]
      .filter((c) => c.archived === archived)
      // An empty 1:1 (started, or made to find someone for a group) shows once it has messages.
      .filter((c) => c.kind !== "direct" || c.last_sequence_number > 0 || c.conversation_id === this.showing)
      .filter(
        (c) =>
          !q ||
          c.title.toLowerCase().includes(q) ||
          this.history.messages(c.conversation_id).some((m) => m.text?.toLowerCase().includes(q)),
      )
      .sort(
        (a, b) =>
          Number(b.pinned) - Number(a.pinned) || this.activity(b) - this.activity(a),
      );
  }

  activity(c) {
    return Math.max(c.last_activity_at ?? 0, this.history.last(c.conversation_id)?.timestamp ?? 0);
  }

  /** Unread messages: the server's count, less what was read here since. */
  unread(c) {
    const read = this.readUpTo[c.conversation_id] ?? 0;
    const others = this.history
      .messages(c.conversation_id)
      .filter((m) => m.sender_id !== this.me.user_id && m.sequence_number > read).length;
    return Math.max(others, read >= (c.last_sequence_number ?? 0) ? 0 : c.unread_count);
  }

  /** Opens (or finds) a 1:1 with a person (`{email}`, `{user_id}`) or an agent (`{agent_id}`). */
  async startConversation(peer) {
    const view = await this.api.call("POST", "/v1/conversations", peer);
    this.conversations.set(view.conversation_id, view);
    this.changed("conversations");
    return view;
  }

  /** A new group with people given by user id or email address. */
  async createGroup(name, people) {
    const participants = [];
    for (const who of people) participants.push(await this.userIdOf(who));
    const group = await this.api.call("POST", "/v1/groups", { name, participants });
    await this.refreshConversations();
    return group;
  }

  /** Adds people (user ids or emails) to a group (admins only). */
  async addToGroup(conversationId, people) {
    const user_ids = [];
    for (const who of people) user_ids.push(await this.userIdOf(who));
    await this.api.call("POST", `/v1/groups/${enc(conversationId)}/participants`, { user_ids });
    await this.refreshConversations();
  }

  async removeFromGroup(conversationId, userId) {
    await this.api.call("DELETE", `/v1/groups/${enc(conversationId)}/participants/${enc(userId)}`);
    await this.refreshConversations();
  }

  async makeAdmin(conversationId, userId) {
    await this.api.call("POST", `/v1/groups/${enc(conversationId)}/admins`, { user_id: userId });
    await this.refreshConversations();
  }

  /** A person's user id: as given, or found by e-mail (through the 1:1 with them). */
  async userIdOf(who) {
    if (!who.includes("@")) return who;
    const view = await this.api.call("POST", "/v1/conversations", { email: who });
    return view.participants.find((p) => p !== this.me.user_id) ?? who;
  }

  async setFlags(conversationId, flags) {
    const view = await this.api.call("PATCH", `/v1/conversations/${enc(conversationId)}`, flags);
    this.conversations.set(conversationId, { ...this.conversations.get(conversationId), ...view });
    this.changed("conversations");
  }

  async deleteConversation(conversationId) {
    await this.api.call("DELETE", `/v1/conversations/${enc(conversationId)}`);
    this.conversations.delete(conversationId);
    this.history.forget(conversationId);
    this.changed("conversations");
  }

  /** Agents to chat with: `q` searches names, capabilities and categories. */
  async agents({ q = "", category = "" } = {}) {
    const query = new URLSearchParams({ limit: "100" });
    if (q) query.set("q", q);
    if (category) query.set("category", category);
    return (await this.api.call("GET", `/v1/agents?${query}`)).agents;
  }

  async conversation(conversationId) {
    let view = this.conversations.get(conversationId);
    if (!view) {
      view = await this.api.call("GET", `/v1/conversations/${enc(conversationId)}`);
      this.conversations.set(conversationId, view);
      this.changed("conversations");
    }
    return view;
  }

  /** A participant's display name: known at once when fetched before, else the id until then. */
  nameOf(userId) {
    if (userId === this.me.user_id) return this.me.name || "You";
    const known = this.names.get(userId);
    if (typeof known === "string") return known;
    if (!known) {
      const agent = [...this.conversations.values()].find((c) => c.agent_id === userId);
      if (agent) return agent.title;
      this.names.set(
        userId,
        this.api
          .call("GET", `/v1/users/${enc(userId)}`)
          .then((profile) => {
            this.names.set(userId, profile.name);
            this.changed("names");
          })
          .catch(() => this.names.set(userId, userId)),
      );
    }
    return userId;
  }

  // ---- messages -----------------------------------------------------------------------------

  /** Sends text (sealed when the connection takes it; queued while offline). */
  send(conversationId, text, { replyTo = null, forwardedFrom = null, extra = null, type = "text", mediaUrl = null } = {}) {
    const id = this.connection.enqueue({
      conversation_id: conversationId,
      text,
      type,
      extra,
      media_url: mediaUrl ?? undefined,
      reply_to_message_id: replyTo ?? undefined,
      forwarded_from: forwardedFrom ?? undefined,
    });
    this.typingStop(conversationId);
    this.changed("messages", conversationId);
    return id;
  }

  /**
   * Seals and uploads a file, then sends it (with `caption` as its text). Needs the network:
   * the upload is not queued.
   */
  async sendFile(conversationId, file, caption = "", type = media.messageTypeOf(file)) {
    const view = await this.conversation(conversationId);
    if (view.kind === "agent" && !view.end_to_end_encrypted) {
      throw new Error("this agent holds no keys: attachments are sent only end-to-end encrypted");
    }
    const extra = { attachment: await media.upload(this.api, conversationId, type, file) };
    if (type === "image") extra.thumbnail = await media.thumbnail(file);
    return this.send(conversationId, caption, { type, extra, mediaUrl: extra.attachment.media_id });
  }

  /** Sends where the user is (inside the sealed message, as every location between people). */
  sendLocation(conversationId, { latitude, longitude }) {
    return this.send(conversationId, "📍 Location", { type: "location", extra: { location: { latitude, longitude } } });
  }

  /** An attachment's content as an object URL (fetched and opened once per page). */
  async attachmentUrl(attachment) {
    this.attachmentUrls ??= new Map();
    let url = this.attachmentUrls.get(attachment.media_id);
    if (!url) {
      url = media.download(this.api, attachment).then((blob) => {
        const objectUrl = URL.createObjectURL(blob);
        this.readyUrls.set(attachment.media_id, objectUrl);
        return objectUrl;
      });
      this.attachmentUrls.set(attachment.media_id, url);
      url.catch(() => this.attachmentUrls.delete(attachment.media_id));
    }
    return url;
  }

  /** What the page shows of one of its own sends: waiting (`pending`), or `acked`. */
  ownView(item, ack = null) {
    return {
      message_id: ack?.message_id ?? item.client_message_id,
      sequence_number: ack?.sequence_number,
      conversation_id: item.conversation_id,
      sender_id: this.me.user_id,
      text: item.text,
      type: item.type,
      reply_to_message_id: item.reply_to_message_id,
      forwarded_from: item.forwarded_from,
      media_url: item.media_url,
      extra: item.extra ?? null,
      attachment: item.extra?.attachment ?? null,
      timestamp: ack?.timestamp ?? item.queued_at,
      status: ack ? "sent" : "pending",
      encrypted: true,
    };
  }

  /** The conversation as shown: what arrived, then what is still being sent. */
  messages(conversationId) {
    const pending = this.connection.pending(conversationId).map((i) => this.ownView(i));
    return [...this.history.messages(conversationId), ...pending];
  }

  onAck(item, ack) {
    // The acked text is the message on this device, with its number and status (the server
    // posts it to this user's other devices, not back here).
    const existing = this.history.messages(item.conversation_id).find((m) => m.message_id === ack.message_id);
    this.history.put(item.conversation_id, {
      ...this.ownView(item, ack),
      status: existing?.status ?? "sent",
    });
    this.changed("messages", item.conversation_id);
  }

  async onMessage(m) {
    const conversationId = m.conversation_id;
    const known = this.history.messages(conversationId).find((x) => x.message_id === m.message_id);
    if (known?.text !== undefined && !known.error) return; // our own send, acked already
    const view = await this.conversation(conversationId).catch(() => null);
    const opened = await this.keyring.open(m, view?.kind);
    this.history.put(conversationId, {
      message_id: m.message_id,
      sequence_number: m.sequence_number,
      conversation_id: conversationId,
      sender_id: m.sender_id,
      type: m.type,
      reply_to_message_id: m.reply_to_message_id,
      forwarded_from: m.forwarded_from,
      media_url: m.media_url,
      timestamp: m.timestamp,
      status: m.sender_id === this.me.user_id ? (known?.status ?? m.status ?? "sent") : undefined,
      text: opened.text,
      extra: opened.extra,
      // An attachment counts only as the media the message names.
      attachment:
        m.media_url && opened.extra?.attachment?.media_id === m.media_url ? opened.extra.attachment : null,
      encrypted: opened.encrypted,
      error: opened.error,
    });
    // The agent's stored answer replaces its streamed text.
    for (const [key, stream] of this.streams) {
      if (key.startsWith(`${conversationId}|`) && stream.agent_id === m.sender_id && stream.done) {
        this.streams.delete(key);
      }
    }
    if (view && m.sequence_number > (view.last_sequence_number ?? 0)) {
      view.last_sequence_number = m.sequence_number;
      view.last_activity_at = m.timestamp;
      if (m.sender_id !== this.me.user_id && m.sender_id !== "system") view.unread_count += 1;
    } else if (!view) {
      this.refreshConversations();
    }
    this.typing.get(conversationId)?.delete(m.sender_id);
    this.changed("messages", conversationId);
    this.changed("conversations");
  }

  onReceipt(messageIds, status) {
    const ids = [...this.conversations.keys()];
    for (const id of messageIds) {
      const conversationId = this.history.conversationOf(id, ids);
      if (conversationId && this.history.mark(conversationId, id, status)) {
        this.changed("messages", conversationId);
      }
    }
  }

  /** Group receipts: a message is delivered (read) once every other member's mark reaches it. */
  onGroupReceipts({ conversation_id: conversationId, delivered = [], read = [] }) {
    const marks = this.marks.get(conversationId) ?? { delivered: new Map(), read: new Map() };
    this.marks.set(conversationId, marks);
    for (const { user_id, up_to } of delivered) {
      marks.delivered.set(user_id, Math.max(up_to, marks.delivered.get(user_id) ?? 0));
    }
    for (const { user_id, up_to } of read) {
      marks.read.set(user_id, Math.max(up_to, marks.read.get(user_id) ?? 0));
      marks.delivered.set(user_id, Math.max(up_to, marks.delivered.get(user_id) ?? 0));
    }
    const view = this.conversations.get(conversationId);
    const others = (view?.participants ?? []).filter((p) => p !== this.me.user_id);
    const lowest = (map) => (others.length ? Math.min(...others.map((p) => map.get(p) ?? 0)) : 0);
    const a = this.history.markUpTo(conversationId, this.me.user_id, lowest(marks.delivered), "delivered");
    const b = this.history.markUpTo(conversationId, this.me.user_id, lowest(marks.read), "read");
    if (a || b) this.changed("messages", conversationId);
  }

  /** Marks everything shown in the conversation read (its senders get receipts). */
  markRead(conversationId) {
    const read = this.readUpTo[conversationId] ?? 0;
    const unread = this.history
      .messages(conversationId)
      .filter((m) => m.sender_id !== this.me.user_id && m.sequence_number > read);
    if (unread.length === 0) return;
    if (this.connection.status !== "online") return; // read when back
    this.connection.read(unread.map((m) => m.message_id));
    this.readUpTo[conversationId] = Math.max(...unread.map((m) => m.sequence_number));
    this.storage.setItem(`${this.prefix}.read`, JSON.stringify(this.readUpTo));
    const view = this.conversations.get(conversationId);
    if (view) view.unread_count = 0;
    this.changed("conversations");
  }

  // ---- typing, presence ---------------------------------------------------------------------

  typingStart(conversationId) {
    const last = this.lastTyping.get(conversationId) ?? 0;
    if (Date.now() - last < TYPING_REPEAT_MS) return;
    this.lastTyping.set(conversationId, Date.now());
    this.connection.send({ type: "typing", conversation_id: conversationId, state: "start" });
  }

  typingStop(conversationId) {
    if (!this.lastTyping.has(conversationId)) return;
    this.lastTyping.delete(conversationId);
    this.connection.send({ type: "typing", conversation_id: conversationId, state: "stop" });
  }

  onTyping({ conversation_id: conversationId, user_id: userId, state }) {
    if (userId === this.me.user_id) return;
    const map = this.typing.get(conversationId) ?? new Map();
    this.typing.set(conversationId, map);
    if (state === "start") {
      map.set(userId, Date.now() + TYPING_SHOWN_MS);
      setTimeout(() => this.changed("typing", conversationId), TYPING_SHOWN_MS + 50);
    } else map.delete(userId);
    this.changed("typing", conversationId);
  }

  /** Who is typing in a conversation now. */
  typingIn(conversationId) {
    const map = this.typing.get(conversationId);
    if (!map) return [];
    return [...map].filter(([, until]) => until > Date.now()).map(([user]) => user);
  }

  askPresence(userIds) {
    if (userIds.length) this.connection.send({ type: "presence", user_ids: userIds.slice(0, 100) });
  }

  // ---- push ---------------------------------------------------------------------------------

  /**
   * Subscribes this browser to Web Push with the deployment's VAPID key and registers the
   * subscription as this device's push token; notifications then arrive while the page is
   * closed (the service worker shows them). Throws a reason people can read when the browser
   * cannot (no push service, permission refused).
   */
  async enablePush(vapidPublicKey) {
    if (!vapidPublicKey) throw new Error("this deployment sends no web push");
    if (!("serviceWorker" in navigator) || !("PushManager" in window)) {
      throw new Error("this browser cannot receive push notifications");
    }
    if ((await Notification.requestPermission()) !== "granted") {
      throw new Error("notifications are not allowed for this site (see the browser's site settings)");
    }
    const registration = await navigator.serviceWorker.ready;
    let subscription;
    try {
      // The browser asks its vendor's push service, which may be out of reach: not waited
      // for forever.
      subscription = await Promise.race([
        registration.pushManager.subscribe({
          userVisibleOnly: true,
          applicationServerKey: fromBase64url(vapidPublicKey),
        }),
        new Promise((_, reject) =>
          setTimeout(() => reject(new Error("no answer within 10 s")), PUSH_SUBSCRIBE_TIMEOUT_MS),
        ),
      ]);
    } catch (e) {
      throw new Error(`the browser's push service refused: ${e.message}`);
    }
    await this.api.call("PUT", `/v1/devices/${enc(this.me.device_id)}`, {
      platform: "web",
      token: JSON.stringify(subscription),
    });
  }

  /** Stops push to this browser (its subscription and its registration). */
  async disablePush() {
    const registration = await navigator.serviceWorker?.ready;
    await (await registration?.pushManager.getSubscription())?.unsubscribe();
    await this.api.call("DELETE", `/v1/devices/${enc(this.me.device_id)}`).catch(() => {});
  }

  /** Whether this browser is subscribed now. */
  async pushEnabled() {
    if (!("serviceWorker" in navigator) || !("PushManager" in window)) return false;
    const registration = await navigator.serviceWorker.getRegistration();
    return Boolean(await registration?.pushManager.getSubscription());
  }

  // ---- agent runs ---------------------------------------------------------------------------

  onRun(run) {
    const runs = this.runs.get(run.conversation_id) ?? new Map();
    this.runs.set(run.conversation_id, runs);
    const shown = runs.get(run.run_id);
    if (shown && shown.updated_at > run.updated_at) return; // older than what is shown
    if (shown && ["completed", "failed", "cancelled"].includes(shown.state)) return;
    runs.set(run.run_id, run);
    const stream = this.streams.get(`${run.conversation_id}|${run.run_id}`);
    if (stream && ["completed", "failed", "cancelled"].includes(run.state)) {
      stream.done = true;
      if (run.state !== "completed") this.streams.delete(`${run.conversation_id}|${run.run_id}`);
    }
    this.changed("runs", run.conversation_id);
  }

  /** The runs of a conversation that are not over, with their streamed text so far. */
  activeRuns(conversationId) {
    const runs = [...(this.runs.get(conversationId)?.values() ?? [])];
    const active = runs.filter((r) => !["completed", "failed", "cancelled"].includes(r.state));
    const shown = active.map((run) => ({
      ...run,
      text: this.streamText(conversationId, run.run_id),
    }));
    // A stream whose run state has not arrived yet is shown too.
    for (const [key, stream] of this.streams) {
      const [c, runId] = key.split("|");
      if (c === conversationId && !stream.done && !shown.some((r) => r.run_id === runId)) {
        shown.push({ run_id: runId, agent_id: stream.agent_id, state: "working", text: this.streamText(c, runId) });
      }
    }
    return shown;
  }

  /** Runs that ended without an answer (failed or cancelled), for a line in the chat. */
  endedRuns(conversationId) {
    return [...(this.runs.get(conversationId)?.values() ?? [])].filter((r) =>
      ["failed", "cancelled"].includes(r.state),
    );
  }

  streamText(conversationId, runId) {
    const stream = this.streams.get(`${conversationId}|${runId}`);
    if (!stream) return "";
    return this.keyring.openStream(conversationId, stream.agent_id, runId, stream.text).text;
  }

  onDelta(delta) {
    const key = `${delta.conversation_id}|${delta.run_id}`;
    const stream = this.streams.get(key) ?? { have: 0, text: "", agent_id: delta.agent_id, pending: new Map() };
    this.streams.set(key, stream);
    if (stream.done) return;
    if (delta.snapshot) {
      if (delta.to_index < stream.have) return;
      stream.text = delta.text;
      stream.have = delta.to_index;
    } else if (delta.to_index <= stream.have) {
      return; // a repeat
    } else if (delta.from_index > stream.have) {
      // Ahead of what arrived: wait for the pieces before it, then ask for a snapshot.
      stream.pending.set(delta.from_index, delta);
      setTimeout(() => {
        if (stream.have < delta.from_index && !stream.done) {
          this.connection.send({ type: "sync", since: this.connection.last });
        }
      }, DELTA_GAP_WAIT_MS);
      return;
    } else {
      stream.text += delta.text;
      stream.have = delta.to_index;
    }
    for (let next = stream.pending.get(stream.have); next; next = stream.pending.get(stream.have)) {
      stream.pending.delete(stream.have);
      stream.text += next.text;
      stream.have = next.to_index;
    }
    this.changed("runs", delta.conversation_id);
  }

  /** Stops an agent's run. */
  cancel(conversationId, runId) {
    this.connection.send({ type: "cancel", conversation_id: conversationId, run_id: runId });
  }
}

function fromBase64url(text) {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
  return Uint8Array.from(atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4)), (c) => c.charCodeAt(0));
}

function enc(value) {
  return encodeURIComponent(value);
}
