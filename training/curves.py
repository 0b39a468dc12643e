"""Training curves as a picture: loss, KL and perplexity over steps, train and validation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from model.files import atomic_path  # noqa: E402

# (title, train key, valid key, log scale). The KL is on a log scale: it falls from tens of
# nats to below one (the CVAE's), and whether the valid KL has settled is read off its last
# validations, which a linear axis squeezes against zero.
PANELS = (
    ("-ELBO per example (nats)", "train_loss", "valid_loss", False),
    ("KL(q(z|c,x) || p(z|c)) (nats, log scale)", "train_kl", "valid_kl", True),
    ("reconstruction perplexity", "train_ppl", "valid_ppl", True),
)


def curves_figure(history: Sequence[dict], title: str = "",
                  marks: Mapping[str, int] | None = None) -> Figure:  # fmt: skip
    """The figure of metrics records ({"step", "split", ...}); the last valid value of each
    panel is written beside its point, and each of ``marks`` ({name: step}; 0 for none yet) is
    a dashed vertical line in every panel: where the kept checkpoint is, where the KL settled."""
    fig, axes = plt.subplots(1, len(PANELS), figsize=(15, 4))
    for ax, (label, train_key, valid_key, log) in zip(axes, PANELS, strict=True):
        for key, style in ((train_key, "-"), (valid_key, "o-")):
            pts = [(r["step"], r[key]) for r in history if key in r]
            if log:
                pts = [(x, y) for x, y in pts if y > 0]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, style, label=key.split("_")[0], markersize=3)
                if key == valid_key:
                    ax.annotate(f"{ys[-1]:.3g}", (xs[-1], ys[-1]), textcoords="offset points",
                                xytext=(4, 6), fontsize=9, color="C1")  # fmt: skip
        for i, (name, step) in enumerate((marks or {}).items()):
            if step:
                ax.axvline(step, linestyle="--", linewidth=1, color=f"C{2 + i}",
                           label=f"{name} (step {step:,})")  # fmt: skip
        ax.margins(x=0.08)  # room for the last value
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        if log:
            ax.set_yscale("log")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(history: Sequence[dict], path: str | Path, title: str = "",
                marks: Mapping[str, int] | None = None) -> None:  # fmt: skip
    """Write ``path`` (PNG): :func:`curves_figure`."""
    fig = curves_figure(history, title, marks)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
