"""training/curves.py: what the training-curves picture shows."""

from __future__ import annotations

import matplotlib.pyplot as plt

from training.curves import PANELS, curves_figure, plot_curves

HISTORY = [
    {"step": 1, "split": "train", "train_loss": 9.0, "train_kl": 4.0, "train_ppl": 50.0},
    {"step": 2, "split": "valid", "valid_loss": 8.0, "valid_kl": 2.0, "valid_ppl": 40.0},
    {"step": 4, "split": "valid", "valid_loss": 7.5, "valid_kl": 0.0, "valid_ppl": 35.0},
]


def test_each_panel_marks_the_kept_checkpoint_and_the_kl_settling_and_skips_unset_marks():
    fig = curves_figure(HISTORY, "cvae", marks={"best/": 4, "KL settled": 2, "later": 0})
    try:
        assert len(fig.axes) == len(PANELS)
        for ax in fig.axes:
            labels = ax.get_legend_handles_labels()[1]
            assert labels == ["train", "valid", "best/ (step 4)", "KL settled (step 2)"]
            vertical = [line.get_xdata()[0] for line in ax.lines[2:]]
            assert vertical == [4, 2]
        # a KL of 0 cannot be drawn on the log axis: the valid KL panel has one point
        kl_panel = fig.axes[1]
        assert list(kl_panel.lines[1].get_xdata()) == [2]
        assert fig.axes[1].get_yscale() == "log" and fig.axes[0].get_yscale() == "linear"
        # the last valid value is written beside its point
        assert [t.get_text() for t in fig.axes[0].texts] == ["7.5"]
    finally:
        plt.close(fig)


def test_without_marks_only_the_curves_and_a_png_is_written(tmp_path):
    fig = curves_figure(HISTORY)
    try:
        assert fig.axes[0].get_legend_handles_labels()[1] == ["train", "valid"]
    finally:
        plt.close(fig)
    plot_curves(HISTORY, tmp_path / "curves.png", title="t", marks={"best/": 4})
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
