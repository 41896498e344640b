// The web client in a real browser (headless Chromium), as people use it: every step through
// the page's own controls, found by their accessible names. Two and three browser profiles
// talk through the local stack behind gateway replicas. The steps build on each other (one
// conversation history), so they run in order.
//
// Run by scripts/browser (which installs Chromium and playwright-core and builds the client).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { createRequire } from "node:module";
import { MongoClient } from "mongodb";

import {
  goOffline,
  goOnline,
  launchBrowser,
  launchProfile,
  message,
  openChat,
  send,
  shot,
  signUp,
  startStack,
} from "./harness.mjs";

const require = createRequire(import.meta.url);
const WAIT = { timeout: 20_000 };
/** Every text sent in this suite carries this, so MongoDB can be searched for it afterwards. */
const MARK = `plaintext-${Date.now().toString(36)}`;
const said = (text) => `${text} ${MARK}`;

let stack;
let browser;
let alice;
let bob;
let carol;

before(async () => {
  stack = await startStack();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  stack?.stop();
});

test("sign up in three browsers (the code comes from the local code outbox)", async () => {
  alice = await signUp(browser, stack.webUrl, "Alice");
  bob = await signUp(browser, stack.webUrl, "Bob");
  carol = await signUp(browser, stack.webUrl, "Carol", { viewport: { width: 390, height: 800 } });
  await shot(alice.page, "alice-signed-in");
  await shot(carol.page, "carol-signed-in-phone-width");
});

test("a 1:1 chat: delivered, then read ticks", async () => {
  await alice.page.getByRole("button", { name: "New chat" }).click();
  await alice.page.getByRole("tab", { name: "Person" }).click();
  await alice.page.getByLabel("Their e-mail address or user id").fill(bob.email);
  await alice.page.getByRole("button", { name: "Start chat" }).click();
  await alice.page.locator("#chat-title", { hasText: "Bob" }).waitFor(WAIT);
  const first = said("Hi Bob, it is Alice");
  await send(alice.page, first);
  // Bob's device receives it (delivered) before he opens the chat...
  await message(alice.page, first).and(alice.page.locator('[data-status="delivered"]')).waitFor(WAIT);
  await shot(alice.page, "alice-delivered-tick");
  // ...and reads it when he opens it.
  await bob.page.locator("#conversation-list li", { hasText: "Alice" }).waitFor(WAIT);
  await openChat(bob.page, "Alice");
  await message(bob.page, first).waitFor(WAIT);
  await message(alice.page, first).and(alice.page.locator('[data-status="read"]')).waitFor(WAIT);
  const reply = said("Hello Alice");
  await send(bob.page, reply);
  await message(alice.page, reply).waitFor(WAIT);
  await shot(bob.page, "bob-reads-and-replies");
  await shot(alice.page, "alice-read-tick-and-reply");
});

test("a group of three: created, messages to all, read by all", async () => {
  await alice.page.getByRole("button", { name: "New chat" }).click();
  await alice.page.getByRole("tab", { name: "Group" }).click();
  await alice.page.getByLabel("Group name").fill("Trio");
  await alice.page.getByLabel(/Members/).fill(`${bob.email}, ${carol.email}`);
  await alice.page.getByRole("button", { name: "Create group" }).click();
  await alice.page.locator("#chat-title", { hasText: "Trio" }).waitFor(WAIT);
  const hello = said("Welcome to the group");
  await send(alice.page, hello);
  for (const member of [bob, carol]) {
    await member.page.locator("#conversation-list li", { hasText: "Trio" }).waitFor(WAIT);
    await openChat(member.page, "Trio");
    await message(member.page, hello).waitFor(WAIT);
  }
  // Coalesced group receipts: read once both members read it.
  await message(alice.page, hello).and(alice.page.locator('[data-status="read"]')).waitFor(WAIT);
  const answer = said("Thanks for adding me");
  await send(carol.page, answer);
  await message(alice.page, answer).waitFor(WAIT);
  await message(bob.page, answer).waitFor(WAIT);
  await shot(carol.page, "carol-in-the-group-phone-width");
  await shot(alice.page, "alice-group-read");
});

