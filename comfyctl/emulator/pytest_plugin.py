"""Pytest fixtures for the ComfyUI emulator.

Enable with ``pytest_plugins = ["comfyctl.emulator.pytest_plugin"]`` in a root conftest.

* ``emulator``: a started :class:`Emulator` on a free 127.0.0.1 port, stopped at teardown.
* ``emulator_factory``: ``emulator_factory(jobs_api=False, **kwargs) -> Emulator`` (started);
  every emulator it made is stopped at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from comfyctl.emulator.runner import Emulator

EmulatorFactory = Callable[..., Emulator]


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    emu = Emulator(host="127.0.0.1", port=0).start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def emulator_factory() -> Iterator[EmulatorFactory]:
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
