"""Word vocabulary: the most frequent training words plus the special tokens."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from model.files import os_error_reason, read_bytes

PAD, UNK, BOS, EOS, BOD = "<pad>", "<unk>", "<s>", "</s>", "<d>"
SPECIALS = (PAD, UNK, BOS, EOS, BOD)


class Vocabulary:
    """Maps words to ids. Ids 0..4 are ``<pad> <unk> <s> </s> <d>`` (``<d>``: begin of dialog)."""

    def __init__(self, words: Sequence[str]):
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocabulary must start with the special tokens {SPECIALS}")
        if len(set(words)) != len(words):
            raise ValueError("vocabulary has duplicate words")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    pad_id, unk_id, bos_id, eos_id, bod_id = range(len(SPECIALS))

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], max_words: int = 10_000) -> Vocabulary:
        """The ``max_words`` most frequent words (ties broken alphabetically) plus the specials."""
        counts = Counter(w for s in sentences for w in s if w not in SPECIALS)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_words]
        return cls(list(SPECIALS) + [w for w, _ in ranked])

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.index.get(t, self.unk_id) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words up to (not including) the first ``</s>``; ``<s>``/``<pad>`` are dropped."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            out.append(self.words[i])
        return out

    def to_json(self) -> str:
        return json.dumps({"words": self.words}, ensure_ascii=False) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        try:
            data = read_bytes(path)
        except OSError as e:
            raise ValueError(f"cannot read vocabulary file {path}: {os_error_reason(e)}") from e
        return cls.from_json(data, path)

    @classmethod
    def from_json(cls, data: bytes | str, path: str | Path) -> Vocabulary:
        """The vocabulary in ``data``, the bytes of the file ``path`` (named in errors)."""
        try:
            words = json.loads(data)["words"]
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise ValueError("'words' must be a list of strings")
            return cls(words)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"cannot read vocabulary file {path}: {e}") from e
