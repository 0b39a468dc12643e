"""Writing files and directories so that a reader never sees half of one, and saying in one line
what went wrong when the disk or the permissions refuse.

A file is written into a temporary sibling and renamed over its path (:func:`atomic_path`; an
atomic replace on POSIX): run configs, metrics, training states and plots. A checkpoint is a
directory, written whole into a temporary sibling and swapped in by :func:`replace_directory`;
a prepared corpus is staged the same way and moved into place (training/prepare.py).
A kill leaves at most a temporary ``.<name>.*`` beside the target, which
:func:`remove_temporaries` deletes when the run starts again.

And paths as committed results hold them: relative to the repository (:func:`repo_relative`),
never a machine's absolute paths."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The sibling that keeps the previous directory while :func:`replace_directory` swaps without
# RENAME_EXCHANGE (see there).
OLD_SUFFIX = ".old"

log = logging.getLogger(__name__)


def file_mode() -> int:
    """The permissions a plain ``open(path, "w")`` would give (``mkstemp`` makes files 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_path(path: str | Path) -> None:
    """Flush a written file (or a directory's entries) to the disk, so that a rename that
    publishes it cannot outlive its content after a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path`` for the block to write; renamed over ``path`` if the
    block ends without an error, else removed. It keeps ``path``'s extension (matplotlib picks
    the image format by it). An error while writing is an OSError naming ``path``."""
    path = Path(path)
    with naming(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
        os.close(fd)
    try:
        with naming(path):
            yield Path(tmp)
            os.chmod(tmp, file_mode())
            fsync_path(tmp)
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def append_line(path: str | Path, line: str) -> None:
    """Append ``line`` and a newline to ``path``; when the write fails (a full disk), the file
    is cut back to what it held, so that no half line stays behind."""
    data = (line + "\n").encode("utf-8")
    with naming(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:
                os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)


# --- directories ----------------------------------------------------------------------------

_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system or
    the file system has no such call."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_cwd = -100  # AT_FDCWD
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def old_sibling(directory: Path) -> Path:
    return directory.with_name(f".{directory.name}{OLD_SUFFIX}")


def replace_directory(new: Path, directory: Path) -> None:
    """Put the complete directory ``new`` (a sibling) in the place of ``directory``.

    A reader must find a complete ``directory`` whatever moment a kill strikes. On Linux the two
    are swapped by one atomic RENAME_EXCHANGE, after which ``new`` holds the previous directory
    and is deleted: ``directory`` never stops existing. Where the file system cannot exchange,
    ``directory`` is renamed to ``.<name>.old`` and ``new`` into its place: a kill between the
    two renames leaves only ``.<name>.old``, which readers fall back to
    (:func:`existing_directory`) and the next writer renames back (:func:`restore_directory`).
    """
    restore_directory(directory)
    for path in (new, *new.rglob("*")):
        fsync_path(path)
    if not directory.exists():
        os.rename(new, directory)
    elif _exchange(new, directory):
        shutil.rmtree(new, ignore_errors=True)  # the previous directory
    else:
        old = old_sibling(directory)
        shutil.rmtree(old, ignore_errors=True)
        os.rename(directory, old)
        os.rename(new, directory)
        shutil.rmtree(old, ignore_errors=True)
    fsync_path(directory.parent)


def restore_directory(directory: Path) -> None:
    """Rename ``.<name>.old`` back to ``directory`` when a kill took ``directory`` away in the
    middle of :func:`replace_directory`'s fallback (writers only: a reader would race a save)."""
    old = old_sibling(directory)
    if not directory.exists() and old.is_dir():
        os.rename(old, directory)
        log.warning("%s: restored from %s (a save was interrupted)", directory, old.name)


def existing_directory(directory: Path) -> Path:
    """``directory``, or the ``.<name>.old`` a save interrupted between its renames left (see
    :func:`replace_directory`), which holds the previous complete directory."""
    old = old_sibling(directory)
    if not directory.exists() and old.is_dir():
        log.warning("%s: missing (a save was interrupted); reading %s", directory, old.name)
        return old
    return directory


def remove_temporaries(directory: Path, names: Iterable[str]) -> list[Path]:
    """Delete the ``.<name>.*`` temporaries that kills during :func:`atomic_path` or
    :func:`replace_directory` left in ``directory`` (restoring a ``.<name>.old`` first)."""
    removed = []
    for name in names:
        restore_directory(directory / name)
        for path in directory.glob(f".{name}.*"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info("removed %d temporaries an interrupted save left in %s", len(removed), directory)
    return removed


# --- errors in one line ---------------------------------------------------------------------

_REASONS = {
    errno.ENOSPC: "no space left on the device (the disk is full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EISDIR: "is a directory, not a file",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a path component is not a directory",
    errno.EFBIG: "file too large",
    errno.EIO: "input/output error (a failing disk?)",
}


def os_error_reason(error: OSError) -> str:
    return _REASONS.get(error.errno or 0, error.strerror or str(error))


def os_error_line(error: OSError) -> str:
    """``PATH: reason``: what the user needs to know of an OSError, in one line."""
    reason = os_error_reason(error)
    return f"{error.filename}: {reason}" if error.filename else reason


@contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Make an OSError raised inside name ``path``: a failed ``write()`` names no file, and one
    on the temporary ``.<name>.*`` of :func:`atomic_path` is about ``path`` for the user."""
    try:
        yield
    except OSError as e:
        temporary = f".{Path(path).name}."
        unnamed = e.filename is None or Path(str(e.filename)).name.startswith(temporary)
        if unnamed and e.errno is not None:
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        raise


def _kind(mode: int) -> str:
    kinds = [(stat.S_ISREG, "a file"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device")]  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def file_kind(path: str | Path) -> str:
    """What is at ``path``, in words: "missing", "a directory", "a FIFO", ... "a file"."""
    try:
        return _kind(os.stat(path).st_mode)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return os_error_reason(e)


def read_bytes(path: str | Path) -> bytes:
    """``path``'s bytes, or an OSError whose message says truthfully why not (a directory, a
    FIFO, no permission), with the path."""
    with naming(path):
        kind = _kind(os.stat(path).st_mode)
        if kind == "a directory":
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if kind != "a file":  # reading a FIFO would block, a device never end
            raise OSError(errno.EINVAL, f"{kind}, not a regular file", str(path))
        return Path(path).read_bytes()


# --- paths in results -----------------------------------------------------------------------


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
