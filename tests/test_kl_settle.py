"""The stopping rule for runs whose KL must settle (--kl-settle-window, --kl-settle-tolerance)."""

from __future__ import annotations

import json

import pytest

import training.switchboard as switchboard
from training.switchboard import KL_SETTLED_NATS, kl_settled, main, stopping_update

TINY = ["--preset", "tiny", "--threads", "1", "--segment-size", "4", "--batch-segments", "4",
        "--kl-anneal-steps", "2", "--eval-every", "2", "--log-every", "2", "--patience", "2"]  # fmt: skip


def test_kl_settled_by_hand():
    assert kl_settled([9.0, 1.0], window=0, tolerance=0.05)  # no window: always
    assert not kl_settled([0.5, 0.5], window=2, tolerance=0.05)  # too few validations
    assert not kl_settled([1.0, 0.9, 0.8], window=2, tolerance=0.05)  # range 0.2 > 0.05 * 0.9
    assert kl_settled([3.0, 0.50, 0.49, 0.505], window=2, tolerance=0.05)  # 0.015 <= 0.0249
    assert not kl_settled([0.50, 0.47, 0.505], window=2, tolerance=0.05)  # 0.035 > 0.0245
    # near zero the absolute floor decides: a range of 0.008 nats is settled
    assert KL_SETTLED_NATS == 0.01
    assert kl_settled([0.050, 0.045, 0.042], window=2, tolerance=0.05)
    assert not kl_settled([0.060, 0.045, 0.042], window=2, tolerance=0.05)


KLS = [4.0, 2.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]


@pytest.fixture
def scripted_validation(monkeypatch):
    """validate() gives a -ELBO that never improves after the first validation and a KL that
    halves three times, then stays at 0.5."""
    calls = []

    def fake(model, batches, device, seed):
        kl = KLS[len(calls)]
        calls.append(kl)
        return {"valid_loss": 3.0, "valid_nll": 3.0 - kl, "valid_kl": kl,
                "valid_prior_kl": 0.0, "valid_ppl": 10.0, "valid_elbo_ppl": 12.0}  # fmt: skip

    monkeypatch.setattr(switchboard, "validate", fake)
    return calls


def test_without_a_window_patience_stops_while_the_kl_still_falls(
    synthetic_prepared, tmp_path, scripted_validation
):
    run = tmp_path / "run"
    assert main(["--data", str(synthetic_prepared), "--out", str(run), *TINY]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_early"] and summary["step"] == 6  # validations at 4 and 6 count
    assert not (run / "best-before-kl-settled").exists()


def test_patience_counts_once_the_kl_has_settled_and_resume_keeps_the_rule(
    synthetic_prepared, tmp_path, scripted_validation
):
    run = tmp_path / "run"
    argv = ["--data", str(synthetic_prepared), "--out", str(run), *TINY]
    settle = ["--kl-settle-window", "2", "--kl-settle-tolerance", "0.05"]
    assert main([*argv, *settle, "--max-steps", "8"]) == 0
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["kl_settle_window"] == 2 and saved["kl_settle_tolerance"] == 0.05
    # resumed without the flags: the run's own rule (config.json) goes on
    assert main([*argv, "--resume", "--max-steps", "100"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    # KL 4, 2, 1, 0.5, 0.5, 0.5 at steps 2..12: settled (0.5, 0.5, 0.5) first at step 12,
    # which is then the best (the earlier ones compete no more); the validations at 14 and 16
    # are the two without improvement that count
    assert summary["kl_settled_step"] == 12 and summary["best_step"] == 12
    assert summary["best_step_before_kl_settled"] == 2
    assert summary["stopped_early"] and summary["step"] == 16
    assert "once the valid KL had settled" in summary["stop_reason"]
    assert len(scripted_validation) == 8
    best = json.loads((run / "best" / "config.json").read_text())["metadata"]
    assert best["step"] == 12 and best["valid_kl"] == 0.5
    # what plain early stopping would have kept (the first validation: -ELBO never improved
    # after it) is kept aside, made by the resumed process
    aside = json.loads((run / "best-before-kl-settled" / "config.json").read_text())["metadata"]
    assert aside["step"] == 2 and aside["valid_kl"] == 4.0


def test_bad_settle_settings_are_refused(synthetic_prepared, tmp_path, capsys):
    argv = ["--data", str(synthetic_prepared), "--out", str(tmp_path / "r"), *TINY]
    with pytest.raises(SystemExit) as e:
        main([*argv, "--kl-settle-window", "-1"])
    assert e.value.code == 2 and "--kl-settle-window" in capsys.readouterr().err
    # the same check for a TrainConfig built in code
    with pytest.raises(ValueError, match="kl_settle_tolerance"):
        switchboard.TrainConfig(kl_settle_tolerance=-0.1)


def test_once_settled_every_later_validation_counts_even_when_the_kl_moves_again():
    """Settled at the 6th validation (0.5, 0.5, 0.5); the KL then moves by 20% (0.6), which
    breaks the window, and the -ELBO never improves: patience 2 stops at the 8th validation."""
    cfg = switchboard.TrainConfig(
        kl_settle_window=2, kl_settle_tolerance=0.05, kl_anneal_steps=0, patience=2
    )
    valid_kls = [4.0, 2.0, 1.0, 0.5, 0.5, 0.5, 0.6, 0.5, 0.5]
    valid_losses = [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 4.5, 4.2, 4.1]
    progress, kls, new_best = switchboard.Progress(), [], []
    for step, (kl, loss) in enumerate(zip(valid_kls, valid_losses, strict=True), 1):
        progress.step = step
        kls.append(kl)
        new_best.append(stopping_update(progress, cfg, loss, kls))
        if progress.bad_rounds >= cfg.patience:
            break
    assert progress.kl_settled_step == 6 and progress.best_step == 6
    assert progress.best_step_before_kl_settled == 5
    assert new_best == [True, True, True, True, True, True, False, False]
    assert progress.step == 8 and progress.bad_rounds == 2
    assert not kl_settled(kls, 2, 0.05)  # the last window itself is not settled
