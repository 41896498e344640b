// What the browser suite runs against, started here: a local stack on its own ports and data
// directory serving its route functions over HTTP, two `local-stack gateway` replicas in front
// of it (the page connects to the first; restarting it must go unnoticed), headless Chromium
// (Debian's, driven by playwright-core), and screenshots of every step under
// target/browser/screenshots (kept as CI artifacts).

import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { chromium } from "playwright-core";

export const ROOT =
  process.env.BROWSER_TESTS_ROOT ??
  path.resolve(path.dirname(new URL(import.meta.url).pathname), "../..");
export const OUT = path.join(ROOT, "target/browser");
const BIN = path.join(ROOT, "target/debug/local-stack");

export const PORTS = {
  ws: 28080,
  broker: 28081,
  s3: 28082,
  agent: 28083,
  api: 28084,
  web: 28085,
  functions: 28090,
  gatewayA: [28180, 28181],
  gatewayB: [28182, 28183],
};

const children = new Set();
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

function run(args, env, log) {
  const out = fs.openSync(path.join(OUT, log), "a");
  const child = spawn(BIN, args, { env: { ...process.env, ...env }, stdio: ["ignore", out, out] });
  children.add(child);
  child.on("exit", () => children.delete(child));
  return child;
}

async function until(what, check, ms = 120_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

function listening(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.on("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.on("error", () => resolve(false));
  });
}

/** The stack, its Redis URL and MongoDB URI (it starts its own), and gateway replica A and B. */
export async function startStack() {
  fs.rmSync(OUT, { recursive: true, force: true });
  fs.mkdirSync(path.join(OUT, "screenshots"), { recursive: true });
  const data = path.join(OUT, "stack");
  const stack = run(
    [
      "--data-dir", data,
      "--ws-port", String(PORTS.ws),
      "--broker-port", String(PORTS.broker),
      "--s3-port", String(PORTS.s3),
      "--agent-port", String(PORTS.agent),
      "--api-port", String(PORTS.api),
      "--web-port", String(PORTS.web),
      "--functions-port", String(PORTS.functions),
      "--web-root", path.join(ROOT, "target/web"),
      "--web-ws-url", `ws://127.0.0.1:${PORTS.gatewayA[0]}`,
    ],
    {},
    "stack.log",
  );
  await until("the stack", () => fs.existsSync(path.join(data, "stack.json")) || stack.exitCode !== null);
  if (stack.exitCode !== null) throw new Error("the stack did not start: see target/browser/stack.log");
  const log = fs.readFileSync(path.join(OUT, "stack.log"), "utf8");
  const redisUrl = log.match(/started redis-server at (\S+)/)?.[1];
  const mongoUri = log.match(/started SecantusDB at (\S+)/)?.[1];
  const env = {
    REDIS_URL: redisUrl,
    CONNECT_FUNCTION_URL: `http://127.0.0.1:${PORTS.functions}/integrations/$connect`,
    MESSAGE_FUNCTION_URL: `http://127.0.0.1:${PORTS.functions}/integrations/$default`,
    DISCONNECT_FUNCTION_URL: `http://127.0.0.1:${PORTS.functions}/integrations/$disconnect`,
    GATEWAY_STAGE: "local",
    GATEWAY_DRAIN_SECS: "10",
  };
  const gateway = async (name, [ws, management]) => {
    const child = run(
      ["gateway", "--host", "127.0.0.1", "--ws-port", String(ws), "--management-port", String(management)],
      env,
      `gateway-${name}.log`,
    );
    await until(`gateway ${name}`, () => listening(ws));
    return child;
  };
  const gateways = { A: await gateway("A", PORTS.gatewayA), B: await gateway("B", PORTS.gatewayB) };
  return {
    stack,
    mongoUri,
    webUrl: `http://127.0.0.1:${PORTS.web}/`,
    gateways,
    /** SIGTERM on replica `name` (it migrates its clients, then exits), then starts it again. */
    async restartGateway(name) {
      const child = gateways[name];
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      await exited;
      gateways[name] = await gateway(name, name === "A" ? PORTS.gatewayA : PORTS.gatewayB);
    },
    stop() {
      for (const child of children) child.kill("SIGINT");
    },
  };
}

