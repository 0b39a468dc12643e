"""How ``model.decoding.READABLE`` was chosen: decoding options side by side on held-out contexts.

Samples 5 responses for each of 300 contexts drawn from Zhao et al.'s *valid* split (the test
split is left to ``eval.switchboard``) with the shipped checkpoint, under several option sets,
and prints per set: the share of responses that loop (a token three times in a row, or a
3-gram twice), that contain ``<unk>``, distinct-1/2 over all responses, mean length, and the
model's mean log-probability per token. ``-v`` shows responses that differ from plain greedy.

    python benchmarks/decoding_presets.py [--data ../shared/data/switchboard/zhao/valid.jsonl]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from eval.metrics import distinct_n  # noqa: E402
from model.batch import context_batch  # noqa: E402
from model.checkpoint import load_pretrained  # noqa: E402
from model.decoding import PLAIN, READABLE, DecodingOptions  # noqa: E402
from service.config import DEFAULT_CHECKPOINT  # noqa: E402
from service.conversation import read_conversation  # noqa: E402
from training.prepare import DEFAULT_DATA  # noqa: E402

NO_UNK = DecodingOptions(allow_unk=False)
CANDIDATES = {
    "greedy, plain (the papers')": ("greedy", 1.0, PLAIN),
    "greedy, no <unk>": ("greedy", 1.0, NO_UNK),
    "greedy, no <unk>, 3-gram block": ("greedy", 1.0, replace(NO_UNK, no_repeat_ngram_size=3)),
    "greedy, no <unk>, 2-gram block": ("greedy", 1.0, replace(NO_UNK, no_repeat_ngram_size=2)),
    "greedy, READABLE": ("greedy", 1.0, READABLE),
    "greedy, READABLE, penalty 1.5": ("greedy", 1.0, replace(READABLE, repetition_penalty=1.5)),
    "sample T=1, plain": ("sample", 1.0, PLAIN),
    "sample T=0.7, READABLE": ("sample", 0.7, READABLE),
    "sample T=1, READABLE": ("sample", 1.0, READABLE),
    "sample T=1.5, READABLE": ("sample", 1.5, READABLE),
    "sample T=1, READABLE, top_k 40 not top_p": (
        "sample",
        1.0,
        replace(READABLE, top_k=40, top_p=1.0),
    ),
}


def loops(tokens: list[str]) -> bool:
    trigrams = [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]
    return any(a == b == c for a, b, c in trigrams) or len(set(trigrams)) < len(trigrams)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(REPO / DEFAULT_CHECKPOINT))
    parser.add_argument("--data", default=str(DEFAULT_DATA / "zhao" / "valid.jsonl"))
    parser.add_argument("--contexts", type=int, default=300)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(1)
    model, vocab = load_pretrained(args.checkpoint)
    dialogs = [json.loads(line)["utts"] for line in open(args.data)]
    rng = random.Random(0)
    contexts = []
    for _ in range(args.contexts):
        utts = rng.choice(dialogs)
        turns = [(speaker, text) for speaker, text, *_ in utts[: rng.randint(1, len(utts) - 1)]]
        contexts.append(read_conversation(turns, None, model, vocab).turns)
    batch = context_batch(contexts, vocab)

    print(f"{len(contexts)} contexts x 5 samples, {args.data}")
    print("| decoding | loops | <unk> | distinct-1 | distinct-2 | tokens | log p / token |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    plain = None
    for name, (decoding, temperature, options) in CANDIDATES.items():
        out = model.sample_responses(
            batch, 5, 40, decoding, temperature, torch.Generator().manual_seed(0), None, options
        )
        ids = out.token_ids.reshape(-1, out.token_ids.shape[-1]).tolist()
        responses = [vocab.decode(r) for r in ids]
        n = len(responses)
        per_token = (out.log_probs.sum() / (out.lengths.sum() + n)).item()
        print(
            f"| {name} | {sum(map(loops, responses)) / n:.1%} "
            f"| {sum('<unk>' in r for r in responses) / n:.1%} "
            f"| {distinct_n(responses, 1):.3f} | {distinct_n(responses, 2):.3f} "
            f"| {sum(map(len, responses)) / n:.1f} | {per_token:.2f} |"
        )
        plain = plain or responses
        if args.verbose and responses is not plain:
            changed = [(a, b) for a, b in zip(plain, responses, strict=True) if a != b]
            for a, b in changed[:8]:
                print(f"    {' '.join(a)[:70]}  ->  {' '.join(b)[:70]}")


if __name__ == "__main__":
    main()
