"""Every bad flag, environment variable and settings file a user can type is refused before
anything runs: exit code 2 and one line naming the flag or field, the value and what is allowed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.conftest import ROOT

TRAIN_FLAGS = [
    (["--eval-every", "0"], "--eval-every: got 0; allowed: an integer >= 1"),
    (["--log-every", "0"], "--log-every: got 0; allowed: an integer >= 1"),
    (["--save-every", "0"], "--save-every: got 0; allowed: an integer >= 1"),
    (["--batch-segments", "0"], "--batch-segments: got 0; allowed: an integer >= 1"),
    (["--segment-size", "0"], "--segment-size: got 0; allowed: an integer >= 1"),
    (["--epochs", "4.5"], "--epochs: got 4.5; allowed: an integer >= 1"),
    (["--lr", "-1"], "--lr: got -1; allowed: a finite number > 0"),
    (["--lr", "nan"], "--lr: got nan; allowed: a finite number > 0"),
    (["--lr", "inf"], "--lr: got inf; allowed: a finite number > 0"),
    (["--lr", "fast"], "--lr: got fast; allowed: a finite number > 0"),
    (["--variant", "vae"], "--variant: got vae; allowed: one of cvae, cvae-bow, bn-cvae"),
    (
        ["--model.latent-dim", "-1"],
        "--model.latent-dim: got -1; allowed: an integer >= 1 and <= 1000000",
    ),
    (
        ["--model.max-context", "0"],
        "--model.max-context: got 0; allowed: an integer >= 1 and <= 100",
    ),
    (["--model.bn-gamma", "0"], "--model.bn-gamma: got 0; allowed: a finite number > 0"),
    (["--model.dropout", "1"], "--model.dropout: got 1; allowed: a finite number >= 0 and < 1"),
    (
        ["--no-such-flag", "1"],
        "unrecognized arguments: --no-such-flag 1 (see python -m training.switchboard --help)",
    ),
    (
        ["--eval-every"],
        "argument --eval-every: expected one argument (see python -m training.switchboard --help)",
    ),
]


def run_main(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    "argv, message", TRAIN_FLAGS, ids=lambda a: " ".join(a) if isinstance(a, list) else ""
)
def test_training_flags(argv, message, capsys, tmp_path):
    from training.switchboard import main

    line = run_main(main, [*argv, "--out", str(tmp_path / "run")], capsys)
    assert line == f"python -m training.switchboard: error: {message}"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--port", "70000"], "--port: got 70000; allowed: an integer >= 0 and <= 65535"),
        (["--queue-size", "0"], "--queue-size: got 0; allowed: an integer >= 1"),
        (["--timeout-s", "nan"], "--timeout-s: got nan; allowed: a finite number > 0"),
        (["--device", "tpu"], "--device: got tpu; allowed: one of auto, cpu, cuda"),
    ],
)
def test_service_flags(argv, message, capsys):
    from service.__main__ import main

    assert run_main(main, argv, capsys) == f"python -m service: error: {message}"


def test_service_environment_variable_is_named(capsys, monkeypatch):
    from service.__main__ import main

    monkeypatch.setenv("BNCVAE_MAX_BATCH_SIZE", "0")
    line = run_main(main, [], capsys)
    assert (
        line == "python -m service: error: BNCVAE_MAX_BATCH_SIZE: got 0; allowed: an integer >= 1"
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--samples", "0"], "--samples: got 0; allowed: an integer >= 1 or none"),
        (["--top-p", "1.5"], "--top-p: got 1.5; allowed: a finite number > 0 and <= 1"),
        (["--limit", "0"], "--limit: got 0; allowed: an integer >= 1 or none"),
    ],
)
def test_eval_flags(argv, message, capsys):
    from eval.switchboard import main

    line = run_main(main, ["--checkpoint", "x", *argv], capsys)
    assert line == f"python -m eval.switchboard: error: {message}"


def test_prepare_flag(capsys, tmp_path):
    from training.prepare import main

    line = run_main(main, ["--out", str(tmp_path / "p"), "--max-words", "0"], capsys)
    assert line == "python -m training.prepare: error: --max-words: got 0; allowed: an integer >= 1"
    assert not (tmp_path / "p").exists()


def recipe(tmp_path: Path, **train) -> Path:
    settings = json.loads((ROOT / "recipes" / "cvae.json").read_text())
    settings["train"].update(train)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(settings))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        ({"lr": "fast"}, 'train.lr: got "fast"; allowed: a finite number > 0'),
        ({"epochs": "4"}, 'train.epochs: got "4"; allowed: an integer >= 1'),
        ({"epochs": 0}, "train.epochs: got 0; allowed: an integer >= 1"),
        ({"speed": 3}, "train.speed: got 3; unknown field"),
    ],
)
def test_config_file_values(change, message, capsys, tmp_path):
    from training.switchboard import main

    path = recipe(tmp_path, **change)
    line = run_main(main, ["--config", str(path)], capsys)
    assert line == f"python -m training.switchboard: error: --config {path}: {message}"


@pytest.mark.parametrize("text", ["", "[1]", "{not json", '{"train": 3}', '{"other": {}}'])
def test_config_files_that_are_no_settings(text, capsys, tmp_path):
    from training.switchboard import main

    path = tmp_path / "c.json"
    path.write_text(text)
    line = run_main(main, ["--config", str(path)], capsys)
    assert line.startswith(f"python -m training.switchboard: error: --config {path}: ")


def test_missing_config_file(capsys, tmp_path):
    from training.switchboard import main

    line = run_main(main, ["--config", str(tmp_path / "none.json")], capsys)
    assert line.endswith(f"--config {tmp_path / 'none.json'}: no such file")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"lr": "fast"}, 'train.lr: got "fast"; allowed: a finite number > 0'),
        ({"epochs": "4"}, 'train.epochs: got "4"; allowed: an integer >= 1'),
        ({"speed": 3}, "train.speed: got 3; unknown field"),
    ],
)
def test_resume_with_a_bad_run_config_is_one_line(change, message, caplog, tmp_path):
    from training.switchboard import STATE_FILE, main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(recipe(tmp_path, **change).read_text())
    (run / STATE_FILE).write_bytes(b"")
    before = (run / "config.json").read_text()
    with caplog.at_level(logging.ERROR):
        assert main(["--resume", "--out", str(run)]) == 2
    assert [r.getMessage() for r in caplog.records] == [
        f"{run / 'config.json'}: {message}; cannot resume"
    ]
    assert (run / "config.json").read_text() == before