/**
 * A browser profile on disk (not incognito, as `launchBrowser`'s contexts are): the only kind in
 * which Chromium offers the Push API.
 */
export async function launchProfile(name) {
  const dir = path.join(OUT, `profile-${name}`);
  return chromium.launchPersistentContext(dir, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: CHROMIUM_ARGS,
    viewport: { width: 1100, height: 760 },
    permissions: ["notifications"],
  });
}

const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  // A microphone for voice notes: Chromium's fake one, allowed without a prompt.
  "--use-fake-device-for-media-stream",
  "--use-fake-ui-for-media-stream",
];

export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: CHROMIUM_ARGS,
  });
}

let shots = 0;
/** A screenshot of `page` as target/browser/screenshots/NN-name.png. */
export async function shot(page, name) {
  shots += 1;
  const file = path.join(OUT, "screenshots", `${String(shots).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file });
  return file;
}

/**
 * A person in their own browser profile: signed up through the page (name, e-mail, the code
 * from the local code outbox). Their connection's states are recorded in `window.__statuses`.
 */
export async function signUp(browser, webUrl, name, { viewport = { width: 1100, height: 760 }, context = null } = {}) {
  context ??= await browser.newContext({
    viewport,
    acceptDownloads: true,
    permissions: ["geolocation", "microphone", "notifications"],
    geolocation: { latitude: 52.52, longitude: 13.405 },
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  const email = `${name.toLowerCase()}-${Date.now()}@example.com`;
  await page.goto(webUrl);
  await page.getByLabel("Your name (new accounts)").fill(name);
  await page.getByLabel("E-mail address", { exact: true }).fill(email);
  await page.getByRole("button", { name: "Send code" }).click();
  await page.waitForFunction(() => /^\d{6}$/.test(document.getElementById("signin-code").value));
  await page.getByRole("button", { name: "Continue" }).click();
  await page.waitForFunction(() => window.messaging?.chat?.connection?.status === "online", null, { timeout: 30_000 });
  await page.evaluate(() => {
    window.__statuses = [];
    window.messaging.chat.connection.addEventListener("status", (e) => window.__statuses.push(e.detail));
  });
  const userId = await page.evaluate(() => window.messaging.chat.me.user_id);
  return { name, email, userId, context, page, errors };
}

/** The `li` of the message whose text is `text`, in the open chat. */
export function message(page, text) {
  return page.locator("#messages li.message", { has: page.locator(".text", { hasText: text }) });
}

/** Opens the conversation titled `title` from the list. */
export async function openChat(page, title) {
  if (await page.locator("#chat-title", { hasText: title }).isVisible()) return;
  // At phone width the open chat covers the list: back to it first.
  if (await page.locator("#back-button").isVisible()) await page.locator("#back-button").click();
  await page.locator("#conversation-list li", { hasText: title }).first().click();
  await page.locator("#chat-title", { hasText: title }).waitFor();
}

/** Types and sends `text` in the open chat. */
export async function send(page, text) {
  await page.getByLabel("Message", { exact: true }).fill(text);
  await page.getByRole("button", { name: "Send", exact: true }).click();
}

/** Stops the page's network as a lost connection would (the socket drops, nothing gets out). */
export async function goOffline(person) {
  await person.context.setOffline(true);
  await person.page.evaluate(() => window.messaging.chat.connection.drop());
  await person.page.waitForFunction(() => window.messaging.chat.connection.status !== "online");
}

export async function goOnline(person) {
  await person.context.setOffline(false);
  await person.page.evaluate(() => window.dispatchEvent(new Event("online")));
  await person.page.waitForFunction(() => window.messaging.chat.connection.status === "online", null, { timeout: 30_000 });
}