test("an agent streams its answer, and a run can be stopped", async () => {
  const page = alice.page;
  await page.getByRole("button", { name: "New chat" }).click();
  await page.getByRole("button", { name: "Chat with Demo Agent", exact: true }).click();
  await page.locator("#chat-title", { hasText: "Demo Agent" }).waitFor(WAIT);
  await send(page, "/long");
  // Part of the answer is on screen while the agent is still writing it.
  const run = page.locator("#runs .run");
  await run.waitFor(WAIT);
  await page.waitForFunction(() => {
    const text = document.querySelector("#runs .run .text")?.textContent ?? "";
    return text.length > 20 && text !== "…";
  }, null, WAIT);
  await shot(page, "agent-streaming");
  const partial = await run.locator(".text").textContent();
  // Then the stored answer replaces the stream.
  await run.waitFor({ state: "detached", ...WAIT });
  const answers = page.locator("#messages li.message:not(.mine) .text");
  await page.waitForFunction(
    (start) => [...document.querySelectorAll("#messages li.message:not(.mine) .text")].some((e) => e.textContent.startsWith(start)),
    partial.slice(0, 20),
    WAIT,
  );
  const before = await answers.count();

  await send(page, "/slow");
  await page.locator("#runs .run .run-state", { hasText: /working/ }).waitFor(WAIT);
  await shot(page, "agent-working");
  await page.getByRole("button", { name: "Stop" }).click();
  await page.locator("#messages li.system", { hasText: "cancelled" }).waitFor(WAIT);
  // Nothing of the cancelled run is stored: no answer comes (the slow run would take 3 s).
  await page.waitForTimeout(4_000);
  assert.equal(await answers.count(), before, "a cancelled run's answer arrived");
  await shot(page, "agent-cancelled");
});

test("a photo, a voice note, a document and a location arrive sealed and open on the other side", async () => {
  await openChat(alice.page, "Bob");
  await openChat(bob.page, "Alice");
  const caption = said("Look at this");
  await alice.page.getByLabel("Message", { exact: true }).fill(caption);
  await alice.page.setInputFiles("#file-input", { name: "red.png", mimeType: "image/png", buffer: redSquarePng() });
  // Bob sees the picture itself (fetched, its hash and tag checked, opened on his device).
  await message(bob.page, caption).locator('img.image[data-loaded="true"]').waitFor(WAIT);
  const size = await message(bob.page, caption).locator("img.image").evaluate((img) => [img.naturalWidth, img.naturalHeight]);
  assert.deepEqual(size, [48, 48], "the photo Bob sees is not the one Alice sent");
  await shot(bob.page, "bob-sees-the-photo");

  // A voice note from Chromium's fake microphone.
  await alice.page.getByRole("button", { name: "Record a voice note" }).click();
  await alice.page.waitForTimeout(1_200);
  await alice.page.getByRole("button", { name: "Stop recording and send" }).click();
  const voice = bob.page.locator("#messages li.message button.file", { hasText: "Voice note" }).last();
  await voice.waitFor(WAIT);
  await voice.click();
  await bob.page.locator('#messages audio[aria-label="Voice note"]').last().waitFor(WAIT);

  // A document, downloaded by Bob exactly as it was.
  const text = said("minutes of the meeting");
  await alice.page.setInputFiles("#file-input", { name: "minutes.txt", mimeType: "text/plain", buffer: Buffer.from(text) });
  const file = bob.page.locator("#messages li.message button.file", { hasText: "minutes.txt" });
  await file.waitFor(WAIT);
  await file.click();
  const link = bob.page.locator("#messages a", { hasText: "minutes.txt" });
  await link.waitFor(WAIT);
  const [download] = await Promise.all([bob.page.waitForEvent("download"), link.click()]);
  const saved = await download.path();
  assert.equal((await import("node:fs")).readFileSync(saved, "utf8"), text);

  // A location (the browser's, granted), sealed like the rest.
  await alice.page.getByRole("button", { name: "Send your location" }).click();
  await bob.page.locator("#messages .hint", { hasText: "📍 52.52, 13.405" }).waitFor(WAIT);
  await shot(bob.page, "bob-got-voice-document-location");
});

