"""The checkpoint format: a directory, like Hugging Face's ``save_pretrained``.

    config.json        {"format": "bncvae-checkpoint", "version": 1, "model": ModelConfig,
                        "metadata": {...}, "sha256": {"vocab.json": ..., "model.safetensors": ...}}
    vocab.json         the Vocabulary
    model.safetensors  the weights (float32 or float16; loaded as float32)

Loading never unpickles anything. A missing, corrupt or mismatched file raises
:class:`CheckpointError` naming the file. The SHA-256 of each file, recorded at saving, is checked
at loading (``verify=False`` skips it), so that flipped bits inside the tensor data, which leave
the file's structure intact, are found too; a checkpoint saved before the hashes were recorded
loads with a warning.

Saving replaces the directory atomically (:func:`model.files.replace_directory`): whenever a kill
strikes, a reader finds the previous checkpoint or the new one, never none and never a mix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from model.config import ModelConfig
from model.cvae import DialogCVAE
from model.files import (
    atomic_write_text,
    existing_directory,
    file_kind,
    naming,
    os_error_reason,
    read_bytes,
    replace_directory,
)
from model.text import LEGACY_TOKENIZER
from model.timing import Phases
from model.vocab import Vocabulary

FORMAT, VERSION = "bncvae-checkpoint", 1
CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE = "config.json", "vocab.json", "model.safetensors"
HASHED_FILES = (VOCAB_FILE, WEIGHTS_FILE)  # config.json holds their hashes

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or does not match the others."""


def save_pretrained(
    model: DialogCVAE,
    vocab: Vocabulary,
    directory: str | Path,
    metadata: dict | None = None,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Write the checkpoint directory: whole into a temporary sibling, then swapped in
    atomically (:func:`model.files.replace_directory`). An OSError (a full disk, no permission)
    names the file and leaves the previous checkpoint as it was."""
    directory = Path(directory)
    if len(vocab) != model.config.vocab_size:
        raise ValueError(
            f"vocabulary has {len(vocab)} words, model expects {model.config.vocab_size}"
        )
    with naming(directory):
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint is read by other users (Docker)
        state = {
            k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
            for k, v in model.state_dict().items()
        }
        # The embedding is shared by the utterance encoder and the decoder; store it once.
        state = {k: v for k, v in state.items() if k in _canonical_keys(model)}
        files = {
            VOCAB_FILE: vocab.to_json().encode("utf-8"),
            WEIGHTS_FILE: save_safetensors(state, metadata={"format": FORMAT}),
        }
        for name, data in files.items():
            with naming(tmp / name):
                (tmp / name).write_bytes(data)
        config = {
            "format": FORMAT,
            "version": VERSION,
            "model": model.config.to_dict(),
            "metadata": metadata or {},
            "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        }
        with naming(tmp / CONFIG_FILE):
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        for f in tmp.iterdir():
            f.chmod(0o644)  # readable by other users, e.g. the Docker image's non-root user
        with naming(directory):
            replace_directory(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_hashes(directory: Path) -> dict[str, str]:
    """The SHA-256 of each of the checkpoint's files but config.json (which holds them)."""
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
            for name in HASHED_FILES}  # fmt: skip


def record_hashes(directory: str | Path) -> None:
    """Add the files' hashes to the ``config.json`` of a checkpoint saved before they were
    recorded (rewriting config.json only), after checking that it loads."""
    directory = Path(directory)
    load_pretrained(directory, verify=False)
    path = directory / CONFIG_FILE
    raw = json.loads(path.read_text())
    raw["sha256"] = file_hashes(directory)
    atomic_write_text(path, json.dumps(raw, indent=2) + "\n")


