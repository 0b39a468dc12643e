"""A checkpoint whose config.json declares what the model cannot serve is refused when it loads,
with one line naming the file, the field and the allowed range."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.checkpoint import CheckpointError, load_pretrained, save_pretrained
from model.config import ModelConfig
from model.cvae import DialogCVAE
from model.vocab import Vocabulary
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    vocab = Vocabulary.build([["do", "you", "have", "pets"], ["yes", "a", "dog"]])
    torch.manual_seed(0)
    model = DialogCVAE(ModelConfig.preset("tiny", vocab_size=len(vocab)))
    directory = tmp_path_factory.mktemp("ck") / "tiny"
    save_pretrained(model, vocab, directory, metadata={"note": "for tests"})
    return directory


def edited(checkpoint: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "edited"
    copy.mkdir()
    for f in checkpoint.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    config = json.loads((copy / "config.json").read_text())
    edit(config)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def model_field(name, value):
    return lambda c: c["model"].__setitem__(name, value)


CASES = [
    (
        model_field("max_context", 100_000),
        "bad model config: max_context: got 100000; allowed: an integer >= 1 and <= 100",
    ),
    (
        model_field("max_utt_len", 10**9),
        "bad model config: max_utt_len: got 1000000000; allowed: an integer >= 1 and <= 500",
    ),
    (model_field("max_context", "10"), 'max_context: got "10"; allowed: an integer >= 1'),
    (model_field("bn_gamma", -1), "bn_gamma: got -1; allowed: a finite number > 0"),
    (model_field("extra", 1), "unknown model config fields ['extra']"),
    (lambda c: c.__setitem__("metadata", [1, 2]), '"metadata" must be an object, got list'),
    (lambda c: c.__setitem__("metadata", "note"), '"metadata" must be an object, got str'),
    (
        lambda c: c.__setitem__("metadata", {"best": {"valid_loss": float("nan")}}),
        "metadata.best.valid_loss: got nan; allowed: a finite number",
    ),
]


@pytest.mark.parametrize("edit, message", CASES)
def test_refused_at_load_naming_field_and_range(checkpoint, tmp_path, edit, message):
    bad = edited(checkpoint, tmp_path, edit)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(bad)
    text = str(e.value)
    assert text.startswith(f"{bad / 'config.json'}: ") and message in text
    assert "\n" not in text


@pytest.mark.slow
def test_the_service_exits_with_one_line(checkpoint, tmp_path):
    bad = edited(checkpoint, tmp_path, CASES[0][0])
    proc = subprocess.run(
        [sys.executable, "-m", "service", "--checkpoint", str(bad), "--port", "18431"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert any("max_context: got 100000; allowed: an integer >= 1 and <= 100" in e for e in errors)
