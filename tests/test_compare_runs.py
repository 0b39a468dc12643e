from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from eval.compare_runs import draw_runs, load_runs
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


def test_compare_runs_reads_published_records_and_tells_seeds_apart(tmp_path, capsys):
    # results/cvae-s0.* is a committed record whose run directory is gone; a second record of
    # the same variant, another seed, must get a label of its own.
    results = Path(__file__).resolve().parents[1] / "results"
    for seed in (0, 1):
        for suffix in ("config.json", "metrics.ndjson", "summary.json"):
            shutil.copyfile(results / f"cvae-s0.{suffix}", tmp_path / f"cvae-s{seed}.{suffix}")
    config = json.loads((tmp_path / "cvae-s1.config.json").read_text())
    config["train"]["seed"] = 1
    (tmp_path / "cvae-s1.config.json").write_text(json.dumps(config))
    out = tmp_path / "kl.png"
    compare_main([str(tmp_path / "cvae-s0"), str(tmp_path / "cvae-s1"), "--out", str(out)])
    assert out.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "| cvae, seed 0 | 32248 | 299.2 | 61.86 (28000) |" in printed
    assert "| cvae, seed 1 | 32248 | 299.2 | 61.86 (28000) |" in printed


def test_compare_runs_names_a_missing_record(tmp_path):
    with pytest.raises(SystemExit, match="cvae-s9.metrics.ndjson: missing"):
        compare_main([str(tmp_path / "cvae-s9"), "--out", str(tmp_path / "kl.png")])


def test_kl_panels_are_log_scaled_and_a_star_marks_the_kept_checkpoint(tmp_path):
    # cvae-s0 kept step 28,000 (valid KL 0.289, -ELBO 61.86) once its KL had settled; a run
    # still training (no summary) has no star.
    results = Path(__file__).resolve().parents[1] / "results"
    for suffix in ("config.json", "metrics.ndjson"):
        shutil.copyfile(results / f"cvae-s0.{suffix}", tmp_path / f"training.{suffix}")
    runs = [results / "cvae-s0", tmp_path / "training"]
    fig = draw_runs(*load_runs(runs))
    axes = fig.axes
    assert [ax.get_yscale() for ax in axes] == ["log", "log", "log", "linear"]
    stars = [
        (ax.get_title(), line.get_xdata().tolist(), line.get_ydata().tolist())
        for ax in axes
        for line in ax.get_lines()
        if line.get_marker() == "*"
    ]
    assert stars == [
        ("KL(q||p), valid (nats)", [28000], [0.2893887802003103]),
        ("reconstruction perplexity, valid", [28000], [91.13019091125142]),
        ("-ELBO per example, valid (nats)", [28000], [61.861193521393545]),
    ]
