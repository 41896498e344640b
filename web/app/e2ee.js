// End-to-end encryption with its I/O: what lib/src/e2ee/keyring.rs and e2ee/client.rs do for
// Rust clients, done for the page. Every step that touches a key is the crypto module's
// (web/crypto: lib's own Olm/Megolm code compiled to WebAssembly); this file only fetches,
// sends, waits and keeps state (docs/DESIGN.md, "End-to-end encryption").
//
// Sending: the conversation's members and their devices are read fresh for every send (a
// member removed a moment ago must not get the next key); devices whose keys do not verify are
// left out; this device's session key goes over Olm to every member device that lacks it (a
// one-time key is claimed where there is no Olm session yet), stored by the server before the
// message is sealed. Receiving: a room key is accepted only from the device the directory lists
// under its sender; a message whose key has not arrived yet waits for it (up to KEY_WAIT_MS),
// then is shown as undecryptable, never as text.
//
// Trust on first use: the first keys seen for a device are pinned; a device later listed with
// other keys is left out and reported until the user compares safety codes and trusts it.

import { CryptoError } from "./crypto.js";

/** One-time keys published at a time (vodozemac's advice). */
const ONE_TIME_KEYS = 50;
/** How long a message waits for its key before it is shown as undecryptable. */
const KEY_WAIT_MS = 10_000;

export class Keyring extends EventTarget {
  /**
   * @param {Function} call the crypto module (crypto.js `loadCrypto`).
   * @param {import("./api.js").Api} api the HTTP API, signed in.
   * @param {{user_id: string, device_id: string}} me this device.
   * @param {Storage} storage where the device's sealed state is kept.
   */
  constructor(call, api, me, storage) {
    super();
    this.call = call;
    this.api = api;
    this.me = me;
    this.storage = storage;
    this.stateKey = `msg.device.${me.user_id}.${me.device_id}`;
    this.devices = new Map(); // user -> {trusted: [DeviceKeys], any: bool}
    this.changes = []; // identities seen first or changed, not yet shown
    this.waiting = new Map(); // session id -> [resolve]
  }

  /** Loads this device (or makes it) and publishes its keys unless the directory has them. */
  async start() {
    const saved = JSON.parse(this.storage.getItem(this.stateKey) ?? "null");
    if (saved) {
      this.secret = saved.key;
      this.keys = this.call("load", { pickle: saved.pickle, key: saved.key });
    } else {
      this.secret = Array.from(crypto.getRandomValues(new Uint8Array(32)));
      this.keys = this.call("create", { user_id: this.me.user_id, device_id: this.me.device_id });
    }
    const listed = await this.api.call(
      "GET",
      `/v1/users/${encodeURIComponent(this.me.user_id)}/keys`,
    );
    const mine = listed.devices.find((d) => d.device_id === this.me.device_id);
    if (!mine || mine.identity.ed25519 !== this.keys.identity.ed25519) {
      await this.api.call("PUT", `/v1/keys/${encodeURIComponent(this.me.device_id)}`, {
        identity: this.keys.identity,
        signature: this.keys.signature,
        one_time_keys: this.call("one_time_keys", { count: ONE_TIME_KEYS }),
        fallback_key: this.call("fallback_key"),
      });
      this.publishedAt = Date.now();
    }
    this.save();
  }

  /** Seals the device's state with its key and keeps it (localStorage: this browser only). */
  save() {
    const pickle = this.call("pickle", { key: this.secret });
    this.storage.setItem(this.stateKey, JSON.stringify({ pickle, key: this.secret }));
  }

  /** This device's safety code (compare it with what the other person sees). */
  safetyCode(device = this.keys) {
    return this.call("safety_code", { ed25519: device.identity.ed25519 });
  }

  /** More one-time keys (the server said they run low). */
  async topUp(count = ONE_TIME_KEYS) {
    await this.api.call("PUT", `/v1/keys/${encodeURIComponent(this.me.device_id)}`, {
      identity: this.keys.identity,
      signature: this.keys.signature,
      one_time_keys: this.call("one_time_keys", { count }),
    });
    this.save();
  }

