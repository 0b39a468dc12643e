"""Writing a file so that a reader never sees half of it: into a temporary file beside it, then
renamed over it (an atomic replace on POSIX). Checkpoints, training states, prepared corpora,
run configs and plots all go through :func:`atomic_path`.

And paths as committed results hold them: relative to the repository (:func:`repo_relative`),
never a machine's absolute paths."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def file_mode() -> int:
    """The permissions a plain ``open(path, "w")`` would give (``mkstemp`` makes files 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path`` for the block to write; renamed over ``path`` if the
    block ends without an error, else removed. It keeps ``path``'s extension (matplotlib picks
    the image format by it)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def repo_relative(path: str | Path | None) -> str | None:
    """``path`` relative to the repository (results are committed; no machine's own paths)."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        return str(path)  # a name such as a package's, not a path
    return os.path.relpath(p.resolve(), PROJECT_ROOT)


def repo_relative_paths(value):
    """``value`` (JSON-like: dicts, lists, strings) with every absolute path in it made relative
    to the repository, e.g. a run's config or a checkpoint's metadata before it is committed."""
    if isinstance(value, dict):
        return {k: repo_relative_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [repo_relative_paths(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return repo_relative(value)
    return value
