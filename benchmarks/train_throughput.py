"""Training throughput on real Switchboard batches: dialog-level vs per-window encoding.

    python benchmarks/train_throughput.py [--data runs/data/switchboard] [--steps 12]

For the ``paper`` and ``cpu`` dimensions, times full training steps (forward, backward, Adam)
on the same real batches with

* the dialog-level path: each utterance of a batch encoded once, windows gathered; and
* the per-window path: every context window's utterances re-encoded, as a straightforward
  implementation does;

and the CVAE+BOW and BN-CVAE steps against the CVAE step (the paper's Table 2 reports
1.02-1.04 for BN-VAE). Steps of the configurations being compared are interleaved and the median
step time is used, so that other load on the machine affects them alike. The last three lines are

    bow_over_cvae_step_time: Z.ZZ (the first of --presets, paper dims by default; dialog-level)
    speedup_vs_per_window: X.XX   (the same dims)
    bn_over_cvae_step_time: Y.YY  (the same dims, dialog-level path)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.config import ModelConfig  # noqa: E402
from model.cvae import DialogCVAE  # noqa: E402
from training.batching import SegmentBatches  # noqa: E402
from training.prepare import PrepareConfig, load_prepared, prepare  # noqa: E402
from training.switchboard import TrainConfig  # noqa: E402


def load_corpus(path: str | None):
    if path and Path(path).exists():
        return load_prepared(path)
    tmp = tempfile.mkdtemp(prefix="bncvae-bench-")
    print(f"no prepared corpus at {path}; preparing the shared data into {tmp}", file=sys.stderr)
    prepare(PrepareConfig(out=tmp, progress=False))
    return load_prepared(tmp)


class Stepper:
    """One model + optimizer; ``step(batch)`` runs a training step and returns its duration."""

    def __init__(self, preset: str, variant: str, vocab_size: int, per_window: bool):
        torch.manual_seed(0)
        self.model = DialogCVAE(ModelConfig.preset(preset, variant=variant, vocab_size=vocab_size))
        self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], 1e-3)
        self.per_window = per_window
        self.times: list[float] = []

    def step(self, batch, record: bool = True) -> None:
        t = time.perf_counter()
        out = self.model(batch, kl_weight=0.5, per_window=self.per_window)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.opt.step()
        if record:
            self.times.append(time.perf_counter() - t)


def compare(steppers: dict[str, Stepper], batches, warmup: int = 2) -> dict[str, float]:
    """Median step time of each stepper over the same batches, steps interleaved."""
    names = list(steppers)
    for i, batch in enumerate(batches):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            steppers[name].step(batch, record=i >= warmup)
    return {name: statistics.median(s.times) for name, s in steppers.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(ROOT / "runs/data/switchboard"))
    parser.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    parser.add_argument("--segment-size", type=int, default=TrainConfig.segment_size)
    parser.add_argument("--batch-segments", type=int, default=TrainConfig.batch_segments)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--presets", nargs="+", default=["paper", "cpu"], choices=["paper", "cpu"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    corpus = load_corpus(args.data)
    dialogs = [d.turns() for d in corpus.train]
    sb = SegmentBatches(dialogs, corpus.vocab, args.segment_size, args.batch_segments, seed=0)
    order = sb.order(0)
    k = args.batch_segments
    batches = [sb.batch(order[i * k : (i + 1) * k]) for i in range(args.steps + 2)]
    examples = statistics.mean(b.num_examples for b in batches)
    encodes = statistics.mean(b.utterances.shape[0] for b in batches)
    dialogs_per_batch = statistics.mean(
        len({sb.segments[j].dialog for j in order[i * k : (i + 1) * k]})
        for i in range(len(batches))
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{len(batches)} real batches of {args.batch_segments} segments of "
          f"{args.segment_size} responses: {examples:.1f} examples from {dialogs_per_batch:.1f} "
          f"dialogs and {encodes:.1f} distinct utterances per batch")  # fmt: skip
    print()
    print("| dims  | variant  | path         | step ms | examples/s |")
    print("|-------|----------|--------------|---------|------------|")

    results = {}
    for preset in args.presets:
        v = len(corpus.vocab)
        steppers = {
            ("cvae", "dialog"): Stepper(preset, "cvae", v, per_window=False),
            ("cvae", "per-window"): Stepper(preset, "cvae", v, per_window=True),
            ("cvae-bow", "dialog"): Stepper(preset, "cvae-bow", v, per_window=False),
            ("bn-cvae", "dialog"): Stepper(preset, "bn-cvae", v, per_window=False),
        }
        times = compare(steppers, batches)
        for (variant, path), t in times.items():
            results[(preset, variant, path)] = t
            print(
                f"| {preset:5s} | {variant:8s} | {path:12s} | {t * 1e3:7.1f} | {examples / t:10.1f} |"
            )
    p = args.presets[0]
    speedup = results[(p, "cvae", "per-window")] / results[(p, "cvae", "dialog")]
    ratio = results[(p, "bn-cvae", "dialog")] / results[(p, "cvae", "dialog")]
    bow_ratio = results[(p, "cvae-bow", "dialog")] / results[(p, "cvae", "dialog")]
    print()
    print(f"bow_over_cvae_step_time: {bow_ratio:.2f}")
    print(f"speedup_vs_per_window: {speedup:.2f}")
    print(f"bn_over_cvae_step_time: {ratio:.2f}")


if __name__ == "__main__":
    main()
