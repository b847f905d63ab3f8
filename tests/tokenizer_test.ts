import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { BOS_ID, ClipTokenizer, CONTEXT_LENGTH, EOS_ID } from "../pipeline/tokenizer.ts";
import { MODEL_DIR } from "./helpers.ts";

const tokenizer = await ClipTokenizer.load(`${MODEL_DIR}/tokenizer`);

Deno.test("tokenizer: SD 1.5's ids for a known prompt, BOS/EOS and EOS padding to 77", () => {
  // The ids openai/clip-vit-large-patch14 (SD 1.5's tokenizer) gives this prompt.
  const ids = Array.from(tokenizer.tokenize("a photograph of an astronaut riding a horse"));
  assertEquals(ids.slice(0, 10), [BOS_ID, 320, 8853, 539, 550, 18376, 6765, 320, 4558, EOS_ID]);
  assertEquals(ids.length, CONTEXT_LENGTH);
  assertEquals(ids.slice(10), new Array(CONTEXT_LENGTH - 10).fill(EOS_ID));
});

Deno.test("tokenizer: case, whitespace, punctuation and sub-word merges", () => {
  assertEquals(tokenizer.encode("  A   Photograph, of AN astronaut! "), [
    320,
    8853,
    267,
    539,
    550,
    18376,
    256,
  ]);
  assertEquals(tokenizer.encode("smoothdiffusion").length > 1, true);
});

Deno.test("tokenizer: the empty prompt and truncation at 77", () => {
  assertEquals(Array.from(tokenizer.tokenize("")), [BOS_ID, ...new Array(CONTEXT_LENGTH - 1).fill(EOS_ID)]);
  const long = Array.from(tokenizer.tokenize("red ".repeat(200)));
  assertEquals(long.length, CONTEXT_LENGTH);
  assertEquals(long[0], BOS_ID);
  assertEquals(long[CONTEXT_LENGTH - 1], EOS_ID);
  assertEquals(new Set(long.slice(1, -1)).size, 1);
});
