// The signed-in screens: the conversation list, the open chat, the new-chat and info dialogs.
// Everything shown comes from the Chat session (chat.js); text is always set as text, never as
// HTML. Keyboard: every action is a button or a link; Enter sends, Shift+Enter breaks a line.

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text). */
function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

function time(ms) {
  if (!ms) return "";
  const date = new Date(ms);
  const today = new Date().toDateString() === date.toDateString();
  return today
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleDateString([], { day: "numeric", month: "short" });
}

const TICKS = {
  pending: ["🕓", "sending"],
  sent: ["✓", "sent"],
  delivered: ["✓✓", "delivered"],
  read: ["✓✓", "read"],
  failed: ["⚠", "not sent"],
};

const REACTIONS = ["👍", "❤️", "😂"];

export class Ui {
  /**
   * @param {import("./chat.js").Chat} chat
   * @param {() => void} signOut
   * @param {object} config `config.json` (`web_push_public_key`)
   */
  constructor(chat, signOut, config = {}) {
    this.chat = chat;
    this.signOut = signOut;
    this.config = config;
    this.open = null; // the open conversation's id
    this.archived = false;
    this.replyTo = null;
    this.category = "";
    chat.addEventListener("change", (e) => this.onChange(e.detail));
    chat.addEventListener("identity_changed", (e) =>
      this.banner(`${e.detail.user_id}'s device ${e.detail.device_id} has new keys: compare safety codes in Info before trusting it.`),
    );
    this.bind();
    $("me-name").textContent = chat.me.name || chat.me.user_id;
    this.renderList();
    this.renderStatus();
  }

