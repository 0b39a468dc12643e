"""Training curves as a picture: loss, KL and perplexity over steps, train and validation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from model.files import atomic_path  # noqa: E402

PANELS = (
    ("-ELBO per example (nats)", "train_loss", "valid_loss"),
    ("KL(q(z|c,x) || p(z|c)) (nats)", "train_kl", "valid_kl"),
    ("reconstruction perplexity", "train_ppl", "valid_ppl"),
)


def plot_curves(history: Sequence[dict], path: str | Path, title: str = "") -> None:
    """Write ``path`` (PNG) from metrics records ({"step", "split", ...})."""
    fig, axes = plt.subplots(1, len(PANELS), figsize=(15, 4))
    for ax, (label, train_key, valid_key) in zip(axes, PANELS, strict=True):
        for key, style in ((train_key, "-"), (valid_key, "o-")):
            pts = [(r["step"], r[key]) for r in history if key in r]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, style, label=key.split("_")[0], markersize=3)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
        if "ppl" in train_key:
            ax.set_yscale("log")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
