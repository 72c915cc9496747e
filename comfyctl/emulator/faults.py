"""Fault switches of the emulator.

Every field is read at the moment it matters (a new HTTP request, the next progress
step), so a test flips a switch from its own thread and the emulator's event loop sees it
on its next read. Plain attribute reads and writes are atomic under the GIL.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


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
    #: JSON answers are sent 8 bytes at a time, this many seconds apart (a slow drip).
    slow_drip: float | None = None
    #: JSON answers are replaced by a 200 HTML login page (an SSO proxy in front).
    wrong_content_type: bool = False
    #: History entries of prompts this server never ran, served as if they were its own
    #: (a server that returns another server's prompt ids).
    foreign_history: dict[str, Any] = field(default_factory=dict)
    #: What becomes of the reply once the request was read and handled (a prompt is
    #: queued): ``"drop"`` closes the connection without an answer, ``"garble"`` answers
    #: 200 with a body that is not the route's JSON (a proxy's HTML page), ``"freeze"``
    #: never answers, and from then on neither does any HTTP request (a server that hangs
    #: after taking a job; its queue still runs) until cleared, when the replies go out.
    reply: str | None = None
    #: The routes ``reply`` applies to, as ``"METHOD /path"`` without the ``/api`` prefix
    #: (e.g. ``POST /prompt``); empty: every HTTP route.
    reply_routes: tuple[str, ...] = ()
    #: POST /prompt ignores a client-chosen ``prompt_id`` and makes one of its own, as
    #: ComfyUI did before it accepted one (the reply carries the server's id).
    own_prompt_ids: bool = False
    #: Overrides every node's ``seconds_per_step`` (tests use 0.01).
    seconds_per_step: float | None = None
    #: Overrides every node's ``steps``.
    steps: int | None = None

    def clear(self) -> None:
        """Switch every fault off (speed overrides included)."""
        for spec in fields(self):
            default = spec.default_factory() if callable(spec.default_factory) else spec.default
            setattr(self, spec.name, default)
