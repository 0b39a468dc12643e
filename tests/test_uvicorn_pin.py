"""service/server.py builds on uvicorn's HttpToolsProtocol, which is not uvicorn's public API: the
release range pinned in pyproject.toml is the one these tests and tests/test_service_limits.py
ran on, and the internals the subclass uses are there."""

from __future__ import annotations

import importlib.metadata
import inspect
import re

from tests.conftest import ROOT


def pinned_range() -> tuple[tuple[int, ...], tuple[int, ...]]:
    text = (ROOT / "pyproject.toml").read_text()
    low, high = re.search(r'"uvicorn>=([\d.]+),<([\d.]+)"', text).groups()
    return tuple(map(int, low.split("."))), tuple(map(int, high.split(".")))


def test_installed_uvicorn_is_inside_the_pinned_range():
    low, high = pinned_range()
    version = tuple(int(p) for p in importlib.metadata.version("uvicorn").split(".")[:3])
    assert low <= version < high


def test_the_internals_the_limited_protocol_uses_are_there():
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from service.server import LimitedHttpToolsProtocol

    overridden = ("connection_made", "connection_lost", "data_received")
    overridden += ("on_message_begin", "on_headers_complete")
    for name in overridden:
        assert callable(getattr(HttpToolsProtocol, name)), name
        assert name in vars(LimitedHttpToolsProtocol), name
    # attributes set by HttpToolsProtocol.__init__ that the subclass reads
    init = inspect.getsource(HttpToolsProtocol.__init__)
    for attribute in ("self.loop", "self.transport", "self.cycle", "self.connections"):
        assert f"{attribute} " in init or f"{attribute}:" in init, attribute
