"""The command line of every stage, from its configuration dataclass, with pydantic-settings.

``python -m training.prepare``, ``python -m training.switchboard``, ``python -m eval.switchboard``
and ``python -m service`` each keep their settings in one dataclass. :func:`parse_args` makes
every field an option the same way: ``--field-name`` (``--prefix.field-name`` for the fields of
a nested dataclass), ``--flag/--no-flag`` for a boolean, the field's ``metadata["help"]`` as its
help text (required: every option is explained), ``metadata["choices"]`` as its choices, and the
default written once, true (``metadata["default"]`` when the dataclass default is not what the
command uses). With ``env_prefix`` the fields are read from environment variables too
(``BNCVAE_PORT=9000``); the command line wins.

Bad values exit with code 2 and one ``prog: error: ...`` line, as argparse does.
(This lives in ``model/`` because it is the package every stage may import.)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NoReturn

from pydantic import BaseModel, Field, ValidationError, create_model
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, CliSettingsSource, EnvSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars


class _Source(CliSettingsSource):
    """pydantic-settings' CLI, with the default written into the help text by :func:`_fields`."""

    def _help_format(
        self, field_name, field_info, model_default, is_model_suppressed, env_var_names=()
    ):
        return (field_info.description or "").replace("%", "%%")


class _Environment(EnvSettingsSource):
    """The environment source, reading a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str], prefix: str):
        self._environ = environ
        super().__init__(settings_cls, env_prefix=prefix, case_sensitive=False)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, False, self.env_ignore_empty, self.env_parse_none_str)


def _default_text(value: Any) -> str:
    return (
        "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    )


def _fields(cls: type, defaults: Mapping[str, Any], optional: bool) -> dict:
    """pydantic field definitions for the dataclass ``cls`` (``optional``: every default None,
    so that only the options given are set; the help still names the true default)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        text = f.metadata.get("help")
        if not text:
            raise TypeError(f"{cls.__name__}.{f.name}: no metadata['help'] for its option")
        kind = hints[f.name]
        if "choices" in f.metadata:
            kind = Literal[tuple(f.metadata["choices"])]
            if type(None) in typing.get_args(hints[f.name]):
                kind = kind | None
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


class CommandLine:
    """The options given: ``given`` holds the fields set on the command line or in the
    environment (a nested dataclass's under its prefix), ``values`` every field's value."""

    def __init__(self, settings: BaseSettings, parser: argparse.ArgumentParser, cli: dict):
        self._parser = parser
        self.values = settings.model_dump()
        self.given: dict[str, Any] = {}
        self.from_command_line = set(cli)
        for name in settings.model_fields_set:
            value = getattr(settings, name)
            if isinstance(value, BaseModel):
                self.given[name] = {k: getattr(value, k) for k in value.model_fields_set}
            else:
                self.given[name] = value

    def error(self, message: str) -> NoReturn:
        """Exit with code 2: the usage and ``prog: error: message``, as argparse does."""
        self._parser.error(message)


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
) -> CommandLine:
    """Parse ``argv`` (default: ``sys.argv[1:]``) into the options of the dataclass ``cls``.

    ``nested``: ``{prefix: (dataclass, help)}``, options ``--prefix.field``; their fields are
    set only when given. ``defaults``/``nested_defaults``: the command's defaults where they are
    not the dataclass's. ``env_prefix``: read ``<env_prefix><FIELD>`` from ``environ``
    (default ``os.environ``) too.
    """
    fields = _fields(cls, defaults, optional=False)
    for prefix, (sub, text) in nested.items():
        sub_model = create_model(
            f"{cls.__name__}_{prefix}",
            __base__=BaseModel,
            **_fields(sub, nested_defaults.get(prefix, {}), optional=True),
        )
        fields[prefix] = (sub_model, Field(default_factory=sub_model, description=text))
    settings_cls = create_model(
        f"{cls.__name__}Options",
        __base__=BaseSettings,
        __doc__=_plain(description),
        **fields,
    )
    settings_cls.model_config = SettingsConfigDict(
        case_sensitive=True, env_prefix=env_prefix or "", extra="ignore"
    )
    source = _Source(
        settings_cls,
        cli_prog_name=prog,
        cli_parse_args=list(sys.argv[1:] if argv is None else argv),
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
        cli_avoid_json=True,
        cli_enforce_required=True,
        cli_exit_on_error=True,
    )
    parser = source.root_parser
    values = source()
    env: dict = {}
    if env_prefix is not None:
        env = _Environment(settings_cls, os.environ if environ is None else environ, env_prefix)()
    try:
        settings = settings_cls.model_validate({**env, **values})
    except ValidationError as e:
        first = e.errors()[0]
        loc = [str(p) for p in first["loc"]]
        loc = loc[:2] if loc[0] in nested else loc[:1]
        if loc[0] in env and loc[0] not in values:
            origin = f"{env_prefix}{loc[0]}".upper()
        else:
            origin = "--" + ".".join(loc).replace("_", "-")
        parser.error(f"{origin}: {first['msg']} (got {first.get('input')!r})")
    return CommandLine(settings, parser, values)


def _plain(text: str) -> str:
    """A docstring as plain text: reStructuredText's ``literal`` and :role:`name` unmarked."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")
