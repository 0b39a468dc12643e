"""Training throughput on real Switchboard batches: the backend settings, and dialog-level vs
per-window encoding.

    python benchmarks/train_throughput.py [--data runs/data/switchboard] [--steps 30]

Prints the CPU (model name and the flags that decide the fast kernels) and what the training
loop's start-up check chooses on it (training/backend.py). Then, for the ``paper`` and ``cpu``
dimensions, times full training steps (forward, backward, clipping, Adam) on the same real
batches with

* ``fp32 default``: the training step as it was before the backend settings: float32 with
  torch's default kernels and the for-each Adam;
* ``fast default``: what ``python -m training.switchboard`` now uses by default: fused Adam,
  and float32 matmuls through oneDNN where the start-up check takes them;
* ``bf16 autocast``: the fast default plus ``--precision bf16-autocast`` (opt-in);
* the per-window path: every context window's utterances re-encoded, as a straightforward
  implementation does (with the fp32 default settings);

and the CVAE+BOW and BN-CVAE steps against the CVAE step (the paper's Table 2 reports
1.02-1.04 for BN-VAE). Steps of the configurations being compared are interleaved and the median
step time is used, so that other load on the machine affects them alike. The last lines are
(for the first of --presets, paper dims by default):

    fast_over_fp32_default: F.FF   (cvae, bn-cvae and cvae-bow steps together)
    bf16_over_fp32_default: B.BB
    bow_over_cvae_step_time: Z.ZZ  (fast default)
    speedup_vs_per_window: X.XX    (fp32 default)
    bn_over_cvae_step_time: Y.YY   (fast default)
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
from training.backend import (  # noqa: E402
    autocast,
    cpu_description,
    make_adam,
    onednn_fp32_matmul,
    probe_onednn_matmul,
)
from training.batching import SegmentBatches  # noqa: E402
from training.prepare import PrepareConfig, load_prepared, prepare  # noqa: E402
from training.switchboard import TrainConfig  # noqa: E402

CPU = torch.device("cpu")


def load_corpus(path: str | None):
    if path and Path(path).exists():
        return load_prepared(path)
    tmp = tempfile.mkdtemp(prefix="bncvae-bench-")
    print(f"no prepared corpus at {path}; preparing the shared data into {tmp}", file=sys.stderr)
    prepare(PrepareConfig(out=tmp, progress=False))
    return load_prepared(tmp)


class Stepper:
    """One model + optimizer with its backend settings; ``step(batch)`` runs a training step and
    records its duration.

    ``settings``: "fp32" (torch's default kernels, for-each Adam), "fast" (fused Adam, batched
    GRU training, oneDNN fp32 matmuls when ``onednn``) or "bf16" (fast + bf16 autocast, under
    which the GRUs are torch's)."""

    def __init__(
        self, preset: str, variant: str, vocab_size: int, per_window: bool = False,
        settings: str = "fp32", onednn: bool = False,
    ):  # fmt: skip
        torch.manual_seed(0)
        self.model = DialogCVAE(ModelConfig.preset(preset, variant=variant, vocab_size=vocab_size))
        params = [p for p in self.model.parameters() if p.requires_grad]
        fast = settings in ("fast", "bf16")
        self.model.use_batched_gru(fast)
        self.opt = make_adam(params, 1e-3, CPU) if fast else torch.optim.Adam(params, 1e-3)
        self.onednn = fast and onednn
        self.precision = "bf16-autocast" if settings == "bf16" else "fp32"
        self.per_window = per_window
        self.times: list[float] = []

    def step(self, batch, record: bool = True) -> None:
        with onednn_fp32_matmul(self.onednn):
            t = time.perf_counter()
            with autocast(self.precision, CPU):
                out = self.model(batch, kl_weight=0.5, per_window=self.per_window)
            self.opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
            self.opt.step()
            elapsed = time.perf_counter() - t
        if record:
            self.times.append(elapsed)


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
    probe = probe_onednn_matmul()
    print(f"CPU: {cpu_description()}")
    print(f"oneDNN fp32 matmuls: relative error {probe.relative_error:.1e} "
          f"(float32-exact: {probe.fp32_exact}), capability {probe.capability}, "
          f"{probe.speedup:.2f}x MKL on the vocabulary projection -> "
          f"{'on' if probe.use else 'off'} in the fast default; fused Adam and batched GRU "
          "training: on")  # fmt: skip
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{len(batches)} real batches of {args.batch_segments} segments of "
          f"{args.segment_size} responses: {examples:.1f} examples from {dialogs_per_batch:.1f} "
          f"dialogs and {encodes:.1f} distinct utterances per batch")  # fmt: skip
    print()
    print("| dims  | variant  | settings      | path       | step ms | examples/s |")
    print("|-------|----------|---------------|------------|---------|------------|")

    results = {}
    labels = {"fp32": "fp32 default", "fast": "fast default", "bf16": "bf16 autocast"}
    for preset in args.presets:
        v = len(corpus.vocab)
        steppers = {
            (variant, settings, "dialog"): Stepper(
                preset, variant, v, settings=settings, onednn=probe.use
            )  # fmt: skip
            for variant in ("cvae", "cvae-bow", "bn-cvae")
            for settings in ("fp32", "fast", "bf16")
        }
        steppers[("cvae", "fp32", "per-window")] = Stepper(preset, "cvae", v, per_window=True)
        times = compare(steppers, batches)
        for (variant, settings, path), t in times.items():
            results[(preset, variant, settings, path)] = t
            print(f"| {preset:5s} | {variant:8s} | {labels[settings]:13s} | {path:10s} "
                  f"| {t * 1e3:7.1f} | {examples / t:10.1f} |")  # fmt: skip
    p = args.presets[0]

    def total(settings: str) -> float:
        return sum(results[(p, v, settings, "dialog")] for v in ("cvae", "cvae-bow", "bn-cvae"))

    def fast(variant: str) -> float:
        return results[(p, variant, "fast", "dialog")]

    speedup = results[(p, "cvae", "fp32", "per-window")] / results[(p, "cvae", "fp32", "dialog")]
    print()
    print(f"fast_over_fp32_default: {total('fp32') / total('fast'):.2f}")
    print(f"bf16_over_fp32_default: {total('fp32') / total('bf16'):.2f}")
    print(f"bow_over_cvae_step_time: {fast('cvae-bow') / fast('cvae'):.2f}")
    print(f"speedup_vs_per_window: {speedup:.2f}")
    print(f"bn_over_cvae_step_time: {fast('bn-cvae') / fast('cvae'):.2f}")


if __name__ == "__main__":
    main()