  /** A user's devices whose keys verify and are the ones pinned; cached until `forget`. */
  async devicesOf(userId) {
    const known = this.devices.get(userId);
    if (known) return known;
    const listed = await this.api.call("GET", `/v1/users/${encodeURIComponent(userId)}/keys`);
    const verified = listed.devices.filter(
      (d) => d.user_id === userId && this.call("verify", { device: d }),
    );
    const trusted = [];
    let pinned = false;
    for (const device of verified) {
      if (device.user_id === this.me.user_id && device.device_id === this.me.device_id) {
        trusted.push(device);
        continue;
      }
      const { trust } = this.call("check_identity", { device });
      if (trust === "known") trusted.push(device);
      if (trust === "new") {
        pinned = true;
        trusted.push(device);
      }
      if (trust === "changed") {
        this.changes.push(device);
        this.dispatchEvent(new CustomEvent("identity_changed", { detail: device }));
      }
    }
    if (pinned) this.save();
    const result = { trusted, any: verified.length > 0 };
    this.devices.set(userId, result);
    return result;
  }

  /** Forgets cached devices (`device_list` said they changed). */
  forget(userId = null) {
    if (userId) this.devices.delete(userId);
    else this.devices.clear();
  }

  /** Trusts a device's current keys after its person compared safety codes. */
  trust(device) {
    this.call("trust", { device });
    this.forget(device.user_id);
    this.save();
  }

  /**
   * Who gets a message in `conversation` (`GET /v1/conversations/{id}`): members holding keys
   * and their devices; `plaintext` only for an agent that holds none.
   */
  async recipients(conversation) {
    const members = [];
    const devices = [];
    for (const participant of conversation.participants) {
      const { trusted, any } = await this.devicesOf(participant);
      if (!any && conversation.agent_id === participant) continue;
      members.push(participant);
      devices.push(...trusted);
    }
    const plaintext =
      conversation.kind === "agent" && !members.includes(conversation.agent_id);
    return { members, devices, plaintext };
  }

  /** Gives every member device that lacks it this device's session key (stored when done). */
  async shareKey(conversationId, { members, devices }) {
    const args = { conversation_id: conversationId, members, devices, now: Date.now() };
    const needs = this.call("room_key_needs", args);
    if (needs.missing.length === 0) return;
    let claimed = [];
    if (needs.unsessioned.length) {
      const answer = await this.api.call("POST", "/v1/keys/claim", {
        devices: needs.unsessioned.map((d) => ({ user_id: d.user_id, device_id: d.device_id })),
      });
      claimed = answer.keys;
    }
    const shares = this.call("key_shares", { ...args, claimed });
    // The Olm sessions just made must outlive a reload before the messages go out.
    this.save();
    for (let at = 0; at < shares.messages.length; at += 100) {
      const batch = shares.messages.slice(at, at + 100);
      await this.api.call(
        "POST",
        `/v1/keys/${encodeURIComponent(this.me.device_id)}/to_device`,
        {
          messages: batch.map((m) => ({
            message_id: crypto.randomUUID(),
            user_id: m.user_id,
            device_id: m.device_id,
            content: m.content,
          })),
        },
      );
      this.call("shared", {
        conversation_id: conversationId,
        devices: batch.map((m) => m.device),
      });
      this.save();
    }
  }

  /**
   * The `message` payload for `item` (a queued send): sealed for the conversation's members,
   * or plaintext to an agent without keys.
   */
  async seal(item) {
    const conversation = await this.api.call(
      "GET",
      `/v1/conversations/${encodeURIComponent(item.conversation_id)}`,
    );
    const recipients = await this.recipients(conversation);
    const payload = {
      conversation_id: item.conversation_id,
      type: item.type ?? "text",
    };
    if (item.reply_to_message_id) payload.reply_to_message_id = item.reply_to_message_id;
    if (item.forwarded_from) payload.forwarded_from = item.forwarded_from;
    if (item.media_url) payload.media_url = item.media_url;
    if (recipients.plaintext) {
      if (item.extra?.attachment) {
        throw Object.assign(new Error("an agent without keys cannot get a sealed attachment"), {
          retryable: false,
          code: "invalid_request",
        });
      }
      payload.content = item.text;
      if (item.extra?.location) payload.location = item.extra.location;
      return payload;
    }
    await this.shareKey(item.conversation_id, recipients);
    payload.content = this.call("seal", {
      conversation_id: item.conversation_id,
      content: item.text,
      extra: item.extra ?? null,
    });
    this.save();
    return payload;
  }

