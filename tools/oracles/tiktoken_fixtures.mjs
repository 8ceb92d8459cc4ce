// Writes golden/tokenizer/tiktoken/: the cl100k_base and o200k_base ranks that npm's js-tiktoken
// and tiktoken ship, converted to the tiktoken.model form ("<base64 token> <rank>" per line) that
// Kimi K2 and Moonlight use, a tokenizer_config.json for each (its special tokens and tiktoken's
// pat_str), a Kimi-style tokenizer_config.json (Kimi K2's special tokens and reserved slots over
// cl100k_base's ranks, its TikTokenTokenizer class: Kimi's pattern), and cases.json: the ids each
// encoding gives a set of texts (CJK, emoji, digits, whitespace runs, contractions, special
// tokens) and the text some id lists decode to (partial UTF-8 sequences → U+FFFD).
//
// cl100k_base / o200k_base ids come from js-tiktoken (pure JavaScript) and are checked against the
// tiktoken package (the Rust crate compiled to WebAssembly) — the two must agree. The Kimi-pattern
// ids come from the tiktoken package alone: its pattern's `&&` class intersections need the Rust
// regex engine. Run once from this directory: `npm ci && npm run tiktoken`; make test reads the
// committed files and never needs npm.
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { Tiktoken as JsTiktoken } from "js-tiktoken/lite";
import { Tiktoken as WasmTiktoken } from "tiktoken/lite";
import cl100k_js from "js-tiktoken/ranks/cl100k_base";
import o200k_js from "js-tiktoken/ranks/o200k_base";

const OUT = "../../golden/tokenizer/tiktoken";
const wasmRanks = (name) => JSON.parse(readFileSync(`node_modules/tiktoken/encoders/${name}.json`, "utf8"));

// tokenization_kimi.py's pat_str (Kimi K2; Moonlight's tokenization_moonshot.py has the same).
const KIMI_PATTERN = [
  "[\\p{Han}]+",
  "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
  "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
  "\\p{N}{1,3}",
  " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*",
  "\\s*[\\r\\n]+",
  "\\s+(?!\\S)",
  "\\s+",
].join("|");

// Kimi K2's named special tokens, as offsets from the first id after the ranks (163584 in K2).
const KIMI_SPECIALS = {
  0: "[BOS]", 1: "[EOS]", 2: "<|im_end|>", 3: "<|im_user|>", 4: "<|im_assistant|>", 6: "<|start_header_id|>",
  7: "<|end_header_id|>", 9: "[EOT]", 10: "<|im_system|>", 11: "<|tool_calls_section_begin|>",
  12: "<|tool_calls_section_end|>", 13: "<|tool_call_begin|>", 14: "<|tool_call_argument_begin|>",
  15: "<|tool_call_end|>", 17: "<|im_middle|>", 254: "[UNK]", 255: "[PAD]",
};

// "! 0 IQ== Ig== …" lines (prefix, first rank, then tokens of consecutive ranks) → [base64, rank][]
function expandRanks(bpe) {
  const out = [];
  for (const line of bpe.split("\n")) {
    if (!line) continue;
    const parts = line.split(" ");
    let rank = Number.parseInt(parts[1], 10);
    for (const tok of parts.slice(2)) out.push([tok, rank++]);
  }
  return out.sort((a, b) => a[1] - b[1]);
}

const TEXTS = [
  ...JSON.parse(readFileSync("../../golden/tokenizer/cases.json", "utf8")).map((c) => c.text),
  "The quick brown fox jumps over the lazy dog.",
  "I'm sure they'll say we've won, you're right, HE'S here, She'd go — 'tis true",
  "12345678901234567890 3.14159 1,000,000 2024-07-11 0x7F 1e-6",
  "日本語のテキストと中文混合在一起，还有 English words 在中间。",
  "Emoji: 😀👍🏽 👨‍👩‍👧‍👦 🇯🇵 ✨🔥 and ❤️",
  "    four spaces\n\n\n\n    and tabs\t\t\t\tend    ",
  "line one\r\nline two\rline three\n",
  "mixed CASE WordsWithCamelCase and snake_case_names, URL https://example.com/a/b?c=d&e=f#g",
  "Ελληνικά, русский текст, עברית, العربية, हिन्दी, ไทย",
  "def f(x):\n    return {'a': [1, 2, 3], \"b\": None}  # comment\n",
  "<|endoftext|>special<|endoftext|> and <|im_end|><|im_user|>user<|im_middle|>hi<|im_end|>",
  "[BOS]Kimi [EOS] tokens and <|reserved_token_163600|> text",
  "a" + " ".repeat(40) + "b" + "\n".repeat(7) + "c",
  "ÀÉÎÕÜ àéîõü ß ſ Straße ǅ ᾈ",
  "ab".repeat(300),
  "",
];

