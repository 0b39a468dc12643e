"""docs/model-api.md, generated from the code: every public name of the model package with its
signature and docstring.

``python scripts/model_api.py`` rewrites the file; ``--check`` exits 1 when it is not what the
code gives now (tests/test_examples.py runs it), so the page cannot drift from the code.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "docs" / "model-api.md"
MODULES = (
    "model.text",
    "model.vocab",
    "model.batch",
    "model.config",
    "model.cvae",
    "model.decoding",
    "model.checkpoint",
    "model.files",
    "model.cli",
    "model.dependencies",
)
HEADER = """# The model package's Python API

Generated from the code by `python scripts/model_api.py` (a test fails when it is stale): every
public class, function and constant of `model/`, the package that training, evaluation and the
service import. `model/` imports none of them.
"""


def signature(obj) -> str:
    try:
        text = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"
    return text.replace(str(ROOT), ".")


def doc(obj) -> str:
    text = inspect.getdoc(obj) or ""
    return "\n".join(line.rstrip() for line in text.splitlines())


def public(module) -> list[tuple[str, object]]:
    names = []
    for name, obj in vars(module).items():
        if name.startswith("_") or inspect.ismodule(obj):  # (e.g. "import ... as F")
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if getattr(obj, "__module__", None) != module.__name__:
                continue
        elif not name.isupper():  # module constants are written in capitals
            continue
        names.append((name, obj))
    return names


def class_section(name: str, cls: type) -> list[str]:
    out = [f"### class `{name}{signature(cls)}`", ""]
    if doc(cls):
        out += [doc(cls), ""]
    if dataclasses.is_dataclass(cls):
        out.append("Fields:")
        out.append("")
        for f in dataclasses.fields(cls):
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", f.type)
            out.append(
                f"- `{f.name}: {kind}`"
                + (f": {f.metadata['help']}" if "help" in f.metadata else "")
            )
        out.append("")
    for attr, member in vars(cls).items():
        if attr.startswith("_") and attr != "__call__":
            continue
        if isinstance(member, (classmethod, staticmethod)):
            member = member.__func__
            prefix = "classmethod " if isinstance(vars(cls)[attr], classmethod) else "staticmethod "
        elif isinstance(member, property):
            out.append(
                f"- property `{attr}`" + (f": {doc(member).splitlines()[0]}" if doc(member) else "")
            )
            continue
        elif inspect.isfunction(member):
            prefix = ""
        else:
            continue
        out.append(f"- {prefix}`{attr}{signature(member)}`")
        if doc(member):
            out += ["", "  " + doc(member).replace("\n", "\n  ").replace("\n  \n", "\n\n"), ""]
    out.append("")
    return out


def render() -> str:
    lines = [HEADER]
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        lines += [f"## `{module_name}`", ""]
        first = doc(module).split("\n\n")[0]
        if first:
            lines += [first, ""]
        for name, obj in public(module):
            if inspect.isclass(obj):
                lines += class_section(name, obj)
            elif inspect.isfunction(obj):
                lines += [f"### `{name}{signature(obj)}`", ""]
                if doc(obj):
                    lines += [doc(obj), ""]
            else:
                # sets in sorted order: their repr follows the string hash, which varies per run
                # and paths relative to the checkout, which differs from one clone to the next
                if isinstance(obj, (set, frozenset)):
                    value = f"{{{', '.join(map(repr, sorted(obj)))}}}"
                elif isinstance(obj, Path):
                    value = f"Path({os.path.relpath(obj, ROOT)!r}) (in the checkout)"
                else:
                    value = repr(obj)
                if len(value) > 120:
                    value = value[:117] + "..."
                lines += [f"- `{name} = {value}`", ""]
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    text = render()
    current = OUT.read_text() if OUT.exists() else ""
    if text == current:
        print(f"{OUT.relative_to(ROOT)} is current")
        return 0
    if args.check:
        print(f"{OUT.relative_to(ROOT)} is stale: run python scripts/model_api.py")
        return 1
    OUT.write_text(text)
    print(f"rewrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
