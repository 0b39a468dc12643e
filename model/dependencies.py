"""What a command needs installed, checked before it imports any of it.

Run with a Python that lacks the project's packages (the system's ``python3`` instead of
``.venv/bin/python``), a command would die in a ``ModuleNotFoundError`` traceback; instead it says
in one line which install command to run. Each package's ``__init__`` calls :func:`require`.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

SERVE = "make serve"  # a .venv with the service's dependencies
DEVELOP = "make setup"  # a .venv with the training, evaluation and test dependencies too


def missing(modules: Sequence[str]) -> list[str]:
    """The top-level modules of ``modules`` that this Python cannot import (none is imported)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(modules: Sequence[str], install: str) -> None:
    """Exit with one line naming ``install`` when a module of ``modules`` is missing.

    Under ``python -m PACKAGE.MODULE`` it prints ``python -m ...: error: ...`` and exits 1; an
    ``import`` from other code gets a ModuleNotFoundError with the same message.
    """
    absent = missing(modules)
    if not absent:
        return
    message = (
        f"{', '.join(absent)} {'is' if len(absent) == 1 else 'are'} not installed for "
        f"{sys.executable}: run `{install}` in the repository, then use .venv/bin/python "
        "(or `source .venv/bin/activate` first)"
    )
    argv = getattr(sys, "orig_argv", [])
    if "-m" in argv[:-1] and sys.argv[:1] == ["-m"]:  # a package of `python -m` is loading
        print(f"python -m {argv[argv.index('-m') + 1]}: error: {message}", file=sys.stderr)
        raise SystemExit(1)
    raise ModuleNotFoundError(message)
