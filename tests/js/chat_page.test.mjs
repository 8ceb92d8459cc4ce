// The chat page (GET /) in a real browser: Debian's Chromium, headless, driven by playwright-core.
// It types a message, waits for the streamed reply, checks it and the tokens/s line, stops a long
// reply with the stop button, and saves a screenshot (build/serve-chat.png; docs/img/serve-chat.png
// is a copy of one).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";
import { startServer, root } from "./server.mjs";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
let server, browser, profile;

before(async () => {
  server = await startServer(["-np", "2", "--alias", "kjv"]);
  profile = fs.mkdtempSync(path.join(os.tmpdir(), "dsv3-chromium-"));
  // A fresh profile each run (playwright passes it as --user-data-dir).
  browser = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    viewport: { width: 900, height: 620 },
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  if (profile) fs.rmSync(profile, { recursive: true, force: true });
  assert.equal(await server.stop(), 0);
});

test("a message gets a streamed reply, with tokens/s; stop ends a long one", async () => {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(server.url + "/");
  assert.equal(await page.title(), "dsv3 chat");
  await page.waitForFunction(() => document.getElementById("model").textContent === "kjv");
  await page.fill("#temperature", "0");
  await page.fill("#max_tokens", "40");
  await page.fill("#input", "And God said, Let there be light");
  await page.click("#send");
  // Streaming: the reply grows while the request runs, then the stats line appears.
  await page.waitForFunction(() => document.querySelector(".assistant .text")?.textContent.length > 0);
  await page.waitForSelector(".assistant .stats:not(:empty)", { timeout: 60000 });
  const reply = await page.textContent(".assistant .text");
  const stats = await page.textContent(".assistant .stats");
  assert.ok(reply.trim().length > 10, `reply: ${reply}`);
  assert.match(stats, /^40 tokens · [0-9.]+ tokens\/s · first token after [0-9.]+ s · length$/);
  assert.ok(Number(await page.getAttribute(".assistant .stats", "data-tps")) > 0);
  // Greedy: the page shows what the API returns for the same conversation.
  const api = await (await fetch(server.url + "/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ messages: [{ role: "user", content: "And God said, Let there be light" }], temperature: 0, max_tokens: 40 }),
  })).json();
  assert.equal(reply, api.choices[0].message.content);
  fs.mkdirSync(path.join(root, "build"), { recursive: true });
  await page.screenshot({ path: path.join(root, "build/serve-chat.png") });
  // A second turn, stopped with the button while it streams.
  await page.fill("#max_tokens", "3000");
  await page.fill("#temperature", "0.8");
  await page.fill("#input", "Tell me more");
  await page.click("#send");
  await page.waitForFunction(() => document.querySelectorAll(".assistant .text")[1]?.textContent.length > 20);
  await page.click("#stop");
  await page.waitForFunction(() => document.querySelectorAll(".assistant .stats")[1]?.textContent.includes("stopped"));
  assert.equal(await page.isDisabled("#send"), false);
  assert.deepEqual(errors, []);
});
