"""Small synthetic dialogs with learnable structure, in Zhao's JSONL format, for fast tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

TOPICS = ["music", "movies", "dogs", "cats", "cars", "books", "food", "golf", "taxes", "rain"]
NAMES = ["bob", "ann", "joe", "sue", "tom", "kim", "max", "amy", "ted", "liz", "sam", "eve"]
TEMPLATES = [
    ("A", "hi i am {a} do you like {t}"),
    ("B", "hi {a} i am {b} yes i really like {t}"),
    ("A", "what kind of {t} do you like {b}"),
    ("B", "i like all kinds of {t} you know {a}"),
    ("A", "uh-huh"),
    ("B", "and {t} is fun {a}"),
    ("A", "right {t} is fun {b}"),
]


def synthetic_dialog(rng: random.Random) -> dict:
    # Names make every dialog's word 5-grams differ, so the leakage filter keeps them apart.
    fill = {"t": rng.choice(TOPICS), "a": rng.choice(NAMES), "b": rng.choice(NAMES)}
    utts = [[spk, text.format(**fill), ["statement", []]] for spk, text in TEMPLATES]
    return {"topic": fill["t"], "utts": utts[: rng.randint(4, len(utts))]}


def write_synthetic_zhao(
    directory: Path, n_train: int = 120, n_eval: int = 12, seed: int = 0
) -> Path:
    """A Zhao-style release with train/valid/test splits (no SwDA needed)."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_eval), ("test", n_eval)):
        lines = [json.dumps(synthetic_dialog(rng)) for _ in range(n)]
        (directory / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return directory
