// The web client's entry point: reads `config.json` (where the APIs are), signs in through the
// HTTP API (a code by e-mail; on the local stack the code outbox shows it), then starts the
// messaging session (chat.js) and its screens (ui.js). Also registers the service worker that
// makes the client installable and start offline.

import { Api, ApiError } from "./api.js";
import { Chat } from "./chat.js";
import { loadCrypto } from "./crypto.js";
import { Ui } from "./ui.js";

const $ = (id) => document.getElementById(id);
const SESSION_KEY = "msg.session";

const sessions = {
  get: () => JSON.parse(localStorage.getItem(SESSION_KEY) ?? "null"),
  set: (session) =>
    session
      ? localStorage.setItem(SESSION_KEY, JSON.stringify(session))
      : localStorage.removeItem(SESSION_KEY),
};

/** This browser's device id: made once, kept (its keys are published under it). */
function deviceId() {
  let id = localStorage.getItem("msg.device_id");
  if (!id) {
    id = `web-${crypto.randomUUID().slice(0, 8)}`;
    localStorage.setItem("msg.device_id", id);
  }
  return id;
}

async function main() {
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register("sw.js").catch(() => {});
  }
  const config = await (await fetch("config.json", { cache: "no-store" })).json();
  const api = new Api(config.api_url, sessions);
  if (sessions.get()) {
    await startChat(config, api);
  } else {
    showSignIn(config, api);
  }
}

async function startChat(config, api) {
  const session = sessions.get();
  $("signin").hidden = true;
  $("main").hidden = false;
  const crypto = await loadCrypto("crypto.wasm");
  const me = {
    user_id: session.user.user_id,
    device_id: session.device_id,
    name: session.user.name,
  };
  const chat = new Chat({ config, api, crypto, me, storage: localStorage });
  const ui = new Ui(chat, () => signOut(chat, api), config);
  window.messaging = { chat, ui }; // for the browser's console
  try {
    await chat.start();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      sessions.set(null);
      location.reload();
      return;
    }
    ui.banner(`Could not start: ${e.message}. Retrying…`);
    setTimeout(() => location.reload(), 5000);
    return;
  }
  const open = decodeURIComponent(location.hash.slice(1));
  if (open) ui.openConversation(open, { push: false });
}

async function signOut(chat, api) {
  const session = sessions.get();
  chat.stop();
  try {
    // This browser stops being a device: no more pushes, and its keys go, so nobody encrypts
    // for it any more.
    await chat.disablePush().catch(() => {});
    await api.call("DELETE", `/v1/keys/${encodeURIComponent(session.device_id)}`);
    await api.call("POST", "/v1/auth/logout", { refresh_token: session.refresh_token });
  } catch {
    // Signed out here regardless; the refresh token expires by itself.
  }
  for (const key of Object.keys(localStorage)) {
    if (key.startsWith("msg.")) localStorage.removeItem(key);
  }
  location.hash = "";
  location.reload();
}

function showSignIn(config, api) {
  $("main").hidden = true;
  $("signin").hidden = false;
  const error = $("signin-error");
  let email = "";
  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    email = $("signin-email").value.trim();
    const name = $("signin-name").value.trim();
    if (!email.includes("@")) {
      error.textContent = "Enter your e-mail address.";
      return;
    }
    try {
      try {
        if (!name) throw new ApiError(409, "conflict", "no name: sign in");
        await api.call("POST", "/v1/auth/register", { email, name }, { auth: false });
      } catch (e) {
        if (!(e instanceof ApiError) || e.status !== 409) throw e;
        await api.call("POST", "/v1/auth/login", { email, device_id: deviceId() }, { auth: false });
      }
      $("code-step").hidden = false;
      $("signin-code").focus();
      if (config.local) showLocalCode(email);
    } catch (e) {
      error.textContent = e.message;
    }
  });
  $("signin-verify").addEventListener("click", async () => {
    error.textContent = "";
    try {
      const pair = await api.call(
        "POST",
        "/v1/auth/verify",
        { email, code: $("signin-code").value.trim(), device_id: deviceId() },
        { auth: false },
      );
      sessions.set({ ...pair, device_id: deviceId() });
      await startChat(config, api);
    } catch (e) {
      error.textContent = e.message;
    }
  });
}

/** The local stack's code outbox: what the e-mail would have said (development only). */
async function showLocalCode(email) {
  const destination = `email:${email.toLowerCase()}`;
  for (let attempt = 0; attempt < 20; attempt++) {
    const response = await fetch(`local/code?destination=${encodeURIComponent(destination)}`);
    if (response.ok) {
      const { code } = await response.json();
      const note = $("local-code");
      note.textContent = `Local stack: no e-mail is sent; the code outbox says ${code}.`;
      note.hidden = false;
      $("signin-code").value = code;
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

main().catch((e) => {
  $("status-banner").hidden = false;
  $("status-banner").textContent = `The client could not start: ${e.message}`;
});
