"""Training curves of several runs side by side (KL over steps shows collapse or not).

    python -m eval.compare_runs runs/cvae-cpu runs/cvae-bow-cpu runs/bn-cvae-cpu \
        --out docs/img/curves.png

Each run is a ``training.switchboard`` output directory (``metrics.jsonl``, ``config.json``,
``summary.json`` when finished) or a run's published record, named by its stem
(``results/cvae-s0`` for ``results/cvae-s0.metrics.ndjson``, ``.config.json``, ``.summary.json``;
``training.publish`` writes them), so a committed run is plotted after its directory is gone:

    python -m eval.compare_runs results/cvae-s0 results/cvae-s1 results/cvae-s2 --out kl.png

Runs of the same variant are told apart by their seed. Also prints each run's steps and
training wall time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from model.files import atomic_path  # noqa: E402

# KL on a log scale: whether a CVAE's KL has settled at 0.3 nats or is still falling shows there.
PANELS = (
    ("train_kl", "KL(q||p), train (nats)", True),
    ("valid_kl", "KL(q||p), valid (nats)", True),
    ("valid_ppl", "reconstruction perplexity, valid", True),
    ("valid_loss", "-ELBO per example, valid (nats)", False),
)


def run_file(run: Path, name: str) -> Path:
    """``name`` (config.json, metrics.jsonl, summary.json) of a run directory, or its twin in a
    published record ``STEM.config.json``, ``STEM.metrics.ndjson``, ``STEM.summary.json``."""
    if run.is_dir():
        return run / name
    published = name.replace("metrics.jsonl", "metrics.ndjson")
    return run.with_name(f"{run.name}.{published}")


def run_label(config: dict) -> str:
    """A run's variant, with its γ for a BN-CVAE, from its ``config.json``."""
    model = config["model"]
    label = model["variant"]
    if model["variant"] == "bn-cvae":
        label += f" (γ={model['bn_gamma']})"
    return label


def run_labels(runs: list[Path]) -> list[str]:
    """Each run's label; runs that would share one are told apart by their seed."""
    configs = [json.loads(run_file(run, "config.json").read_text()) for run in runs]
    labels = [run_label(config) for config in configs]
    return [
        f"{label}, seed {config['train']['seed']}" if labels.count(label) > 1 else label
        for config, label in zip(configs, labels, strict=True)
    ]


def load_metrics(run: Path) -> list[dict]:
    path = run_file(run, "metrics.jsonl")
    if not path.exists():
        raise SystemExit(f"{path}: missing (is {run} a run directory or a published record?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_summary(run: Path) -> dict | None:
    """A finished run's summary (steps, training time, best valid -ELBO and its step); None
    while it trains."""
    path = run_file(run, "summary.json")
    return json.loads(path.read_text()) if path.exists() else None


def load_runs(runs: list[Path]) -> tuple[list[list[dict]], list[str], list[dict | None]]:
    """Each run's metrics, label and summary, every file read once (a missing metrics file
    is named first)."""
    histories = [load_metrics(run) for run in runs]
    return histories, run_labels(runs), [load_summary(run) for run in runs]


def draw_runs(
    histories: list[list[dict]], labels: list[str], summaries: list[dict | None]
) -> Figure:
    """One panel per :data:`PANELS` entry, a line per run (from :func:`load_runs`); on the
    valid panels a star marks the validation a finished run kept as ``best/`` (its summary's
    ``best_step``)."""
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4))
    for history, label, summary in zip(histories, labels, summaries, strict=True):
        best = summary["best_step"] if summary else None
        for ax, (key, _, _) in zip(axes, PANELS, strict=True):
            pts = [(r["step"], r[key]) for r in history if key in r]
            if pts:
                xs, ys = zip(*pts, strict=True)
                line = "-" if key.startswith("train") else "o-"
                (drawn,) = ax.plot(xs, ys, line, label=label, markersize=3)
                if best in xs and not key.startswith("train"):
                    y = ys[xs.index(best)]
                    ax.plot([best], [y], "*", color=drawn.get_color(), markersize=12)
    for ax, (_, title, log) in zip(axes, PANELS, strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
        if log:
            ax.set_yscale("log")
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, out: Path) -> None:
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
    histories, labels, summaries = load_runs(args.runs)
    save_figure(draw_runs(histories, labels, summaries), args.out)
    print("| run | steps | training time (min) | best valid -ELBO (step) |")
    print("|---|---|---|---|")
    for label, s in zip(labels, summaries, strict=True):
        if s:
            print(f"| {label} | {s['step']} | {s['train_seconds'] / 60:.1f} | "
                  f"{s['best']:.2f} ({s['best_step']}) |")  # fmt: skip
        else:
            print(f"| {label} | unfinished | | |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
