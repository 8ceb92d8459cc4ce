// `dsv3 serve` through the official OpenAI JavaScript client (npm `openai`): models, chat and
// completions, streamed and not, usage, stop strings, error statuses as the client sees them.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startServer } from "./server.mjs";

let server, client;

before(async () => {
  server = await startServer(["-np", "4", "--api-key", "test-key", "--alias", "kjv-test", "--metrics"]);
  client = new OpenAI({ baseURL: server.url + "/v1", apiKey: "test-key", maxRetries: 0, timeout: 60000 });
});

after(async () => {
  assert.equal(await server.stop(), 0);
});

test("models.list names the served model", async () => {
  const page = await client.models.list();
  assert.deepEqual(page.data.map((m) => m.id), ["kjv-test"]);
});

test("chat.completions.create: non-streaming, then streaming with usage, same greedy text", async () => {
  const messages = [{ role: "system", content: "Answer as the scribes." }, { role: "user", content: "Who created the heaven and the earth?" }];
  const full = await client.chat.completions.create({ model: "kjv-test", messages, max_tokens: 24, temperature: 0, seed: 1 });
  assert.equal(full.object, "chat.completion");
  assert.equal(full.model, "kjv-test");
  assert.equal(full.choices[0].message.role, "assistant");
  assert.ok(full.choices[0].message.content.length > 0);
  assert.ok(["stop", "length"].includes(full.choices[0].finish_reason));
  assert.equal(full.usage.total_tokens, full.usage.prompt_tokens + full.usage.completion_tokens);

  const stream = await client.chat.completions.create({
    model: "kjv-test", messages, max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  let text = "", role = null, finish = null, usage = null, ids = new Set();
  for await (const chunk of stream) {
    ids.add(chunk.id);
    if (chunk.usage) usage = chunk.usage;
    const c = chunk.choices[0];
    if (!c) continue;
    if (c.delta.role) role = c.delta.role;
    if (c.delta.content) text += c.delta.content;
    if (c.finish_reason) finish = c.finish_reason;
  }
  assert.equal(ids.size, 1);
  assert.equal(role, "assistant");
  assert.equal(text, full.choices[0].message.content);
  assert.equal(finish, full.choices[0].finish_reason);
  assert.equal(usage.completion_tokens, full.usage.completion_tokens);
});

test("completions.create: text and token-id prompts, stop strings, logprobs", async () => {
  const a = await client.completions.create({ model: "kjv-test", prompt: "In the beginning", max_tokens: 16, temperature: 0 });
  assert.equal(a.object, "text_completion");
  const words = a.choices[0].text.trim().split(" ");
  const stop = " " + words[2];
  const b = await client.completions.create({ model: "kjv-test", prompt: "In the beginning", max_tokens: 16, temperature: 0, stop: [stop] });
  assert.equal(b.choices[0].finish_reason, "stop");
  assert.equal(b.choices[0].text, a.choices[0].text.slice(0, a.choices[0].text.indexOf(stop)));
  const c = await client.completions.create({ model: "kjv-test", prompt: "In the beginning", max_tokens: 4, logprobs: 2, seed: 3 });
  assert.equal(c.choices[0].logprobs.tokens.length, 4);
  assert.ok(c.choices[0].logprobs.token_logprobs.every((x) => x <= 0));
});

test("errors reach the client with their status and message", async () => {
  await assert.rejects(
    client.chat.completions.create({ model: "kjv-test", messages: [], max_tokens: 4 }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && /messages/.test(e.message),
  );
  await assert.rejects(
    client.chat.completions.create({ model: "kjv-test", messages: [{ role: "user", content: "x" }], temperature: 7 }),
    (e) => e.status === 400 && e.param === "temperature",
  );
  await assert.rejects(
    client.completions.create({ model: "kjv-test", prompt: "x", max_tokens: 100000 }),
    (e) => e.status === 400 && e.code === "context_length_exceeded",
  );
  const wrong = new OpenAI({ baseURL: server.url + "/v1", apiKey: "nope", maxRetries: 0 });
  await assert.rejects(wrong.models.list(), (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
});

test("an aborted stream cancels its request and frees its slot", async () => {
  const controller = new AbortController();
  const stream = await client.chat.completions.create(
    { model: "kjv-test", messages: [{ role: "user", content: "Tell me everything" }], max_tokens: 3000, stream: true },
    { signal: controller.signal },
  );
  let n = 0;
  try {
    for await (const _ of stream) if (++n === 5) controller.abort();
  } catch (e) {
    assert.ok(e.name === "AbortError" || e instanceof OpenAI.APIUserAbortError, String(e));
  }
  assert.ok(n >= 5 && n < 100);
  const metric = async (name) => {
    const text = await (await fetch(server.url + "/metrics", { headers: { Authorization: "Bearer test-key" } })).text();
    return Number(text.match(new RegExp("^" + name + " (\\S+)$", "m"))[1]);
  };
  const t0 = Date.now();
  while ((await metric("dsv3_slots_busy")) !== 0 && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 10));
  assert.equal(await metric("dsv3_slots_busy"), 0);
  assert.equal(await metric("dsv3_requests_cancelled_total"), 1);
  const r = await client.completions.create({ model: "kjv-test", prompt: "And", max_tokens: 3 });
  assert.equal(r.usage.completion_tokens, 3);
});
