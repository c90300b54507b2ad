"""A word-level CLIP tokenizer for the shapes world.

The vocabulary holds every lowercase letter and digit (so any word still tokenizes, letter by letter), the
BPE merges that turn each world word into exactly one token, and CLIP's two special tokens. New concept
tokens are added later with ``tokenizer.add_tokens([...])``.
"""

from __future__ import annotations

import itertools
import json
import string
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
# Prompts of this world are at most 13 words; the rest leaves room for concept tokens and longer phrasing.
MAX_LENGTH = 32


def learn_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Learns BPE merges until every word in ``words`` is a single ``word</w>`` symbol.

    Because BPE encodes a training word by replaying the merges in the order they were learned, each world
    word then always comes out as one token. Ties are broken by the pair itself, so the result is stable.
    """
    corpus = [[*w[:-1], w[-1] + "</w>"] for w in sorted(set(words))]
    merges: list[tuple[str, str]] = []
    while True:
        counts: Counter[tuple[str, str]] = Counter()
        for symbols in corpus:
            counts.update(itertools.pairwise(symbols))
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        merged = best[0] + best[1]
        for k, symbols in enumerate(corpus):
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            corpus[k] = out


def write_tokenizer(words: Iterable[str], directory: Path) -> CLIPTokenizer:
    """Writes a CLIP tokenizer over ``words`` to ``directory`` and returns it loaded from there.

    The folder holds ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and
    ``special_tokens_map.json``, loadable with ``CLIPTokenizer.from_pretrained(directory)``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    merges = learn_merges(words)
    symbols = list(string.ascii_lowercase + string.digits + ".,!?'-")
    vocab: dict[str, int] = {}
    for token in [*symbols, *(s + "</w>" for s in symbols), *(a + b for a, b in merges), BOS, EOS]:
        vocab.setdefault(token, len(vocab))
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, indent=0) + "\n")
    merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    # compat: transformers 5 builds the BPE from an in-memory vocab and merge *tuples*, not from file paths.
    tokenizer = CLIPTokenizer(
        vocab=vocab,
        merges=merges,  # compat: annotated as strings, but the tokenizers BPE wants tuples
        unk_token=EOS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=MAX_LENGTH,
    )
    tokenizer.save_pretrained(str(directory))
    # transformers 5 no longer writes this file; older loaders and other tools still look for it.
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    loaded: CLIPTokenizer = CLIPTokenizer.from_pretrained(str(directory), local_files_only=True)
    return loaded
