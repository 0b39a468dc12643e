"""Command-line overrides for configuration dataclasses.

Every stage keeps its configuration in one dataclass; :func:`add_dataclass_args` exposes each
field as ``--field-name`` (``--prefix.field-name`` for a nested one) so that any value can be
overridden without editing code, and :func:`dataclass_from_args` reads them back.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args:  # Optional[X] / X | None
        hint = args[0]
    return _parse_bool if hint is bool else hint


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add ``--name`` for every field of ``cls``; unset options keep the dataclass default."""
    group = parser.add_argument_group(f"{cls.__name__} ({prefix or 'top level'})")
    for f in dataclasses.fields(cls):
        name = f"--{prefix}{f.name.replace('_', '-')}"
        kind = _field_type(cls, f)
        group.add_argument(
            name,
            dest=f"{prefix}{f.name}",
            type=kind,
            default=None,
            # a bare boolean flag means true ("--resume"); "--resume false" also works
            **({"nargs": "?", "const": True} if kind is _parse_bool else {}),
            help=(f.metadata.get("help", "") + " " if f.metadata else "")
            + "(default: %s)" % (f.default if f.default is not dataclasses.MISSING else "required"),
        )


def overrides_from_args(args: argparse.Namespace, cls: type, prefix: str = "") -> dict:
    """The fields of ``cls`` given on the command line (those left unset are omitted)."""
    values = vars(args)
    return {
        f.name: values[f"{prefix}{f.name}"]
        for f in dataclasses.fields(cls)
        if values.get(f"{prefix}{f.name}") is not None
    }
