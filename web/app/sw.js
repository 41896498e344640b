// The service worker: keeps the client's own files so it starts without a network (and can be
// installed as an app). The files are asked for first from the network (a new build is used at
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