// id lists whose bytes are not valid UTF-8 on their own: the decoder's U+FFFD rule
const DECODE_CASES = [
  { encoding: "cl100k_base", text: "😀👍🏽" },
  { encoding: "o200k_base", text: "日本語のテキスト" },
  { encoding: "cl100k_base", text: "深度求索" },
];

function main() {
  const encs = {};
  for (const [name, js] of [["cl100k_base", cl100k_js], ["o200k_base", o200k_js]]) {
    const w = wasmRanks(name);
    if (w.bpe_ranks !== js.bpe_ranks) throw new Error(`${name}: js-tiktoken and tiktoken ship different ranks`);
    encs[name] = {
      specials: js.special_tokens,
      pat: w.pat_str, // tiktoken's own (Rust) pattern; js-tiktoken's spells (?i:…) out for JavaScript
      js: new JsTiktoken(js),
      wasm: new WasmTiktoken(w.bpe_ranks, w.special_tokens, w.pat_str),
      ranks: expandRanks(js.bpe_ranks),
    };
    mkdirSync(`${OUT}/${name}`, { recursive: true });
    writeFileSync(`${OUT}/${name}/tiktoken.model`, encs[name].ranks.map(([t, r]) => `${t} ${r}\n`).join(""));
    const decoder = {};
    for (const [content, id] of Object.entries(js.special_tokens))
      decoder[String(id)] = { content, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true };
    writeFileSync(`${OUT}/${name}/tokenizer_config.json`, JSON.stringify({
      added_tokens_decoder: decoder,
      eos_token: "<|endoftext|>",
      pat_str: w.pat_str,
      tokenizer_class: "dsv3 test fixture: " + name + " from npm tiktoken " + JSON.parse(readFileSync("node_modules/tiktoken/package.json")).version,
    }, null, 1) + "\n");
  }
  // Kimi: its special tokens and 256 reserved slots after cl100k_base's ranks, its class
  const nBase = encs.cl100k_base.ranks.length;
  const kimiSpecials = {}, decoder = {};
  for (let i = 0; i < 256; i++) {
    const content = KIMI_SPECIALS[i] ?? `<|reserved_token_${nBase + i}|>`;
    kimiSpecials[content] = nBase + i;
    if (KIMI_SPECIALS[i] !== undefined)
      decoder[String(nBase + i)] = { content, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true };
  }
  mkdirSync(`${OUT}/kimi`, { recursive: true });
  writeFileSync(`${OUT}/kimi/tokenizer_config.json`, JSON.stringify({
    added_tokens_decoder: decoder,
    auto_map: { AutoTokenizer: ["tokenization_kimi.TikTokenTokenizer", null] },
    bos_token: "[BOS]",
    eos_token: "[EOS]",
    tokenizer_class: "TikTokenTokenizer",
    pad_token: "[PAD]",
    unk_token: "[UNK]",
  }, null, 1) + "\n");
  const kimi = new WasmTiktoken(wasmRanks("cl100k_base").bpe_ranks, kimiSpecials, KIMI_PATTERN);

  const cases = TEXTS.map((text) => {
    const c = { text };
    for (const name of ["cl100k_base", "o200k_base"]) {
      const a = encs[name].js.encode(text, "all"), b = Array.from(encs[name].wasm.encode(text, "all"));
      if (JSON.stringify(a) !== JSON.stringify(b)) throw new Error(`${name}: js-tiktoken and tiktoken disagree on ${JSON.stringify(text)}`);
      c[name] = a;
    }
    c.kimi = Array.from(kimi.encode(text, "all"));
    return c;
  });
  const decodes = [];
  for (const d of DECODE_CASES) {
    const ids = encs[d.encoding].js.encode(d.text);
    for (let i = 0; i + 1 <= ids.length; i++) {
      const one = [ids[i]];
      const bytes = encs[d.encoding].wasm.decode(Uint32Array.from(one));
      decodes.push({ encoding: d.encoding, ids: one, decoded: new TextDecoder("utf-8").decode(bytes) });
    }
    decodes.push({ encoding: d.encoding, ids, decoded: encs[d.encoding].js.decode(ids) });
  }
  writeFileSync(`${OUT}/cases.json`, JSON.stringify({
    generator: "tools/oracles/tiktoken_fixtures.mjs (npm js-tiktoken " +
      JSON.parse(readFileSync("node_modules/js-tiktoken/package.json")).version + ", tiktoken " +
      JSON.parse(readFileSync("node_modules/tiktoken/package.json")).version + ")",
    encode: cases,
    decode: decodes,
  }, null, 1) + "\n");
  console.log(`wrote ${OUT}: ${cases.length} encode cases, ${decodes.length} decode cases`);
}

main();