  bind() {
    $("search").addEventListener("input", () => this.renderList());
    $("archived-toggle").addEventListener("click", () => {
      this.archived = !this.archived;
      $("archived-toggle").setAttribute("aria-pressed", String(this.archived));
      this.renderList();
    });
    $("new-chat-button").addEventListener("click", () => this.showNewChat());
    $("menu-button").addEventListener("click", () => this.showMe());
    $("back-button").addEventListener("click", () => this.close());
    $("chat-info-button").addEventListener("click", () => this.showConversationInfo());
    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      this.sendComposed();
    });
    const text = $("composer-text");
    text.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        this.sendComposed();
      }
    });
    text.addEventListener("input", () => {
      if (this.open && text.value) this.chat.typingStart(this.open);
      clearTimeout(this.typingIdle);
      this.typingIdle = setTimeout(() => this.open && this.chat.typingStop(this.open), 4000);
    });
    $("reply-cancel").addEventListener("click", () => this.setReply(null));
    $("attach-button").addEventListener("click", () => $("file-input").click());
    $("file-input").addEventListener("change", () => {
      const file = $("file-input").files[0];
      $("file-input").value = "";
      if (file) this.sendFile(file);
    });
    $("voice-button").addEventListener("click", () => this.toggleRecording());
    $("location-button").addEventListener("click", () => this.sendLocation());
    for (const tab of ["agents", "person", "group"]) {
      $(`tab-${tab}`).addEventListener("click", () => this.selectTab(tab));
    }
    $("agent-search").addEventListener("input", () => this.renderAgents());
    $("person-start").addEventListener("click", () => this.startWithPerson());
    $("group-create").addEventListener("click", () => this.createGroup());
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && this.open) this.chat.markRead(this.open);
    });
    window.addEventListener("popstate", () => {
      const id = decodeURIComponent(location.hash.slice(1));
      if (id && id !== this.open) this.openConversation(id, { push: false });
      if (!id && this.open) this.close({ push: false });
    });
  }

  onChange({ what, conversationId }) {
    if (what === "status") this.renderStatus();
    if (what === "conversations" || what === "messages") this.renderList();
    if (what === "names" && this.open) this.renderMessages();
    if (this.open && (conversationId === this.open || what === "presence")) {
      if (what === "messages") this.renderMessages();
      if (what === "runs") this.renderRuns();
      if (what === "typing" || what === "presence") this.renderSubtitle();
    }
  }

  banner(text) {
    const banner = $("status-banner");
    banner.textContent = text;
    banner.hidden = !text;
  }

  renderStatus() {
    const status = this.chat.connection.status;
    $("connection-dot").className = `dot ${status}`;
    $("connection-dot").title = status;
    // A short reconnect (a migration, a gateway restart) is not worth a banner; a real
    // outage is.
    clearTimeout(this.statusTimer);
    if (status === "online") this.banner("");
    else {
      this.statusTimer = setTimeout(() => {
        if (this.chat.connection.status !== "online") {
          this.banner(
            navigator.onLine === false
              ? "You are offline. Messages are sent when you are back."
              : "Connecting… Messages are sent when the connection is back.",
          );
        }
      }, 3000);
    }
  }

  // ---- the conversation list ----------------------------------------------------------------

  renderList() {
    const list = $("conversation-list");
    const items = this.chat.list({ archived: this.archived, query: $("search").value });
    list.replaceChildren(
      ...items.map((c) => {
        const last = this.chat.messages(c.conversation_id).filter((m) => m.type !== "reaction").at(-1);
        const unread = this.chat.unread(c);
        const preview = !last
          ? null
          : last.type === "system"
            ? systemText(last.text, (u) => this.chat.nameOf(u))
            : `${last.sender_id === this.chat.me.user_id ? "You: " : ""}${last.text ?? (last.error ? "🔒 message not readable here" : "")}`;
        const shown = last
          ? preview
          : c.kind === "agent"
            ? "Agent"
            : "";
        return h(
          "li",
          { "data-conversation": c.conversation_id },
          h(
            "button",
            {
              type: "button",
              class: "conversation",
              "aria-current": c.conversation_id === this.open ? "true" : "false",
              onclick: () => this.openConversation(c.conversation_id),
            },
            h("span", { class: "title" }, c.pinned ? "📌 " : "", c.title),
            h("span", { class: "time" }, time(last?.timestamp ?? c.last_activity_at)),
            h("span", { class: "preview" }, shown),
            unread
              ? h("span", { class: "badge" }, String(unread), h("span", { class: "visually-hidden" }, " unread"))
              : h("span"),
          ),
        );
      }),
    );
    $("empty-list").hidden = items.length > 0;
  }

  // ---- the open chat ------------------------------------------------------------------------

  async openConversation(conversationId, { push = true } = {}) {
    this.open = conversationId;
    this.chat.showing = conversationId;
    this.setReply(null);
    $("main").classList.add("chat-open");
    $("chat").hidden = false;
    if (push) history.pushState(null, "", `#${encodeURIComponent(conversationId)}`);
    const view = await this.chat.conversation(conversationId);
    $("chat-title").textContent = view.title;
    if (view.kind === "direct") {
      this.chat.askPresence(view.participants.filter((p) => p !== this.chat.me.user_id));
    }
    this.renderMessages();
    this.renderRuns();
    this.renderSubtitle();
    this.renderList();
    $("composer-text").focus();
  }

  close({ push = true } = {}) {
    this.open = null;
    this.chat.showing = null;
    $("main").classList.remove("chat-open");
    $("chat").hidden = true;
    if (push) history.pushState(null, "", location.pathname);
    this.renderList();
  }

  renderSubtitle() {
    const view = this.chat.conversations.get(this.open);
    if (!view) return;
    const typing = this.chat.typingIn(this.open);
    let text = "";
    if (typing.length) {
      const names = typing.map((u) => this.chat.nameOf(u));
      text = `${names.join(", ")} ${names.length > 1 ? "are" : "is"} typing…`;
    }
    else if (view.kind === "direct") {
      const other = view.participants.find((p) => p !== this.chat.me.user_id);
      const presence = this.chat.presence.get(other);
      if (presence?.status === "online") text = "online";
      else if (presence?.last_seen) text = `last seen ${time(presence.last_seen)}`;
    } else if (view.kind === "group") {
      text = `${view.participants.length} members`;
    } else if (view.kind === "agent") {
      text = "AI agent";
    }
    const lock = view.end_to_end_encrypted ? "🔒 end-to-end encrypted" : "⚠ not end-to-end encrypted: the agent's operator can read it";
    $("chat-subtitle").textContent = text ? `${text} · ${lock}` : lock;
  }

  renderMessages() {
    const list = $("messages");
    const all = this.chat.messages(this.open);
    const reactions = new Map();
    for (const m of all) {
      if (m.type === "reaction" && m.reply_to_message_id && m.text) {
        const r = reactions.get(m.reply_to_message_id) ?? [];
        r.push(m.text);
        reactions.set(m.reply_to_message_id, r);
      }
    }
    const byId = new Map(all.map((m) => [m.message_id, m]));
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    list.replaceChildren(
      ...all.filter((m) => m.type !== "reaction").map((m) => this.renderMessage(m, byId, reactions)),
      ...this.chat.endedRuns(this.open).map((run) =>
        h("li", { class: "message system" }, `${run.agent_id}: ${run.state}${run.reason ? ` (${run.reason})` : ""}`),
      ),
    );
    if (atBottom || all.at(-1)?.sender_id === this.chat.me.user_id) list.scrollTop = list.scrollHeight;
    if (!document.hidden) this.chat.markRead(this.open);
  }

  renderMessage(m, byId, reactions) {
    const mine = m.sender_id === this.chat.me.user_id;
    if (m.type === "system") {
      return h("li", { class: "message system" }, systemText(m.text, (u) => this.chat.nameOf(u)));
    }
    const view = this.chat.conversations.get(this.open);
    const quoted = m.reply_to_message_id ? byId.get(m.reply_to_message_id) : null;
    const [tick, label] = mine ? (TICKS[m.status] ?? TICKS.sent) : [null, null];
    const classes = ["message", mine ? "mine" : "", m.error ? "undecryptable" : "", m.status === "failed" ? "failed" : ""];
    return h(
      "li",
      { class: classes.join(" "), tabindex: "0", "data-message": m.message_id, "data-status": m.status ?? "" },
      !mine && view?.kind === "group" ? h("div", { class: "sender" }, this.chat.nameOf(m.sender_id)) : null,
      m.forwarded_from ? h("div", { class: "hint" }, "Forwarded") : null,
      quoted ? h("div", { class: "quote" }, quoted.text ?? "…") : null,
      m.attachment ? this.renderAttachment(m) : null,
      h("div", { class: "text" }, m.error ? `🔒 This message cannot be read here (${m.error}).` : m.text),
      m.extra?.location
        ? h("div", { class: "hint" }, `📍 ${m.extra.location.latitude}, ${m.extra.location.longitude}`)
        : null,
      reactions.get(m.message_id) ? h("div", { class: "reactions" }, reactions.get(m.message_id).join(" ")) : null,
      h(
        "div",
        { class: "meta" },
        time(m.timestamp),
        tick ? " " : "",
        tick ? h("span", { class: `ticks ${m.status}`, "aria-label": label, title: label }, tick) : null,
      ),
      m.status === "pending" || m.error
        ? null
        : h(
            "div",
            { class: "message-actions" },
            h("button", { type: "button", "aria-label": "Reply", onclick: () => this.setReply(m) }, "↩"),
            ...REACTIONS.map((emoji) =>
              h("button", { type: "button", "aria-label": `React ${emoji}`, onclick: () => this.react(m, emoji) }, emoji),
            ),
            h("button", { type: "button", "aria-label": "Forward", onclick: () => this.forward(m) }, "↪"),
          ),
    );
  }

  renderRuns() {
    const runs = this.chat.activeRuns(this.open);
    $("runs").replaceChildren(
      ...runs.map((run) =>
        h(
          "div",
          { class: "run", "data-run": run.run_id, "aria-live": "polite" },
          h(
            "div",
            { class: "state" },
            h("span", { class: "run-state" }, runLabel(run)),
            h("button", { type: "button", class: "stop", onclick: () => this.chat.cancel(this.open, run.run_id) }, "Stop"),
          ),
          h("div", { class: "text" }, run.text || "…"),
        ),
      ),
    );
    this.renderMessages();
  }

  setReply(message) {
    this.replyTo = message;
    $("reply-preview").hidden = !message;
    $("reply-text").textContent = message ? `Replying to: ${message.text ?? ""}` : "";
  }

  sendComposed() {
    const box = $("composer-text");
    const text = box.value.trim();
    if (!text || !this.open) return;
    this.chat.send(this.open, text, { replyTo: this.replyTo?.message_id });
    box.value = "";
    this.setReply(null);
    this.renderMessages();
  }

  async sendFile(file, type = undefined) {
    const conversationId = this.open;
    const caption = $("composer-text").value.trim();
    $("composer-error").textContent = "";
    $("composer").setAttribute("aria-busy", "true");
    try {
      await this.chat.sendFile(conversationId, file, caption, type);
      $("composer-text").value = "";
    } catch (e) {
      $("composer-error").textContent = `Not sent: ${e.message}`;
    } finally {
      $("composer").removeAttribute("aria-busy");
    }
  }

  /** Starts or stops a voice note (the microphone, through MediaRecorder). */
  async toggleRecording() {
    const button = $("voice-button");
    if (this.recorder) {
      this.recorder.stop();
      return;
    }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      const recorder = new MediaRecorder(stream);
      const chunks = [];
      recorder.ondataavailable = (e) => chunks.push(e.data);
      recorder.onstop = () => {
        stream.getTracks().forEach((t) => t.stop());
        this.recorder = null;
        button.setAttribute("aria-pressed", "false");
        button.setAttribute("aria-label", "Record a voice note");
        const type = (recorder.mimeType || "audio/webm").split(";")[0];
        const file = new File(chunks, `voice-note.${type.split("/")[1] ?? "webm"}`, { type });
        if (file.size > 0) this.sendFile(file, "voice");
      };
      recorder.start();
      this.recorder = recorder;
      button.setAttribute("aria-pressed", "true");
      button.setAttribute("aria-label", "Stop recording and send");
    } catch (e) {
      $("composer-error").textContent = `No microphone: ${e.message}`;
    }
  }

  sendLocation() {
    const conversationId = this.open;
    if (!navigator.geolocation) {
      $("composer-error").textContent = "This browser cannot tell where you are.";
      return;
    }
    navigator.geolocation.getCurrentPosition(
      (position) => this.chat.sendLocation(conversationId, position.coords),
      (e) => ($("composer-error").textContent = `No location: ${e.message}`),
      { timeout: 10_000 },
    );
  }

  /** The attachment of a message, shown as its kind is: a picture, a player, a download. */
  renderAttachment(m) {
    const attachment = m.attachment;
    const ready = this.chat.readyUrls.get(attachment.media_id);
    const size = `${Math.max(1, Math.round(attachment.size_bytes / 1024))} KB`;
    const load = () =>
      this.chat.attachmentUrl(attachment).then(
        () => this.renderMessages(),
        (e) => ($("composer-error").textContent = `Could not open the attachment: ${e.message}`),
      );
    if (m.type === "image") {
      if (!ready) load();
      const source = ready ?? m.extra?.thumbnail;
      return source
        ? h("img", { class: "image", src: source, alt: m.text || "Photo", "data-loaded": ready ? "true" : "false" })
        : h("span", { class: "hint" }, `Photo (${size})…`);
    }
    if (["voice", "audio", "video"].includes(m.type)) {
      if (ready) return h(m.type === "video" ? "video" : "audio", { controls: true, src: ready, "aria-label": m.type === "voice" ? "Voice note" : attachment.name ?? m.type });
      return h("button", { type: "button", class: "file", onclick: load }, `▶ ${m.type === "voice" ? "Voice note" : attachment.name ?? m.type} (${size})`);
    }
    if (ready) {
      return h("a", { href: ready, download: attachment.name ?? "file" }, `⬇ ${attachment.name ?? "file"} (${size})`);
    }
    return h("button", { type: "button", class: "file", onclick: load }, `📄 ${attachment.name ?? "Document"} (${size})`);
  }

  react(message, emoji) {
    this.chat.send(this.open, emoji, { replyTo: message.message_id, type: "reaction" });
  }

  forward(message) {
    const targets = this.chat.list().filter((c) => c.conversation_id !== this.open);
    this.showDialog(
      "Forward to",
      h(
        "ul",
        { class: "agents" },
        ...targets.map((c) =>
          h(
            "li",
            {},
            h("span", {}, c.title),
            h(
              "button",
              {
                type: "button",
                onclick: () => {
                  this.chat.send(c.conversation_id, message.text ?? "", {
                    forwardedFrom: { conversation_id: this.open, message_id: message.message_id },
                  });
                  $("info").close();
                },
              },
              "Send",
            ),
          ),
        ),
      ),
    );
  }

  // ---- dialogs ------------------------------------------------------------------------------

  /** Shows `body` in the info dialog; with `refresh`, only if it is still open (never reopens). */
  showDialog(title, body, { refresh = false } = {}) {
    if (refresh && !$("info").open) return;
    // A refresh (after an action, with what the server says now) keeps what the user has typed
    // meanwhile: the new fields start empty, and an "Add" pressed after the refresh would
    // otherwise send nothing.
    const typed = refresh
      ? [...$("info-body").querySelectorAll("input[id]")].filter((i) => i.value).map((i) => [i.id, i.value])
      : [];
    $("info-title").textContent = title;
    $("info-body").replaceChildren(body);
    for (const [id, value] of typed) {
      const field = body.querySelector(`#${CSS.escape(id)}`);
      if (field && !field.value) field.value = value;
    }
    $("info-error").textContent = "";
    if (!$("info").open) $("info").showModal();
  }

  async showConversationInfo({ refresh = false } = {}) {
    const view = await this.chat.conversation(this.open);
    const me = this.chat.me.user_id;
    const isAdmin = view.admins?.includes(me);
    const members = [];
    for (const participant of view.participants) {
      const devices = await this.chat.keyring.devicesOf(participant).catch(() => ({ trusted: [] }));
      members.push(
        h(
          "li",
          {},
          h("strong", {}, participant === me ? `${this.chat.nameOf(participant)} (you)` : this.chat.nameOf(participant)),
          h("span", { class: "hint" }, ` ${participant}`),
          view.admins?.includes(participant) ? h("span", { class: "hint" }, "admin") : null,
          ...devices.trusted.map((d) =>
            h("span", { class: "hint" }, ` ${d.device_id}: `, h("code", { class: "safety" }, this.chat.keyring.safetyCode(d))),
          ),
          view.kind === "group" && isAdmin && participant !== me
            ? [
                h("button", { type: "button", onclick: () => this.groupAction(() => this.chat.removeFromGroup(view.conversation_id, participant)) }, "Remove"),
                view.admins.includes(participant)
                  ? null
                  : h("button", { type: "button", onclick: () => this.groupAction(() => this.chat.makeAdmin(view.conversation_id, participant)) }, "Make admin"),
              ]
            : null,
        ),
      );
    }
    const add =
      view.kind === "group" && isAdmin
        ? h(
            "div",
            {},
            h("label", { for: "add-people" }, "Add members (e-mail addresses or user ids)"),
            h("input", { id: "add-people" }),
            h("button", {
              type: "button",
              onclick: () => {
                const people = splitPeople($("add-people").value);
                if (!people.length) {
                  $("info-error").textContent = "Enter an e-mail address or user id to add.";
                  return;
                }
                this.groupAction(async () => {
                  await this.chat.addToGroup(view.conversation_id, people);
                  $("add-people").value = ""; // added: the refreshed dialog starts empty
                });
              },
            }, "Add"),
          )
        : null;
    this.showDialog(
      view.title,
      h(
        "div",
        {},
        h("p", { class: "hint" }, view.end_to_end_encrypted
          ? "Messages are end-to-end encrypted. Compare safety codes with the other person to be sure nobody is in between."
          : "This agent holds no keys: its operator can read this conversation."),
        h("ul", { class: "members" }, ...members),
        add,
        h(
          "div",
          { class: "message-actions" },
          h("button", { type: "button", onclick: () => this.chat.setFlags(view.conversation_id, { pinned: !view.pinned }).then(() => $("info").close()) }, view.pinned ? "Unpin" : "Pin"),
          h("button", { type: "button", onclick: () => this.chat.setFlags(view.conversation_id, { archived: !view.archived }).then(() => $("info").close()) }, view.archived ? "Unarchive" : "Archive"),
          h("button", {
            type: "button",
            onclick: async () => {
              await this.chat.deleteConversation(view.conversation_id);
              $("info").close();
              this.close();
            },
          }, "Delete chat"),
        ),
      ),
      { refresh },
    );
  }

  async groupAction(action) {
    try {
      await action();
      // The same dialog, with the members as they are now (unless it was closed meanwhile).
      await this.showConversationInfo({ refresh: true });
    } catch (e) {
      $("info-error").textContent = e.message;
    }
  }

  async showMe() {
    const me = this.chat.me;
    const pushOn = await this.chat.pushEnabled().catch(() => false);
    const pushButton = h(
      "button",
      {
        type: "button",
        class: "secondary",
        "aria-pressed": String(pushOn),
        onclick: async () => {
          $("info-error").textContent = "";
          try {
            if (pushOn) await this.chat.disablePush();
            else await this.chat.enablePush(this.config.web_push_public_key);
            this.showMe();
          } catch (e) {
            $("info-error").textContent = `Notifications: ${e.message}`;
          }
        },
      },
      pushOn ? "Turn notifications off" : "Turn notifications on",
    );
    this.showDialog(
      "You",
      h(
        "div",
        {},
        h("p", {}, "Name: ", me.name),
        h("p", {}, "User id: ", h("code", { id: "my-user-id" }, me.user_id), h("span", { class: "hint" }, " (others can start a chat with it)")),
        h("p", {}, "This device: ", me.device_id),
        h("p", {}, "Safety code: ", h("code", { class: "safety" }, this.chat.keyring.safetyCode())),
        h("p", {}, pushButton, h("span", { class: "hint" }, " messages while this page is closed")),
        h("button", { type: "button", class: "secondary", onclick: () => this.signOut() }, "Sign out"),
      ),
    );
  }

  showNewChat() {
    $("new-chat-error").textContent = "";
    this.selectTab("agents");
    $("new-chat").showModal();
    this.renderAgents();
  }

  selectTab(name) {
    for (const tab of ["agents", "person", "group"]) {
      $(`tab-${tab}`).setAttribute("aria-selected", String(tab === name));
      $(`pane-${tab}`).hidden = tab !== name;
    }
  }

  async renderAgents() {
    try {
      const agents = await this.chat.agents({ q: $("agent-search").value, category: this.category });
      const categories = new Set(agents.flatMap((a) => a.categories));
      if (this.category) categories.add(this.category);
      $("agent-categories").replaceChildren(
        ...[...categories].sort().map((c) =>
          h("button", {
            type: "button",
            "aria-pressed": String(c === this.category),
            onclick: () => {
              this.category = c === this.category ? "" : c;
              this.renderAgents();
            },
          }, c),
        ),
      );
      $("agent-list").replaceChildren(
        ...agents.map((a) =>
          h(
            "li",
            {},
            h("div", {}, h("strong", {}, a.name), h("div", { class: "desc" }, a.description)),
            h("button", { type: "button", "data-agent": a.agent_id, "aria-label": `Chat with ${a.name}`, onclick: () => this.startWith({ agent_id: a.agent_id }) }, "Chat"),
          ),
        ),
      );
    } catch (e) {
      $("new-chat-error").textContent = e.message;
    }
  }

  async startWith(peer) {
    try {
      const view = await this.chat.startConversation(peer);
      $("new-chat").close();
      this.openConversation(view.conversation_id);
    } catch (e) {
      $("new-chat-error").textContent = e.message;
    }
  }

  startWithPerson() {
    const who = $("person-id").value.trim();
    if (!who) return;
    this.startWith(who.includes("@") ? { email: who } : { user_id: who });
  }

  async createGroup() {
    try {
      const group = await this.chat.createGroup($("group-name").value.trim(), splitPeople($("group-people").value));
      $("new-chat").close();
      this.openConversation(group.conversation_id);
    } catch (e) {
      $("new-chat-error").textContent = e.message;
    }
  }
}

