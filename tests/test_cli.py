"""The four command lines (model/cli.py): the same conventions, help on every option."""

from __future__ import annotations

import functools
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

COMMANDS = ("training.prepare", "training.switchboard", "eval.switchboard", "service")


@functools.cache
def help_text(module: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def option_entries(text: str) -> dict[str, str]:
    """``--option``: its help text, from the ``options:`` sections of argparse's help."""
    body = text.split("\n\n", 1)[1]
    entries: dict[str, str] = {}
    current = None
    for line in body.splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            parts = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            entries[current] = parts[1] if len(parts) > 1 else ""
        elif current and line.startswith("    "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


@pytest.mark.slow
@pytest.mark.parametrize("module", COMMANDS)
def test_help_names_the_module_and_explains_every_option(module):
    text = help_text(module)
    assert text.startswith(f"usage: python -m {module} ")
    entries = option_entries(text)
    entries.pop("-h")
    assert len(entries) >= 8, entries
    for option, explanation in entries.items():
        words = explanation.replace("(required)", "")
        words = re.sub(r"\(default: [^)]*\)?", "", words)
        assert re.search(r"[a-z]{3}", words), f"{module} {option}: no help ({explanation!r})"
        # the default written once
        assert explanation.count("(default:") <= 1, (option, explanation)
    # every --option of the usage line is explained
    for option in re.findall(r"\[(--[\w.-]+)", text.split("\n\n")[0]):
        assert option in entries, option
    assert "``" not in text and ":mod:" not in text  # plain text, not reStructuredText


def test_boolean_options_are_flag_pairs():
    for module in COMMANDS:
        text = help_text(module)
        for flag in re.findall(r"\[--([\w-]+) \| --no-", text):
            assert f"--no-{flag}]" in text
    assert "--resume | --no-resume" in help_text("training.switchboard")


def test_training_model_options():
    text = help_text("training.switchboard")
    assert "--variant {cvae,cvae-bow,bn-cvae}" in text and "--preset {paper,cpu,tiny}" in text
    assert "--model.bn-gamma" in text and "--model.dropout" in text
    assert "--model.variant" not in text and "--model.vocab-size" not in text
    assert "--model.embed-dim" in text and "paper 200, cpu 128" in " ".join(text.split())


def test_bad_option_values_are_one_line_errors_with_code_2():
    from training.switchboard import main

    for argv in (["--preset", "huge"], ["--model.bn-gamma", "x"], ["--model.variant", "cvae"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2


def test_environment_sets_a_service_option(tmp_path, capsys):
    from service.config import command_line

    env = {"BNCVAE_PORT": "9123", "BNCVAE_BATCHING": "false", "BNCVAE_MAX_WAIT_MS": "1.5"}
    args = command_line([], env)
    assert (args.values["port"], args.values["batching"], args.values["max_wait_ms"]) == (
        9123,
        False,
        1.5,
    )
    assert command_line(["--port", "9000"], env).values["port"] == 9000  # the CLI wins
    assert command_line([], {}).values["port"] == 8000
    with pytest.raises(SystemExit) as e:
        command_line([], {"BNCVAE_PORT": "eighty"})
    assert e.value.code == 2
    assert "BNCVAE_PORT" in capsys.readouterr().err


def test_environment_reaches_the_service_config(tmp_path):
    from service.config import ServiceConfig

    env = {"BNCVAE_CHECKPOINT": str(tmp_path), "BNCVAE_QUEUE_SIZE": "7", "BNCVAE_DEVICE": "cpu"}
    config = ServiceConfig.from_args([], env)
    assert (config.checkpoint, config.queue_size, config.device) == (tmp_path.resolve(), 7, "cpu")


@pytest.mark.parametrize("module", COMMANDS)
def test_without_the_dependencies_each_command_names_the_install_command(module):
    # python -S: no site-packages, as the system's python3 outside the virtual environment
    proc = subprocess.run(
        [sys.executable, "-S", "-m", module, "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    install = "make serve" if module == "service" else "make setup"
    assert line.startswith(f"python -m {module}: error: torch, ")
    assert f"run `{install}` in the repository" in line
