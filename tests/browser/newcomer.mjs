// The newcomer's first minute in the browser, against a running stack (scripts/smoke runs it
// against the README's start command): open the web client URL the banner printed, sign up
// with the code the page shows from the local code outbox, start a chat with the demo agent,
// and read its (end-to-end encrypted) answer. Prints how long that took; exits non-zero if it
// did not happen within a minute.
//   node newcomer.mjs http://127.0.0.1:8085 [screenshot.png]
import { launchBrowser, message, send, signUp } from "./harness.mjs";

const [webUrl, screenshot] = process.argv.slice(2);
const started = Date.now();
const browser = await launchBrowser();
const deadline = setTimeout(() => {
  console.error("newcomer: no answer from the demo agent within a minute");
  process.exit(1);
}, 60_000);
try {
  const person = await signUp(browser, webUrl, "Newcomer");
  const page = person.page;
  await page.getByRole("button", { name: "New chat" }).click();
  await page.getByRole("button", { name: "Chat with Demo Agent", exact: true }).click();
  await send(page, "hello from the browser");
  await message(page, "You said: hello from the browser").waitFor({ timeout: 30_000 });
  if (screenshot) await page.screenshot({ path: screenshot });
  if (person.errors.length) throw new Error(`the page reported errors: ${person.errors.join("; ")}`);
  console.log(`newcomer: signed up and read the demo agent's encrypted answer in ${((Date.now() - started) / 1000).toFixed(1)} s`);
} finally {
  clearTimeout(deadline);
  await browser.close();
}