test("typing, presence, replies, reactions and forwards", async () => {
  await openChat(alice.page, "Bob");
  await openChat(bob.page, "Alice");
  await alice.page.locator("#chat-subtitle", { hasText: "online" }).waitFor(WAIT);
  await bob.page.getByLabel("Message", { exact: true }).pressSequentially("typing something", { delay: 20 });
  await alice.page.locator("#chat-subtitle", { hasText: "Bob is typing" }).waitFor(WAIT);
  await shot(alice.page, "bob-is-typing");
  await bob.page.getByLabel("Message", { exact: true }).fill("");

  // Bob answers one of Alice's messages: Alice sees what it answers.
  const original = said("Hi Bob, it is Alice");
  await message(bob.page, original).hover();
  await message(bob.page, original).getByRole("button", { name: "Reply" }).click();
  const reply = said("Answering that");
  await send(bob.page, reply);
  await message(alice.page, reply).locator(".quote", { hasText: "Hi Bob, it is Alice" }).waitFor(WAIT);

  // Alice reacts to it; Bob sees the reaction under his message.
  await message(alice.page, reply).hover();
  await message(alice.page, reply).getByRole("button", { name: "React 👍" }).click();
  await message(bob.page, reply).locator(".reactions", { hasText: "👍" }).waitFor(WAIT);

  // Alice forwards it to the group: Carol sees it, marked forwarded.
  await message(alice.page, reply).hover();
  await message(alice.page, reply).getByRole("button", { name: "Forward" }).click();
  await alice.page.locator("#info li", { hasText: "Trio" }).getByRole("button", { name: "Send" }).click();
  await openChat(carol.page, "Trio");
  await message(carol.page, reply).locator(".hint", { hasText: "Forwarded" }).waitFor(WAIT);
  await shot(bob.page, "reply-and-reaction");
});

test("group admin: remove, make admin, add back", async () => {
  await openChat(alice.page, "Trio");
  await alice.page.getByRole("button", { name: "Info" }).click();
  await alice.page.locator("#info .members li", { hasText: "Carol" }).getByRole("button", { name: "Remove" }).click();
  await alice.page.locator("#messages li.system", { hasText: "Alice removed Carol" }).waitFor(WAIT);
  // The dialog stays open, showing the members as they are now.
  await alice.page.locator("#info .members li", { hasText: "Bob" }).getByRole("button", { name: "Make admin" }).click();
  await alice.page.locator("#messages li.system", { hasText: "Bob is now admin" }).waitFor(WAIT);
  // Nobody to add: said on the page, nothing sent.
  await alice.page.locator("#info .members li", { hasText: "Bob" }).locator(".hint", { hasText: "admin" }).waitFor(WAIT);
  await alice.page.getByRole("button", { name: "Add", exact: true }).click();
  await alice.page.locator("#info-error", { hasText: "Enter an e-mail address" }).waitFor(WAIT);
  // Typed while the dialog may still be refreshing after an action: what was typed stays.
  await alice.page.getByLabel(/Add members/).fill(carol.email);
  await alice.page.getByRole("button", { name: "Add", exact: true }).click();
  await alice.page.locator("#messages li.system", { hasText: "Alice added Carol" }).waitFor(WAIT);
  await alice.page.locator("#info .members li", { hasText: "Carol" }).waitFor(WAIT);
  assert.equal(await alice.page.getByLabel(/Add members/).inputValue(), "");
  await alice.page.keyboard.press("Escape");
  await alice.page.locator("#info").waitFor({ state: "hidden", ...WAIT });
  // Carol, back in, reads what is sent from now on (a new session key, shared with her again).
  const welcomeBack = said("Welcome back Carol");
  await send(alice.page, welcomeBack);
  await message(carol.page, welcomeBack).waitFor(WAIT);
  await shot(alice.page, "group-admin");
});

