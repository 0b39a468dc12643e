from __future__ import annotations

import pytest

from eval.compare_runs import main as compare_main
from training.switchboard import main as train_main


@pytest.mark.slow
def test_compare_runs_plots_every_run_and_reports_times(synthetic_prepared, tmp_path, capsys):
    runs = []
    for variant in ("cvae", "bn-cvae"):
        run = tmp_path / variant
        train_main(["--data", str(synthetic_prepared), "--out", str(run), "--variant", variant,
                    "--preset", "tiny", "--max-steps", "20", "--eval-every", "10",
                    "--log-every", "5", "--threads", "1"])  # fmt: skip
        runs.append(str(run))
    out = tmp_path / "img" / "curves.png"
    compare_main([*runs, "--out", str(out)])
    assert out.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "| cvae | 20 |" in printed and "| bn-cvae (γ=0.6) | 20 |" in printed
