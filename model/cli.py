"""The command line of every stage, from its configuration dataclass, with pydantic-settings.

``python -m training.prepare``, ``python -m training.switchboard``, ``python -m eval.switchboard``
and ``python -m service`` each keep their settings in one dataclass. :func:`parse_args` makes
every field an option the same way: ``--field-name`` (``--prefix.field-name`` for the fields of
a nested dataclass), ``--flag/--no-flag`` for a boolean, the field's ``metadata["help"]`` as its
help text (required: every option is explained), ``metadata["choices"]`` as its choices, and the
default written once, true (``metadata["default"]`` when the dataclass default is not what the
command uses). With ``env_prefix`` the fields are read from environment variables too
(``BNCVAE_PORT=9000``). Every command takes ``--config FILE`` (a JSON file of settings, such as a
recipe under ``recipes/`` or a run's ``config.json``) and ``--print-config``. Precedence, lowest
first: the defaults, the file, the environment, the flags.

Validation lives in one place: a field's ``metadata`` declares its range (``ge``, ``gt``, ``le``,
``lt``; a float is always finite) and :func:`check` enforces it, for the command line, for config
files and for the dataclass itself (``__post_init__`` calls :func:`check`, so a checkpoint's or a
run's ``config.json`` is held to the same ranges). A bad value exits with code 2 and one line
naming the flag or field, the value and what is allowed; no traceback.

Why pydantic-settings rather than jsonargparse: it was already the service's dependency, it keeps
the options' kebab-case names that every documented command uses (``--model.latent-dim``;
jsonargparse spells them ``--model.latent_dim``), and its validation is pydantic's, which
:func:`check` reuses for files and dataclasses. It is used through its documented interface only:
``CliSettingsSource``'s parameters (``add_argument_method`` puts our help text in place) and the
settings model's validation. Environment variables and config files are plain dictionaries merged
below the flags, which needs no source class. (This lives in ``model/`` because it is the package
every stage may import.)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import sys
import typing
from argparse import ArgumentParser
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, CliSettingsSource, SettingsConfigDict, SettingsError

BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
CONFIG_HELP = (
    "read settings from this JSON file (a recipe under recipes/, or a run's config.json); "
    "the environment and the flags override it"
)


class ConfigValueError(ValueError):
    """A field's value is outside what its metadata allows; the message names field and range."""