test("the conversation list: search, pin, archive, delete; agents by search and category", async () => {
  const page = alice.page;
  const titles = () => page.locator("#conversation-list li .title").allTextContents();
  await page.getByLabel("Search conversations").fill("Trio");
  assert.deepEqual((await titles()).map((t) => t.replace("📌 ", "")), ["Trio"]);
  // Search finds words inside messages too (opened on this device only).
  await page.getByLabel("Search conversations").fill("Answering that");
  assert.ok((await titles()).some((t) => t.includes("Bob")), "message text not searched");
  await page.getByLabel("Search conversations").fill("");

  await openChat(page, "Bob");
  await page.getByRole("button", { name: "Info" }).click();
  await page.locator("#info").getByRole("button", { name: "Pin" }).click();
  await page.waitForFunction(() => document.querySelector("#conversation-list li .title")?.textContent.includes("📌"));
  assert.match((await titles())[0], /📌 Bob/);

  await openChat(page, "Trio");
  await page.getByRole("button", { name: "Info" }).click();
  await page.locator("#info").getByRole("button", { name: "Archive" }).click();
  await page.waitForFunction(() => ![...document.querySelectorAll("#conversation-list li .title")].some((e) => e.textContent.includes("Trio")));
  await page.getByRole("button", { name: "Archived" }).click();
  assert.ok((await titles()).some((t) => t.includes("Trio")), "Trio is not under Archived");
  await page.getByRole("button", { name: "Archived" }).click();

  await openChat(page, "Demo Agent");
  await page.getByRole("button", { name: "Info" }).click();
  await page.locator("#info").getByRole("button", { name: "Delete chat" }).click();
  await page.waitForFunction(() => ![...document.querySelectorAll("#conversation-list li .title")].some((e) => e.textContent.includes("Demo Agent")));
  await shot(page, "list-pinned-archived-deleted");

  await page.getByRole("button", { name: "New chat" }).click();
  await page.getByLabel("Search agents").fill("echo");
  await page.getByRole("button", { name: "Chat with Demo Agent", exact: true }).waitFor(WAIT);
  await page.getByLabel("Search agents").fill("");
  const category = page.locator("#agent-categories button").first();
  await category.waitFor(WAIT);
  await category.click();
  await page.waitForFunction(() => document.querySelector("#agent-categories button[aria-pressed=true]"));
  assert.ok((await page.locator("#agent-list li").count()) >= 1, "no agent in the chosen category");
  await shot(page, "agent-discovery");
  await page.keyboard.press("Escape");
  await page.locator("#new-chat").waitFor({ state: "hidden", ...WAIT });
});