def _canonical_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys with tensors shared between modules listed once (the first name)."""
    seen: dict[int, str] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        seen.setdefault(id(tensor), name)
    return set(seen.values())


def load_config(directory: str | Path) -> tuple[ModelConfig, dict]:
    config, metadata, _ = _read_config(existing_directory(Path(directory)))
    return config, metadata


def _read_config(directory: Path) -> tuple[ModelConfig, dict, dict | None]:
    """config.json's model config, metadata and file hashes (None: saved before hashes)."""
    path = directory / CONFIG_FILE
    try:
        raw = json.loads(read_bytes(path))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: missing (is {directory} a checkpoint directory?)") from e
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {os_error_reason(e)}") from e
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} config")
    if raw.get("version") != VERSION:
        raise CheckpointError(f"{path}: unsupported version {raw.get('version')!r}")
    if not isinstance(raw.get("model"), dict):
        raise CheckpointError(f'{path}: bad model config: "model" must be an object')
    hashes = raw.get("sha256")
    if hashes is not None and not (
        isinstance(hashes, dict) and all(isinstance(hashes.get(f), str) for f in HASHED_FILES)
    ):
        raise CheckpointError(f'{path}: "sha256" must give the hash of each of {HASHED_FILES}')
    try:
        model = dict(raw["model"])
        # Checkpoints written before the tokenizer was recorded were trained on plain words.
        model.setdefault("tokenizer", LEGACY_TOKENIZER)
        config = ModelConfig.from_dict(model)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad model config: {e}") from e
    metadata = raw.get("metadata", {})
    if not isinstance(metadata, dict):
        raise CheckpointError(
            f'{path}: "metadata" must be an object, got {type(metadata).__name__}'
        )
    _check_metadata(path, metadata, "metadata")
    return config, metadata, hashes


def _check_metadata(path: Path, value, where: str) -> None:
    """Metadata is shown by the service (``/info``) as JSON: strings, finite numbers, booleans,
    null, lists and objects of them, nothing else (Python's JSON reader also takes NaN)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_metadata(path, v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_metadata(path, v, f"{where}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise CheckpointError(f"{path}: {where}: got {value}; allowed: a finite number")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise CheckpointError(f"{path}: {where}: a {type(value).__name__}; allowed: JSON values")


def _check_hash(path: Path, data: bytes, hashes: dict | None) -> None:
    if hashes is not None and hashlib.sha256(data).hexdigest() != hashes[path.name]:
        raise CheckpointError(
            f"{path}: SHA-256 differs from the one in {path.parent / CONFIG_FILE} "
            "(file changed or corrupt)"
        )


def _read_file(path: Path, what: str) -> bytes:
    try:
        return read_bytes(path)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: missing") from e
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read {what}: {os_error_reason(e)}") from e


def load_pretrained(
    directory: str | Path,
    device: str | torch.device = "cpu",
    verify: bool = True,
    phases: Phases | None = None,
) -> tuple[DialogCVAE, Vocabulary]:
    """Load a checkpoint directory; the model is returned in eval mode on ``device``.

    ``verify``: check each file against the SHA-256 that config.json records. ``phases``, if
    given, gets the seconds of each step: ``read`` (the files), ``verify`` (their hashes),
    ``build`` (the model's modules), ``weights`` (parsed, checked and put into the model)."""
    phases = phases or Phases()
    directory = existing_directory(Path(directory))
    kind = file_kind(directory)
    if kind == "missing":
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    if kind != "a directory":
        raise CheckpointError(f"{directory}: {kind}, not a checkpoint directory")
    config, _, hashes = _read_config(directory)
    if not verify:
        hashes = None
    elif hashes is None:
        log.warning("%s: no SHA-256 hashes (saved before they were recorded); files not verified",
                    directory / CONFIG_FILE)  # fmt: skip
    vocab_path = directory / VOCAB_FILE
    vocab_bytes = _read_file(vocab_path, "the vocabulary")
    phases.lap("read")
    _check_hash(vocab_path, vocab_bytes, hashes)
    phases.lap("verify")
    try:
        vocab = Vocabulary.from_json(vocab_bytes, vocab_path)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    if len(vocab) != config.vocab_size:
        raise CheckpointError(
            f"{directory / VOCAB_FILE}: {len(vocab)} words, but {directory / CONFIG_FILE} "
            f"says vocab_size={config.vocab_size}"
        )
    weights = directory / WEIGHTS_FILE
    data = _read_file(weights, "weights")
    phases.lap("read")
    _check_hash(weights, data, hashes)
    phases.lap("verify")
    try:
        state = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{weights}: cannot read weights: {e}") from e
    phases.lap("weights")
    model = DialogCVAE(config)
    phases.lap("build")
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
    # One copy of each tensor (the parsed ones view the file's bytes), float16 made float32 on
    # the way, which load_state_dict(assign=True) makes the model's own: no second copy into
    # the initial parameters. The shared embedding, one module, gets its one tensor.
    state = {
        k: v.to(torch.float32 if v.is_floating_point() else v.dtype, copy=True)
        for k, v in state.items()
    }
    model.load_state_dict(state, strict=False, assign=True)
    model = model.to(device).eval()
    phases.lap("weights")
    return model, vocab
