// The service worker: keeps the client's own files so it starts without a network (and can be
// installed as an app), and shows Web Push notifications while no page is looking (they say
// who wrote and what kind of message, never what it says: the push function cannot read it). The files are asked for first from the network (a new build is used at
// once) and from the cache when the network fails. API calls and the WebSocket are never
// cached: messages come from the server or the device's history.

const CACHE = "messaging-web-v1";
const SHELL = [
  "./",
  "index.html",
  "style.css",
  "app.js",
  "api.js",
  "chat.js",
  "connection.js",
  "crypto.js",
  "e2ee.js",
  "history.js",
  "ui.js",
  "crypto.wasm",
  "manifest.webmanifest",
  "icon.svg",
];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)));
  self.skipWaiting();
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys().then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k)))),
  );
  self.clients.claim();
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin) return;
  if (url.pathname.endsWith("/config.json") || url.pathname.includes("/local/")) return;
  event.respondWith(
    fetch(event.request)
      .then((response) => {
        if (response.ok) {
          const copy = response.clone();
          caches.open(CACHE).then((cache) => cache.put(event.request, copy));
        }
        return response;
      })
      .catch(() => caches.match(event.request).then((hit) => hit ?? caches.match("index.html"))),
  );
});

self.addEventListener("push", (event) => {
  let push = {};
  try {
    push = event.data?.json() ?? {};
  } catch {
    push = {};
  }
  const conversation = push.notification?.conversation_id ?? "";
  event.waitUntil(
    self.clients.matchAll({ type: "window" }).then((windows) => {
      // A page in front shows the message itself.
      if (windows.some((w) => w.visibilityState === "visible" && w.focused)) return undefined;
      return self.registration.showNotification(push.title ?? "New message", {
        body: push.body ?? "",
        tag: conversation || undefined,
        icon: "icon.svg",
        data: { conversation },
      });
    }),
  );
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const target = new URL(`./#${encodeURIComponent(event.notification.data?.conversation ?? "")}`, self.registration.scope).href;
  event.waitUntil(
    self.clients.matchAll({ type: "window" }).then((windows) => {
      const open = windows[0];
      return open ? open.navigate(target).then((w) => w?.focus()) : self.clients.openWindow(target);
    }),
  );
});