test("accessible: no serious or critical axe-core findings on any screen", async () => {
  const axe = require.resolve("axe-core/axe.min.js");
  const check = async (page, what) => {
    await page.addScriptTag({ path: axe });
    const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
    const serious = result.violations.filter((v) => ["serious", "critical"].includes(v.impact));
    assert.deepEqual(
      serious.map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`),
      [],
      `${what}: accessibility violations`,
    );
  };
  await check(alice.page, "a chat (desktop width)");
  await check(carol.page, "a chat (phone width)");
  await alice.page.getByRole("button", { name: "New chat" }).click();
  await check(alice.page, "the new-chat dialog");
  await alice.page.keyboard.press("Escape");
  await alice.page.locator("#new-chat").waitFor({ state: "hidden", ...WAIT });
  const fresh = await browser.newPage();
  await fresh.goto(stack.webUrl);
  await fresh.getByRole("button", { name: "Send code" }).waitFor(WAIT);
  await check(fresh, "the sign-in screen");
  await fresh.close();
});

test("notifications: Web Push subscribed (or refused with the reason), shown by the service worker", async () => {
  // Push exists only in a profile on disk (Chromium has none in incognito contexts).
  const profile = await launchProfile("dave");
  try {
    const dave = await signUp(browser, stack.webUrl, "Dave", { context: profile });
    const page = dave.page;
    await page.getByRole("button", { name: "Me" }).click();
    await page.getByRole("button", { name: "Turn notifications on" }).click();
    const outcome = await Promise.race([
      page.getByRole("button", { name: "Turn notifications off" }).waitFor(WAIT).then(() => "subscribed"),
      page.locator("#info-error", { hasText: "Notifications:" }).waitFor(WAIT).then(() => "refused"),
    ]);
    if (outcome === "subscribed") {
      const devices = await page.evaluate(() => window.messaging.chat.api.call("GET", "/v1/devices"));
      assert.equal(devices.devices[0]?.platform, "web", "subscribed but not registered");
    } else {
      // Headless Chromium without Google's push service: the page says so, and nothing is
      // registered that could never be delivered.
      console.log(`  (this Chromium: ${await page.locator("#info-error").textContent()})`);
      const devices = await page.evaluate(() => window.messaging.chat.api.call("GET", "/v1/devices"));
      assert.deepEqual(devices.devices, []);
    }
    await shot(page, "notifications");
    await page.keyboard.press("Escape");

    // What the push function sends (its webhook body), delivered to the service worker as a
    // push service would, with the page closed: a notification saying who and what, for the
    // conversation. (A page in front shows the message itself: no notification then.)
    const other = await profile.newPage();
    await other.goto("about:blank");
    const cdp = await profile.newCDPSession(other);
    const registration = new Promise((resolve) =>
      cdp.on("ServiceWorker.workerRegistrationUpdated", ({ registrations }) => {
        const found = registrations.find((r) => r.scopeURL.startsWith(stack.webUrl));
        if (found) resolve(found.registrationId);
      }),
    );
    await cdp.send("ServiceWorker.enable");
    const registrationId = await registration;
    await page.close();
    await cdp.send("ServiceWorker.deliverPushMessage", {
      origin: new URL(stack.webUrl).origin,
      registrationId,
      data: JSON.stringify({
        type: "messaging.notification",
        title: "Alice",
        body: "Photo",
        badge: 1,
        notification: { conversation_id: "conversation-1", message_id: "m-1" },
      }),
    });
    const reopened = await profile.newPage();
    // A page of the client's origin that is not the app, to read what the worker showed.
    await reopened.goto(`${stack.webUrl}manifest.webmanifest`);
    let shown = null;
    for (let tries = 0; !shown && tries < 80; tries++) {
      shown = await reopened.evaluate(async () => {
        const registration = await navigator.serviceWorker.ready;
        const [note] = await registration.getNotifications();
        return note ? { title: note.title, body: note.body, tag: note.tag } : null;
      });
      if (!shown) await reopened.waitForTimeout(250);
    }
    assert.deepEqual(shown, { title: "Alice", body: "Photo", tag: "conversation-1" });
    assert.deepEqual(dave.errors.filter((e) => !e.includes("Push API")), []);
  } finally {
    await profile.close();
  }
});

test("a lost message frame is noticed by the next one's number and fetched again", async () => {
  await openChat(alice.page, "Bob");
  await openChat(bob.page, "Alice");
  // Bob's page loses the next `message` frame, as a post lost between gateway and browser.
  await bob.page.evaluate(() => {
    const connection = window.messaging.chat.connection;
    const onFrame = connection.onFrame.bind(connection);
    let dropped = false;
    connection.onFrame = (socket, text, migrating) => {
      if (!dropped && JSON.parse(text).type === "message") {
        dropped = true;
        window.__dropped = JSON.parse(text).payload.sequence_number;
        return;
      }
      onFrame(socket, text, migrating);
    };
  });
  const lost = said("This frame is lost on the way");
  const next = said("And this one shows the gap");
  await send(alice.page, lost);
  await message(alice.page, lost).and(alice.page.locator('[data-status="delivered"], [data-status="read"], [data-status="sent"]')).waitFor(WAIT);
  await bob.page.waitForFunction(() => window.__dropped > 0);
  await send(alice.page, next);
  // The next message's number shows the gap: Bob's page asks for it (`retransmit`) and shows
  // both, in order.
  await message(bob.page, next).waitFor(WAIT);
  await message(bob.page, lost).waitFor(WAIT);
  assert.deepEqual(await texts(bob.page, [lost, next]), [lost, next]);
});

test("offline and back: what was sent meanwhile arrives in order, both ways", async () => {
  await openChat(alice.page, "Bob");
  await openChat(bob.page, "Alice");
  await goOffline(bob);
  const whileAway = [1, 2, 3].map((n) => said(`While you were away ${n}`));
  for (const text of whileAway) await send(alice.page, text);
  await message(alice.page, whileAway[2]).and(alice.page.locator('[data-status="sent"]')).waitFor(WAIT);
  await shot(bob.page, "bob-offline");
  await goOnline(bob);
  for (const text of whileAway) await message(bob.page, text).waitFor(WAIT);
  assert.deepEqual(await texts(bob.page, whileAway), whileAway, "out of order after reconnecting");

  // Sending while offline: queued on the device (a clock), sent when back, in order.
  await goOffline(alice);
  const queued = [1, 2].map((n) => said(`Written offline ${n}`));
  for (const text of queued) await send(alice.page, text);
  await message(alice.page, queued[1]).and(alice.page.locator('[data-status="pending"]')).waitFor(WAIT);
  await shot(alice.page, "alice-offline-queued");
  await goOnline(alice);
  for (const text of queued) await message(bob.page, text).waitFor(WAIT);
  assert.deepEqual(await texts(bob.page, queued), queued);
  await shot(bob.page, "bob-got-the-queued-messages");
});

test("a gateway replica restarts and nobody notices", async () => {
  for (const person of [alice, bob]) await person.page.evaluate(() => (window.__statuses = []));
  const migrations = () => alice.page.evaluate(() => window.messaging.chat.connection.migrations);
  const before = await migrations();
  await stack.restartGateway("A");
  assert.ok((await migrations()) > before, "Alice's page was not migrated");
  const afterRestart = said("Still here after the restart");
  await send(alice.page, afterRestart);
  await message(bob.page, afterRestart).waitFor(WAIT);
  const back = said("Did not notice a thing");
  await send(bob.page, back);
  await message(alice.page, back).waitFor(WAIT);
  for (const person of [alice, bob]) {
    const statuses = await person.page.evaluate(() => window.__statuses);
    assert.deepEqual(statuses, [], `${person.name}'s connection was seen to drop: ${statuses}`);
    assert.ok(await person.page.locator("#status-banner").isHidden(), `${person.name} saw a banner`);
  }
  await shot(alice.page, "after-gateway-restart");
});

test("no plaintext of these messages in MongoDB", async () => {
  const client = new MongoClient(stack.mongoUri);
  try {
    const db = client.db("messaging");
    let scanned = 0;
    for (const { name } of await db.listCollections().toArray()) {
      for await (const doc of db.collection(name).find({})) {
        scanned += 1;
        assert.ok(!JSON.stringify(doc).includes(MARK), `plaintext in ${name}: ${JSON.stringify(doc).slice(0, 300)}`);
      }
    }
    assert.ok(scanned > 0, "nothing scanned");
  } finally {
    await client.close();
  }
});

test("no errors in any page", () => {
  for (const person of [alice, bob, carol]) {
    assert.deepEqual(person.errors, [], `${person.name}'s page reported errors`);
  }
});

/** A 48x48 red PNG. */
function redSquarePng() {
  const zlib = require("node:zlib");
  const crc = (bytes) => {
    let c = ~0;
    for (const b of bytes) {
      c ^= b;
      for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
    }
    return ~c >>> 0;
  };
  const chunk = (type, data) => {
    const body = Buffer.concat([Buffer.from(type), data]);
    const out = Buffer.alloc(8 + data.length + 4);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(crc(body), 8 + data.length);
    return out;
  };
  const side = 48;
  const header = Buffer.alloc(13);
  header.writeUInt32BE(side, 0);
  header.writeUInt32BE(side, 4);
  header.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
  const rows = Buffer.alloc(side * (1 + side * 3));
  for (let y = 0; y < side; y++) {
    for (let x = 0; x < side; x++) rows.set([220, 30, 30], y * (1 + side * 3) + 1 + x * 3);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", zlib.deflateSync(rows)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

/** The texts of `wanted` in the order the open chat shows them. */
async function texts(page, wanted) {
  const all = await page.locator("#messages li.message .text").allTextContents();
  return all.filter((t) => wanted.includes(t));
}
