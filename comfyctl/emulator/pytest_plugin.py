"""Pytest fixtures for the ComfyUI emulator.

Enable with ``pytest_plugins = ["comfyctl.emulator.pytest_plugin"]`` in a root conftest.

* ``emulator``: a started :class:`Emulator` on a free 127.0.0.1 port, stopped at teardown.
* ``emulator_factory``: ``emulator_factory(jobs_api=False, **kwargs) -> Emulator`` (started);
  every emulator it made is stopped at teardown.

Importing this module does not import pytest (the emulator extra does not need it, and
tools that import every module of a package must not fail without it): the fixtures are
registered by the ``pytest_configure`` hook, which only pytest calls.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from typing import Any

from comfyctl.emulator.runner import Emulator

EmulatorFactory = Callable[..., Emulator]
_FIXTURES = "comfyctl-emulator-fixtures"


def emulator_fixture() -> Iterator[Emulator]:
    emu = Emulator(host="127.0.0.1", port=0).start()
    try:
        yield emu
    finally:
        emu.stop()


def emulator_factory_fixture() -> Iterator[EmulatorFactory]:
    made: list[Emulator] = []

    def make(jobs_api: bool = False, **kwargs: Any) -> Emulator:
        kwargs.setdefault("host", "127.0.0.1")
        kwargs.setdefault("port", 0)
        emu = Emulator(jobs_api=jobs_api, **kwargs).start()
        made.append(emu)
        return emu

    try:
        yield make
    finally:
        for emu in reversed(made):
            emu.stop()


def pytest_configure(config: Any) -> None:
    import pytest

    if config.pluginmanager.has_plugin(_FIXTURES):
        return
    # A module object, because pytest finds a plugin's fixtures among its attributes.
    fixtures = types.ModuleType(_FIXTURES)
    for name, func in (
        ("emulator", emulator_fixture),
        ("emulator_factory", emulator_factory_fixture),
    ):
        setattr(fixtures, name, pytest.fixture(func, name=name))
    config.pluginmanager.register(fixtures, _FIXTURES)