function splitPeople(text) {
  return text.split(/[,\s]+/).map((s) => s.trim()).filter(Boolean);
}

function runLabel(run) {
  const parts = [`${run.agent_id ?? "agent"}: ${run.state.replace("_", " ")}`];
  if (run.step) parts.push(run.step);
  if (run.percent !== undefined && run.percent !== null) parts.push(`${run.percent}%`);
  if (run.stalled) parts.push("(silent)");
  if (run.reason) parts.push(run.reason);
  return parts.join(" · ");
}

/**
 * A server `system` message as a line of text: group events are JSON naming users by id
 * (`{"event", "actor", "user" | "users"}`), other notices are text already.
 */
function systemText(text, nameOf) {
  let event;
  try {
    event = JSON.parse(text);
  } catch {
    return text;
  }
  const actor = event.actor && event.actor !== "system" ? nameOf(event.actor) : null;
  const users = (event.users ?? (event.user ? [event.user] : [])).map(nameOf).join(", ");
  const by = actor ? `${actor} ` : "";
  switch (event.event) {
    case "group_created":
      return `${by}created the group`;
    case "group_updated":
      return `${by}changed the group's details`;
    case "participants_added":
      return `${by}added ${users}`;
    case "participant_removed":
      return `${by}removed ${users}`;
    case "participant_left":
      return `${users} left`;
    case "admin_promoted":
      return `${users} ${users.includes(",") ? "are" : "is"} now admin`;
    case "admin_demoted":
      return `${users} ${users.includes(",") ? "are" : "is"} no longer admin`;
    default:
      return (event.event ?? "update").replace(/_/g, " ");
  }
}
