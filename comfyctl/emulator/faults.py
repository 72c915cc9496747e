"""Fault switches of the emulator.

Every field is read at the moment it matters (a new HTTP request, the next progress
step), so a test flips a switch from its own thread and the emulator's event loop sees it
on its next read. Plain attribute reads and writes are atomic under the GIL.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class Faults:
    #: Every HTTP request (not the WebSocket upgrade) hangs until cleared or ``stop()``.
    http_hang: bool = False
    #: Every HTTP request (not the WebSocket upgrade) answers this status with an HTML
    #: body, the way a reverse proxy in front of a dead ComfyUI does (e.g. 500, 502).
    http_status: int | None = None
    #: Routes that answer JSON answer 200 with the JSON body cut in half.
    malformed_json: bool = False
    #: The WebSocket upgrade is refused with a plain HTTP 403.
    refuse_websocket: bool = False
    #: A running progress node stops advancing once ``100*value/max`` reaches this.
    #: It stays there (interrupt still works) until the fault is cleared or raised.
    stall_at_percent: float | None = None
    #: Executing the node with this id raises ``RuntimeError`` (an ``execution_error``).
    error_at_node: str | None = None
    #: Output file name / subfolder reported in ``executed`` and history instead of the
    #: real one (the file is still written under its real, safe name).
    output_filename: str | None = None
    output_subfolder: str | None = None
    #: Overrides every node's ``seconds_per_step`` (tests use 0.01).
    seconds_per_step: float | None = None
    #: Overrides every node's ``steps``.
    steps: int | None = None

    def clear(self) -> None:
        """Switch every fault off (speed overrides included)."""
        for field in fields(self):
            setattr(self, field.name, field.default)
