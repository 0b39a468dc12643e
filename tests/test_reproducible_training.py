"""Training is bit-identical for a given seed and thread count, with several threads too, and
a run stopped and resumed ends with the weights of an uninterrupted one (the ``cpu`` preset:
the ``tiny`` one's products are too small to be split over threads)."""

from __future__ import annotations

import pytest
import torch

from training.switchboard import TrainConfig, train


def weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "training_state.pt", weights_only=True)["model"]


@pytest.mark.slow
def test_two_thread_runs_and_a_resume_give_identical_weights(synthetic_prepared, tmp_path):
    def config(out, steps, resume=False):
        return TrainConfig(data=str(synthetic_prepared), out=str(tmp_path / out), preset="cpu",
                           max_steps=steps, eval_every=steps, save_every=steps, log_every=4,
                           threads=2, resume=resume)  # fmt: skip

    first = train(config("first", 16))
    second = train(config("second", 16))
    train(config("resumed", 8))
    resumed = train(config("resumed", 16, resume=True))
    a, b, c = weights(first), weights(second), weights(resumed)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert [k for k in a if not torch.equal(a[k], c[k])] == []
