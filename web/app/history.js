// What this device keeps of each conversation: the messages it opened (plaintext lives only
// on the device, as in every end-to-end encrypted messenger), their delivery state, and what
// the user read. In localStorage, per user and device; the newest KEEP messages per
// conversation. The server holds only ciphertext: a new device starts with nothing readable
// from before it existed.

const KEEP = 500;
const ORDER = { pending: 0, sent: 1, delivered: 2, read: 3 };

export class History {
  constructor(storage, prefix) {
    this.storage = storage;
    this.prefix = prefix;
    this.cache = new Map();
  }

  /** The conversation's messages, in sequence order. */
  messages(conversationId) {
    let list = this.cache.get(conversationId);
    if (!list) {
      try {
        list = JSON.parse(this.storage.getItem(`${this.prefix}.${conversationId}`)) ?? [];
      } catch {
        list = [];
      }
      this.cache.set(conversationId, list);
    }
    return list;
  }

  persist(conversationId) {
    const list = this.messages(conversationId);
    if (list.length > KEEP) list.splice(0, list.length - KEEP);
    this.storage.setItem(`${this.prefix}.${conversationId}`, JSON.stringify(list));
  }

  /** Adds or updates a message (by id); keeps sequence order. */
  put(conversationId, message) {
    const list = this.messages(conversationId);
    const index = list.findIndex((m) => m.message_id === message.message_id);
    if (index >= 0) list[index] = { ...list[index], ...message };
    else {
      list.push(message);
      list.sort((a, b) => a.sequence_number - b.sequence_number);
    }
    this.persist(conversationId);
  }

  /** The last message, for the conversation list's preview. */
  last(conversationId) {
    const list = this.messages(conversationId);
    return list[list.length - 1] ?? null;
  }

  /** Raises the status of one of the user's messages (never lowers it). */
  mark(conversationId, messageId, status) {
    const message = this.messages(conversationId).find((m) => m.message_id === messageId);
    if (message && ORDER[status] > (ORDER[message.status] ?? 0)) {
      message.status = status;
      this.persist(conversationId);
      return true;
    }
    return false;
  }

  /** Raises the status of the user's messages up to a sequence number (group receipts). */
  markUpTo(conversationId, me, upTo, status) {
    let changed = false;
    for (const m of this.messages(conversationId)) {
      if (m.sender_id === me && m.sequence_number <= upTo && ORDER[status] > (ORDER[m.status] ?? 0)) {
        m.status = status;
        changed = true;
      }
    }
    if (changed) this.persist(conversationId);
    return changed;
  }

  /** Finds which conversation a message id belongs to (receipts name messages only). */
  conversationOf(messageId, conversationIds) {
    return conversationIds.find((c) => this.messages(c).some((m) => m.message_id === messageId));
  }

  /** Forgets a conversation (deleted for this user). */
  forget(conversationId) {
    this.cache.delete(conversationId);
    this.storage.removeItem(`${this.prefix}.${conversationId}`);
  }
}