def _default_text(value: Any) -> str:
    return (
        "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    )


def allowed(f: dataclasses.Field, kind: Any) -> str:
    """What the field ``f`` (of type ``kind``) accepts, in words: ``an integer >= 1``."""
    if "choices" in f.metadata:
        return "one of " + ", ".join(str(c) for c in f.metadata["choices"])
    args = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
    base = args[0] if len(args) == 1 else kind
    noun = {int: "an integer", float: "a finite number", bool: "true or false"}.get(
        base, getattr(base, "__name__", str(base))
    )
    if base in (str, Path):
        noun = "a path" if base is Path else "a string"
    bounds = [f"{BOUNDS[k]} {f.metadata[k]}" for k in BOUNDS if k in f.metadata]
    text = noun + (" " + " and ".join(bounds) if bounds else "")
    return text + (" or none" if type(None) in typing.get_args(kind) else "")


def _constrained(f: dataclasses.Field, kind: Any) -> Any:
    """``kind`` with the field's declared range (``metadata``) as pydantic constraints."""
    constraints = {k: f.metadata[k] for k in BOUNDS if k in f.metadata}
    if "choices" in f.metadata:
        inner: Any = Literal[tuple(f.metadata["choices"])]
    else:
        inner = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        if inner is float:
            constraints["allow_inf_nan"] = False
        if inner is Path:  # a str is as good as a Path, in a file or in code
            constraints["strict"] = False
    if constraints and "choices" not in f.metadata and inner is not bool:
        inner = Annotated[inner, Field(**constraints)]
    return inner | None if type(None) in typing.get_args(kind) else inner


def _fields(
    cls: type, defaults: Mapping[str, Any], optional: bool, cli_only: bool
) -> dict[str, Any]:
    """pydantic field definitions for the dataclass ``cls`` (``optional``: every default None,
    so that only the options given are set; the help still names the true default)."""
    hints = typing.get_type_hints(cls)
    # name: (type, FieldInfo); the value typed Any, as create_model's **field_definitions take
    # it (mypy checks a ** dict's value type against create_model's own keywords too)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if cli_only and f.metadata.get("cli") is False:
            continue
        text = f.metadata.get("help")
        if not text:
            raise TypeError(f"{cls.__name__}.{f.name}: no metadata['help'] for its option")
        kind = _constrained(f, hints[f.name])
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = PydanticUndefined
        if default is PydanticUndefined:
            text += " (required)"
        else:
            shown = f.metadata.get("default", _default_text(default))
            text += f" (default: {shown() if callable(shown) else shown})"
        if optional:
            kind, default = kind | None, None
        out[f.name] = (kind, Field(default, description=text))
    return out


@functools.cache
def _validator(cls: type) -> type[BaseModel]:
    """A pydantic model of every field of the dataclass ``cls``, each may be left out (a file
    holds some), none may be None unless its type says so, and no other key."""
    fields: dict[str, Any] = {  # (as in _fields)
        name: (kind, Field(None)) for name, (kind, _) in _fields(cls, {}, False, False).items()
    }
    return create_model(
        f"{cls.__name__}Check", __config__=ConfigDict(extra="forbid", strict=True), **fields
    )


def _first_error(e: ValidationError, cls: type | None = None) -> tuple[list[str], Any, str]:
    """The first error of ``e``: its location, the value given and a message naming the range."""
    first = e.errors()[0]
    loc = [str(p) for p in first["loc"] if not str(p).startswith(("function-", "literal["))]
    loc = [p for p in loc if not p.isdigit() and p not in ("int", "float", "str", "bool")]
    field = None
    if cls is not None and loc:
        field = {f.name: f for f in dataclasses.fields(cls)}.get(loc[-1])
    if first["type"] == "extra_forbidden":
        return loc, first.get("input"), "unknown field"
    if first["type"] == "missing":
        return loc, _MISSING, "required"
    if field is not None:
        hint = typing.get_type_hints(cls)[field.name]
        return loc, first.get("input"), f"allowed: {allowed(field, hint)}"
    return loc, first.get("input"), first["msg"]


_MISSING = object()  # _first_error's value of a required field that was not given


def _shown(value: Any) -> str:
    if value is _MISSING:
        return "not given"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else "…"


def check(instance: Any) -> None:
    """Raise :class:`ConfigValueError` naming the first field of the dataclass ``instance``
    whose value is outside its declared range (``metadata``), with that range."""
    cls: type = type(instance)
    values = {f.name: getattr(instance, f.name) for f in dataclasses.fields(cls)}
    try:
        _validator(cls).model_validate(values)
    except ValidationError as e:
        loc, value, message = _first_error(e, cls)
        raise ConfigValueError(f"{'.'.join(loc)}: got {_shown(value)}; {message}") from None


class CommandLine:
    """The options given: ``given`` holds the fields set by the flags, the environment or the
    ``--config`` file (a nested dataclass's under its prefix), ``values`` every field's value."""

    def __init__(self, settings: BaseSettings, prog: str, cli: dict, given: dict):
        self.prog = prog
        # (the settings class is made at run time: its fields are known from its dump alone)
        self.values = settings.model_dump(exclude={"config"})
        self.print_config = bool(self.values.pop("print_config"))
        self.given = given
        self.from_command_line = set(cli)

    def error(self, message: str) -> NoReturn:
        """Exit with code 2 and the one line ``prog: error: message``."""
        fail(self.prog, message)


def fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _merge(*layers: Mapping[str, Any]) -> dict:
    """Dictionaries merged in order, nested ones (a prefix's fields) key by key."""
    out: dict = {}
    for layer in layers:
        for k, v in layer.items():
            if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
                out[k] = {**out[k], **v}
            else:
                out[k] = dict(v) if isinstance(v, Mapping) else v
    return out


def read_config_file(
    path: str | Path,
    cls: type,
    nested: Mapping[str, type] = {},
    *,
    section: str | None = None,
    ignore: Sequence[str] = (),
) -> dict:
    """The settings of a JSON file, each checked against its field's type and range.

    Layout: ``{section: {field: value}, prefix: {field: value}}`` (``section`` None: the fields of
    ``cls`` at the top level). Keys of ``ignore`` are skipped; any other unknown key, and any
    value of the wrong type (``"lr": "fast"``, ``"epochs": "4"``) or out of range, raises
    :class:`ConfigValueError` naming the file, the field and what is allowed.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigValueError(f"{path}: a directory, not a JSON file") from None
    except PermissionError:
        raise ConfigValueError(f"{path}: permission denied") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigValueError(f"{path}: not a JSON settings file ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigValueError(f"{path}: not a JSON object of settings")
    top = raw.get(section, {}) if section is not None else raw
    if section is not None:
        unknown = sorted(set(raw) - {section, *nested, *ignore})
        if unknown or not isinstance(top, dict):
            what = f"unknown key {unknown[0]!r}" if unknown else f'"{section}" is not an object'
            raise ConfigValueError(f"{path}: {what} (expected {section!r}, {', '.join(nested)})")
        parts = {None: (cls, top)} | {p: (sub, raw.get(p, {})) for p, sub in nested.items()}
    else:
        parts = {None: (cls, {k: v for k, v in top.items() if k not in (*nested, *ignore)})}
        parts |= {p: (sub, raw.get(p, {})) for p, sub in nested.items()}
    out: dict = {}
    for prefix, (kind, values) in parts.items():
        where = section if prefix is None else prefix
        if not isinstance(values, dict):
            raise ConfigValueError(f"{path}: {where!r} is not an object")
        try:
            _validator(kind).model_validate(values)
        except ValidationError as e:
            loc, value, message = _first_error(e, kind)
            name = ".".join(x for x in (where, *loc) if x)
            raise ConfigValueError(f"{path}: {name}: got {_shown(value)}; {message}") from None
        if prefix is None:
            out.update(values)
        else:
            out[prefix] = dict(values)
    return out


def _environment(
    cls: type, prefix: str, environ: Mapping[str, str], nested: Mapping[str, Any]
) -> dict:
    """``<prefix><FIELD>`` variables of ``environ`` (any case), for the top-level fields."""
    by_name = {k.upper(): v for k, v in environ.items()}
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in nested or f.metadata.get("cli") is False:
            continue
        value = by_name.get(f"{prefix}{f.name}".upper())
        if value is not None and value != "":
            out[f.name] = value
    return out


def parse_args(
    cls: type,
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    nested: Mapping[str, tuple[type, str]] = {},
    defaults: Mapping[str, Any] = {},
    nested_defaults: Mapping[str, Mapping[str, Any]] = {},
    env_prefix: str | None = None,
    environ: Mapping[str, str] | None = None,
    config_section: str | None = None,
    config_ignore: Sequence[str] = (),
    resolve: Callable[[CommandLine], dict] | None = None,
) -> CommandLine:
    """Parse ``argv`` (default: ``sys.argv[1:]``) into the options of the dataclass ``cls``.

    ``nested``: ``{prefix: (dataclass, help)}``, options ``--prefix.field``; their fields are
    set only when given. ``defaults``/``nested_defaults``: the command's defaults where they are
    not the dataclass's. ``env_prefix``: read ``<env_prefix><FIELD>`` from ``environ``
    (default ``os.environ``) too. ``config_section``/``config_ignore``: the layout of a
    ``--config`` file (:func:`read_config_file`). ``resolve``: the configuration that
    ``--print-config`` prints (default: every field's value).
    """
    fields = _fields(cls, defaults, optional=False, cli_only=True)
    for prefix, (sub, text) in nested.items():
        sub_model = create_model(
            f"{cls.__name__}_{prefix}",
            __base__=BaseModel,
            **_fields(sub, nested_defaults.get(prefix, {}), optional=True, cli_only=True),
        )
        fields[prefix] = (sub_model, Field(default_factory=sub_model, description=text))
    fields["config"] = (str | None, Field(None, description=CONFIG_HELP))
    fields["print_config"] = (
        bool,
        Field(False, description="print the resolved settings as JSON (a recipe) and exit"),
    )
    settings_cls = create_model(
        f"{cls.__name__}Options",
        __base__=BaseSettings,
        __doc__=_plain(description),
        **fields,
    )
    settings_cls.model_config = SettingsConfigDict(case_sensitive=True, extra="ignore")
    help_texts = {
        "--" + name.replace("_", "-"): info.description for name, (_, info) in fields.items()
    }
    for prefix in nested:
        model = fields[prefix][0]
        for name, info in model.model_fields.items():
            help_texts[f"--{prefix}.{name.replace('_', '-')}"] = info.description

    def add_argument(parser, *names, **kwargs):
        # pydantic-settings' help text, replaced by ours (which names the command's default)
        text = next((help_texts[n] for n in names if n in help_texts), None)
        if text is not None:
            kwargs["help"] = text.replace("%", "%%")
        return parser.add_argument(*names, **kwargs)

    try:
        source: CliSettingsSource[ArgumentParser] = CliSettingsSource(
            settings_cls,
            cli_prog_name=prog,
            cli_parse_args=list(sys.argv[1:] if argv is None else argv),
            cli_kebab_case=True,
            cli_implicit_flags=True,
            cli_hide_none_type=True,
            cli_avoid_json=True,
            cli_enforce_required=False,
            cli_exit_on_error=False,
            add_argument_method=add_argument,
        )
        cli = source()
    except SettingsError as e:
        fail(prog, f"{str(e).removeprefix('error parsing CLI: ')} (see {prog} --help)")
    file_values: dict = {}
    if cli.get("config"):
        try:
            file_values = read_config_file(
                cli["config"],
                cls,
                {p: sub for p, (sub, _) in nested.items()},
                section=config_section,
                ignore=config_ignore,
            )
        except ConfigValueError as e:
            fail(prog, f"--config {e}")
        file_values = _only_cli_fields(file_values, cls, nested)
    env: dict = {}
    if env_prefix is not None:
        env = _environment(cls, env_prefix, os.environ if environ is None else environ, nested)
    cli_given = {k: v for k, v in cli.items() if k not in ("config", "print_config")}
    given = _merge(file_values, env, cli_given)
    try:
        settings = settings_cls.model_validate(_merge(given, {k: cli[k] for k in cli}))
    except ValidationError as e:
        loc, value, message = _first_error(e)
        field_cls = cls
        if loc and loc[0] in nested:
            field_cls = nested[loc[0]][0]
        field = {f.name: f for f in dataclasses.fields(field_cls)}.get(loc[-1] if loc else "")
        if field is not None and value is not _MISSING:
            message = f"allowed: {allowed(field, typing.get_type_hints(field_cls)[field.name])}"
        if loc and loc[0] in env and loc[0] not in cli:
            origin = f"{env_prefix}{loc[0]}".upper()
        elif loc and _dig(cli, loc) is None and _dig(file_values, loc) is not None:
            origin = f"--config {cli['config']}: " + ".".join(loc)
        else:
            origin = "--" + ".".join(loc).replace("_", "-")
        shown = (
            value
            if origin.startswith(("--", env_prefix or "--")) and isinstance(value, str)
            else _shown(value)
        )
        fail(prog, f"{origin}: got {shown}; {message}")
    # the given values as validated (a flag's "4" is the integer 4)
    given = {
        k: {n: getattr(getattr(settings, k), n) for n in v} if k in nested else getattr(settings, k)
        for k, v in given.items()
        if not (k in nested and not v)
    }
    args = CommandLine(settings, prog, cli, given)
    if args.print_config:
        print(json.dumps(resolve(args) if resolve else args.values, indent=2, default=str))
        raise SystemExit(0)
    return args


def _dig(values: Mapping[str, Any], loc: Sequence[str]) -> Any:
    for part in loc:
        if not isinstance(values, Mapping) or part not in values:
            return None
        values = values[part]
    return values


def _only_cli_fields(values: dict, cls: type, nested: Mapping[str, tuple[type, str]]) -> dict:
    """A file's settings without the fields no flag sets (``metadata["cli"] is False``)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for k, v in values.items():
        if k in nested:
            hidden = {
                f.name for f in dataclasses.fields(nested[k][0]) if f.metadata.get("cli") is False
            }
            out[k] = {n: x for n, x in v.items() if n not in hidden}
        elif fields[k].metadata.get("cli") is not False:
            out[k] = v
    return out


def _plain(text: str) -> str:
    """A docstring as plain text: reStructuredText's ``literal`` and :role:`name` unmarked."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")
