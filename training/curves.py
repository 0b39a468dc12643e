"""Training curves as a picture: loss, KL and perplexity over steps, train and validation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from model.files import atomic_path  # noqa: E402

# (title, train key, valid key, log scale). The KL is on a log scale: it falls from tens of
# nats to below one (the CVAE's), and whether the valid KL has settled is read off its last
# validations, which a linear axis squeezes against zero.
PANELS = (
    ("-ELBO per example (nats)", "train_loss", "valid_loss", False),
    ("KL(q(z|c,x) || p(z|c)) (nats, log scale)", "train_kl", "valid_kl", True),
    ("reconstruction perplexity", "train_ppl", "valid_ppl", True),
)


def plot_curves(history: Sequence[dict], path: str | Path, title: str = "") -> None:
    """Write ``path`` (PNG) from metrics records ({"step", "split", ...}); the last valid
    value of each panel is written beside its point."""
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
        ax.margins(x=0.08)  # room for the last value
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        if log:
            ax.set_yscale("log")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
