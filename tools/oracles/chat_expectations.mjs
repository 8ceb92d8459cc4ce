// Writes golden/chat/expectations.json: what the real chat templates of the DeepSeek-V3 family
// (golden/chat/*.jinja, see golden/chat/README.md for where each text comes from) render for a
// set of conversations — system prompts (none, one, two), multi-turn, empty contents, an
// assistant turn carrying its reasoning, a conversation ending with the assistant, with and
// without the generation prompt, and DeepSeek-V3.1 with thinking on and off — rendered by npm's
// @huggingface/jinja, the Jinja engine transformers.js uses for apply_chat_template.
// ref/tokenizer/chat.c must produce exactly these strings (tests/test_chat.c).
// Run once from this directory: `npm ci && npm run chat`; make test never needs npm.
import { readFileSync, writeFileSync } from "node:fs";
import { Template } from "@huggingface/jinja";

const DIR = "../../golden/chat";
const TEMPLATES = ["deepseek-v3", "deepseek-r1", "deepseek-v3.1", "kimi-k2", "kimi-k2-thinking"];

const u = (content) => ({ role: "user", content });
const a = (content) => ({ role: "assistant", content });
const s = (content) => ({ role: "system", content });
const CONVERSATIONS = [
  [u("Hello!")],
  [s("You are a helpful assistant."), u("What is 2+2?")],
  [s("Be brief."), s("Answer in French."), u("Name a colour.")],
  [s("sys"), u("Hi"), a("Hello! How can I help?"), u("Tell me a joke.")],
  [u(""), a(""), u("still there?")],
  [u("Why is the sky blue?"), a("<think>\nRayleigh scattering…\n</think>\n\nBecause of Rayleigh scattering."), u("And sunsets?")],
  [u("first</think>user text"), a("a</think>b</think>c"), u("next")],
  [s("sys"), u("Q1"), a("A1")],
  [u("多语言：日本語、한국어、emoji 😀"), a("好的。")],
  [s("only a system prompt")],
];

function main() {
  const out = [];
  for (const name of TEMPLATES) {
    const tpl = new Template(readFileSync(`${DIR}/${name}.jinja`, "utf8"));
    const thinkings = name === "deepseek-v3.1" ? [false, true] : [null];
    for (const messages of CONVERSATIONS)
      for (const add_generation_prompt of [true, false])
        for (const thinking of thinkings) {
          const vars = { messages, add_generation_prompt, bos_token: "<｜begin▁of▁sentence｜>", eos_token: "<｜end▁of▁sentence｜>" };
          if (thinking !== null) vars.thinking = thinking;
          out.push({ template: name, thinking, add_generation_prompt, messages, text: tpl.render(vars) });
        }
  }
  const pkg = JSON.parse(readFileSync("node_modules/@huggingface/jinja/package.json", "utf8"));
  writeFileSync(`${DIR}/expectations.json`, JSON.stringify({
    generator: `tools/oracles/chat_expectations.mjs (npm @huggingface/jinja ${pkg.version})`,
    cases: out,
  }, null, 1) + "\n");
  console.log(`wrote ${DIR}/expectations.json: ${out.length} renderings`);
}

main();
