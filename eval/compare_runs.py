"""Training curves of several runs side by side (KL over steps shows collapse or not).

    python -m eval.compare_runs runs/cvae-cpu runs/cvae-bow-cpu runs/bn-cvae-cpu \
        --out docs/img/curves.png

Each run directory is a ``training.switchboard`` output (``metrics.jsonl``, ``config.json``,
``summary.json`` when finished). Also prints each run's steps and training wall time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from model.files import atomic_path  # noqa: E402

PANELS = (
    ("train_kl", "KL(q||p), train (nats)", False),
    ("valid_kl", "KL(q||p), valid (nats)", False),
    ("valid_ppl", "reconstruction perplexity, valid", True),
    ("valid_loss", "-ELBO per example, valid (nats)", False),
)


def run_label(run: Path) -> str:
    cfg = json.loads((run / "config.json").read_text())
    model = cfg["model"]
    label = model["variant"]
    if model["variant"] == "bn-cvae":
        label += f" (γ={model['bn_gamma']})"
    return label


def load_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        raise SystemExit(f"{path}: missing (is {run} a training run directory?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_runs(runs: list[Path], out: Path) -> None:
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4))
    for run in runs:
        history, label = load_metrics(run), run_label(run)
        for ax, (key, _, _) in zip(axes, PANELS, strict=True):
            pts = [(r["step"], r[key]) for r in history if key in r]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, "-" if key.startswith("train") else "o-", label=label, markersize=3)
    for ax, (_, title, log) in zip(axes, PANELS, strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
        if log:
            ax.set_yscale("log")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/img/curves.png"))
    args = parser.parse_args(argv)
    plot_runs(args.runs, args.out)
    print("| run | steps | training time (min) | best valid -ELBO (step) |")
    print("|---|---|---|---|")
    for run in args.runs:
        summary_path = run / "summary.json"
        if summary_path.exists():
            s = json.loads(summary_path.read_text())
            print(f"| {run_label(run)} | {s['step']} | {s['train_seconds'] / 60:.1f} | "
                  f"{s['best']:.2f} ({s['best_step']}) |")  # fmt: skip
        else:
            print(f"| {run_label(run)} | unfinished | | |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
