"""Emulator test fixtures (``emulator``/``emulator_factory`` come from the root conftest's
``pytest_plugins = ["comfyctl.emulator.pytest_plugin"]``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from emulator_helpers import WSRecorder

from comfyctl.emulator import Emulator


@pytest.fixture
def fast_emulator(emulator: Emulator) -> Iterator[Emulator]:
    """The ``emulator`` fixture with every node at 0.01 s per step."""
    emulator.faults.seconds_per_step = 0.01
    yield emulator


@pytest.fixture
def ws_factory() -> Iterator[Callable[..., WSRecorder]]:
    """``ws_factory(emu, client_id=None, first=None)``: a recording WebSocket client, closed
    at teardown."""
    made: list[WSRecorder] = []

    def make(emu: Emulator, client_id: str | None = None, first: Any = None) -> WSRecorder:
        recorder = WSRecorder(emu, client_id, first)
        made.append(recorder)
        recorder.wait_for(lambda m: m["type"] == "status")
        return recorder

    yield make
    for recorder in made:
        recorder.close()
