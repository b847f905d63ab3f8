/**
 * The CLIP byte-pair tokenizer that SD 1.5 uses, read from a model's tokenizer/vocab.json and
 * merges.txt. Output: BOS, the tokens (truncated), EOS, then EOS padding to 77 ids.
 * Text cleaning lowercases and collapses whitespace; CLIP's ftfy/HTML-unescape pass is not applied.
 */
export const BOS_ID = 49406;
export const EOS_ID = 49407;
export const CONTEXT_LENGTH = 77;

const PATTERN =
  /<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+/gu;

function byteToUnicode(): string[] {
  const printable: number[] = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const table = new Array<string>(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    table[b] = String.fromCharCode(printable.includes(b) ? b : 256 + extra++);
  }
  return table;
}

export class ClipTokenizer {
  readonly #vocab: Map<string, number>;
  readonly #ranks: Map<string, number>;
  readonly #byteChars = byteToUnicode();
  readonly #cache = new Map<string, string[]>();
  readonly #utf8 = new TextEncoder();

  constructor(vocab: Record<string, number>, merges: string) {
    this.#vocab = new Map(Object.entries(vocab));
    const lines = merges.split("\n").slice(1).filter((line) => line.length > 0);
    this.#ranks = new Map(lines.map((line, rank) => [line, rank]));
  }

  static async load(tokenizerDir: string): Promise<ClipTokenizer> {
    const vocab = JSON.parse(await Deno.readTextFile(`${tokenizerDir}/vocab.json`));
    return new ClipTokenizer(vocab, await Deno.readTextFile(`${tokenizerDir}/merges.txt`));
  }

  #bpe(token: string): string[] {
    const cached = this.#cache.get(token);
    if (cached) return cached;
    const chars = [...token];
    let word = [...chars.slice(0, -1), chars[chars.length - 1] + "</w>"];
    while (word.length > 1) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i < word.length - 1; i++) {
        const rank = this.#ranks.get(`${word[i]} ${word[i + 1]}`);
        if (rank !== undefined && rank < bestRank) [best, bestRank] = [i, rank];
      }
      if (best < 0) break;
      const [first, second] = [word[best], word[best + 1]];
      const merged: string[] = [];
      for (let i = 0; i < word.length;) {
        if (i < word.length - 1 && word[i] === first && word[i + 1] === second) {
          merged.push(first + second);
          i += 2;
        } else {
          merged.push(word[i++]);
        }
      }
      word = merged;
    }
    if (this.#cache.size < 10_000) this.#cache.set(token, word);
    return word;
  }

  /** Token ids of `text` without BOS/EOS. */
  encode(text: string): number[] {
    const clean = text.replace(/\s+/g, " ").trim().toLowerCase();
    const ids: number[] = [];
    for (const match of clean.matchAll(PATTERN)) {
      const chars = Array.from(this.#utf8.encode(match[0]), (b) => this.#byteChars[b]).join("");
      for (const piece of this.#bpe(chars)) {
        const id = this.#vocab.get(piece);
        if (id !== undefined) ids.push(id);
      }
    }
    return ids;
  }

  /** BOS + ids + EOS, padded with EOS to the 77-token context, as SD 1.5's tokenizer does. */
  tokenize(text: string): Int32Array {
    const ids = [BOS_ID, ...this.encode(text).slice(0, CONTEXT_LENGTH - 2), EOS_ID];
    const out = new Int32Array(CONTEXT_LENGTH).fill(EOS_ID);
    out.set(ids);
    return out;
  }
}