  /**
   * Opens `to_device` messages (room keys); returns the sequence numbers to acknowledge
   * (after the state is saved). Ones from a device the directory does not list, or that do
   * not open, are acknowledged too: they never will open.
   */
  async openToDevice(items) {
    const sequences = [];
    for (const item of items) {
      let listed;
      try {
        listed = await this.devicesOf(item.sender_id);
        if (!listed.trusted.some((d) => d.device_id === item.sender_device_id)) {
          this.forget(item.sender_id);
          listed = await this.devicesOf(item.sender_id);
        }
      } catch {
        continue; // the sender's keys could not be read: kept, it comes again
      }
      sequences.push(item.sequence);
      const sender = listed.trusted.find((d) => d.device_id === item.sender_device_id);
      if (!sender) continue;
      try {
        const opened = this.call("open_to_device", {
          sender_id: item.sender_id,
          sender,
          content: item.content,
        });
        const session = opened.room_key?.session_id;
        for (const wake of this.waiting.get(session) ?? []) wake();
        this.waiting.delete(session);
      } catch (e) {
        if (!(e instanceof CryptoError)) throw e;
      }
    }
    this.save();
    return sequences;
  }

  /**
   * Opens a message's content: `{text, extra, encrypted}`, or `{error}` when it cannot be
   * read. A message whose key has not arrived waits for it.
   */
  async open(message, conversationKind) {
    const envelope = parseEnvelope(message.content);
    if (!envelope) {
      // Plaintext: the server's `system` messages and an agent without keys; between people
      // it is refused, whatever the server says.
      if (message.type === "system" || conversationKind === "agent") {
        return { text: message.content, encrypted: false };
      }
      return { error: "plaintext in a conversation between people: not shown" };
    }
    const deadline = Date.now() + KEY_WAIT_MS;
    for (;;) {
      try {
        const plaintext = this.call("open", {
          conversation_id: message.conversation_id,
          sender_id: message.sender_id,
          message_id: message.message_id,
          content: message.content,
        });
        this.save();
        return { text: plaintext.content, extra: plaintext.extra ?? null, encrypted: true };
      } catch (e) {
        if (!(e instanceof CryptoError)) throw e;
        const unknown = e.reason.startsWith("no key yet");
        if (!unknown || Date.now() >= deadline) return { error: e.reason };
        await this.keyFor(envelope.session_id, deadline - Date.now());
      }
    }
  }

  /**
   * Opens a streamed answer so far: envelopes back to back, each opened on its own, only what
   * was not opened before (a piece whose key has not arrived ends what is shown, for now).
   */
  openStream(conversationId, agentId, runId, text) {
    if (!text.trimStart().startsWith("{")) return { text, encrypted: false };
    const key = `${conversationId}|${runId}`;
    this.streams ??= new Map();
    let opened = this.streams.get(key);
    if (!opened || text.length < opened.used) opened = { used: 0, text: "" };
    opened = { ...opened };
    const base = opened.used;
    for (const { piece, end } of splitEnvelopes(text.slice(base))) {
      try {
        opened.text += this.call("open", {
          conversation_id: conversationId,
          sender_id: agentId,
          message_id: `stream/${runId}`,
          content: piece,
        }).content;
      } catch {
        break;
      }
      opened.used = base + end;
    }
    this.streams.set(key, opened);
    return { text: opened.text, encrypted: true };
  }

  keyFor(sessionId, within) {
    return new Promise((resolve) => {
      const list = this.waiting.get(sessionId) ?? [];
      list.push(resolve);
      this.waiting.set(sessionId, list);
      setTimeout(resolve, Math.max(0, within));
    });
  }
}

/** The Megolm envelope a content is, or null (plaintext). */
function parseEnvelope(content) {
  try {
    const envelope = JSON.parse(content);
    return envelope?.algorithm === "megolm.v1" && envelope.session_id ? envelope : null;
  } catch {
    return null;
  }
}

/** JSON objects written back to back: each one's text and where it ends in `text`. */
export function splitEnvelopes(text) {
  const pieces = [];
  let depth = 0;
  let start = -1;
  let inString = false;
  let escaped = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (escaped) escaped = false;
      else if (c === "\\") escaped = true;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === '"') inString = true;
    else if (c === "{") {
      if (depth === 0) start = i;
      depth += 1;
    } else if (c === "}") {
      depth -= 1;
      if (depth === 0 && start >= 0) {
        pieces.push({ piece: text.slice(start, i + 1), end: i + 1 });
        start = -1;
      }
    }
  }
  return pieces;
}
