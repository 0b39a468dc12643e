"""The checkpoint format: a directory, like Hugging Face's ``save_pretrained``.

    config.json        {"format": "bncvae-checkpoint", "version": 1, "model": ModelConfig, "metadata": {...}}
    vocab.json         the Vocabulary
    model.safetensors  the weights (float32 or float16; loaded as float32)

Loading never unpickles anything. A missing, corrupt or mismatched file raises
:class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.config import ModelConfig
from model.cvae import DialogCVAE
from model.text import LEGACY_TOKENIZER
from model.vocab import Vocabulary

FORMAT, VERSION = "bncvae-checkpoint", 1
CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE = "config.json", "vocab.json", "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or does not match the others."""


def save_pretrained(
    model: DialogCVAE,
    vocab: Vocabulary,
    directory: str | Path,
    metadata: dict | None = None,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Write the checkpoint directory atomically: into a temporary sibling, then rename."""
    directory = Path(directory)
    if len(vocab) != model.config.vocab_size:
        raise ValueError(
            f"vocabulary has {len(vocab)} words, model expects {model.config.vocab_size}"
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint is read by other users (Docker)
    try:
        config = {
            "format": FORMAT,
            "version": VERSION,
            "model": model.config.to_dict(),
            "metadata": metadata or {},
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        vocab.save(tmp / VOCAB_FILE)
        state = {
            k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
            for k, v in model.state_dict().items()
        }
        # The embedding is shared by the utterance encoder and the decoder; store it once.
        state = {k: v for k, v in state.items() if k in _canonical_keys(model)}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        for f in tmp.iterdir():
            f.chmod(0o644)  # readable by other users, e.g. the Docker image's non-root user
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _canonical_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys with tensors shared between modules listed once (the first name)."""
    seen: dict[int, str] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        seen.setdefault(id(tensor), name)
    return set(seen.values())


def load_config(directory: str | Path) -> tuple[ModelConfig, dict]:
    path = Path(directory) / CONFIG_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: missing (is {directory} a checkpoint directory?)") from e
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} config")
    if raw.get("version") != VERSION:
        raise CheckpointError(f"{path}: unsupported version {raw.get('version')!r}")
    if not isinstance(raw.get("model"), dict):
        raise CheckpointError(f'{path}: bad model config: "model" must be an object')
    try:
        model = dict(raw["model"])
        # Checkpoints written before the tokenizer was recorded were trained on plain words.
        model.setdefault("tokenizer", LEGACY_TOKENIZER)
        return ModelConfig.from_dict(model), raw.get("metadata", {})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad model config: {e}") from e


def load_pretrained(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[DialogCVAE, Vocabulary]:
    """Load a checkpoint directory; the model is returned in eval mode on ``device``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    config, _ = load_config(directory)
    try:
        vocab = Vocabulary.load(directory / VOCAB_FILE)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    if len(vocab) != config.vocab_size:
        raise CheckpointError(
            f"{directory / VOCAB_FILE}: {len(vocab)} words, but {directory / CONFIG_FILE} "
            f"says vocab_size={config.vocab_size}"
        )
    weights = directory / WEIGHTS_FILE
    try:
        state = load_file(str(weights))
    except (OSError, SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{weights}: cannot read weights: {e}") from e
    model = DialogCVAE(config)
    expected = model.state_dict()
    shared = set(expected) - _canonical_keys(model)
    missing = sorted(set(expected) - set(state) - shared)
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: does not match {directory / CONFIG_FILE}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(
                f"{weights}: {k} has shape {tuple(v.shape)}, config implies {tuple(expected[k].shape)}"
            )
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{weights}: {k} has non-finite values")
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(state, strict=False)
    return model.to(device).eval(), vocab
