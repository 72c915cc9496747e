"""Turning records and events into tables, JSON, NDJSON, CSV and live progress lines.

Rendering never decides the data format from the terminal: the terminal only switches
on colour and the live progress area (on stderr).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sys
import threading
import time
import unicodedata
from datetime import datetime, timezone
from typing import IO, Any

from comfyctl.records import (
    CANCELLED,
    ERROR,
    INTERRUPTED,
    LOST,
    PENDING,
    REJECTED,
    RUNNING,
    SUCCESS,
    TERMINAL,
    age_seconds,
    now_iso,
)

RECORD_SCHEMA = {"schema": "comfyctl.task", "schema_version": 1}
EVENT_SCHEMA = {"schema": "comfyctl.watch-event", "schema_version": 1}
SUBMIT_SCHEMA = {"schema": "comfyctl.submitted", "schema_version": 1}
CANCEL_SCHEMA = {"schema": "comfyctl.cancel", "schema_version": 1}
SERVERS_SCHEMA = {"schema": "comfyctl.servers", "schema_version": 1}
SERVER_SCHEMA = {"schema": "comfyctl.server", "schema_version": 1}
FINDING_SCHEMA = {"schema": "comfyctl.finding", "schema_version": 1}
ACTION_SCHEMA = {"schema": "comfyctl.recovery-action", "schema_version": 1}
REPORT_SCHEMA = {"schema": "comfyctl.fleet-report", "schema_version": 1}
METRICS_SCHEMA = {"schema": "comfyctl.metrics", "schema_version": 1}
VALIDATION_SCHEMA = {"schema": "comfyctl.validation", "schema_version": 1}
#: Every "<item>-list" document's own version (its shape: header, one list, a few counts).
LIST_VERSION = 1


def list_document(
    item_schema: dict[str, Any], key: str, items: list[Any], **extra: Any
) -> dict[str, Any]:
    """The one JSON document a listing command prints with --json: ``<item schema>-list``
    with the items (each exactly as --nl prints it, one per line) under ``key``."""
    return {
        "schema": f"{item_schema['schema']}-list",
        "schema_version": LIST_VERSION,
        **extra,
        key: items,
    }


_COLOURS = {
    SUCCESS: "32",
    ERROR: "31",
    INTERRUPTED: "33",
    CANCELLED: "33",
    REJECTED: "31",
    LOST: "35",
    RUNNING: "36",
}


def short_id(prompt_id: str) -> str:
    return prompt_id[:8]


def paint(text: str, status: str, color: bool) -> str:
    code = _COLOURS.get(status)
    return f"\x1b[{code}m{text}\x1b[0m" if color and code else text


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return (
                f"{seconds / size:.0f}{unit}"
                if unit != "m" or seconds >= 600
                else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
            )
    return f"{seconds:.0f}s"


def percent_text(record: dict[str, Any]) -> str:
    progress = record.get("progress") or {}
    if record["status"] == SUCCESS:
        return "100%"
    if not progress.get("max"):
        return "-"
    return f"{progress.get('percent', 0.0):.2f}%"


def record_json(record: dict[str, Any]) -> dict[str, Any]:
    """The public form of a record: the ledger fields plus the schema name and version."""
    public = {k: v for k, v in record.items() if k != "submitter"}
    return {**RECORD_SCHEMA, **public}


HISTORY_COLUMNS = ("id", "server", "status", "progress", "submitted", "age", "outputs", "labels")


def history_rows(records: list[dict[str, Any]], color: bool = False) -> list[list[str]]:
    now = datetime.now(timezone.utc)
    rows = []
    for r in records:
        submitted = (r.get("submitted_at") or "")[:19].replace("T", " ")
        labels = ",".join(f"{k}={v}" for k, v in sorted((r.get("labels") or {}).items()))
        rows.append(
            [
                short_id(r["prompt_id"]),
                r["server"],
                paint(r["status"], r["status"], color),
                percent_text(r),
                submitted,
                human_age(age_seconds(r.get("submitted_at"), now)),
                str(len(r.get("outputs") or [])),
                labels,
            ]
        )
    return rows


_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def text_width(text: str) -> int:
    """Terminal columns ``text`` takes: colour codes none, East Asian wide characters two."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in _COLOUR.sub("", text)
    )


def table(headers: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    """A plain table: left-aligned columns two spaces apart, a dashed rule under the
    headers, one line per row (what ``tabulate``'s "simple" format printed; written here
    because importing tabulate and wcwidth cost 80 ms of a 300 ms ``history``)."""
    cells = [
        [" ".join(str(c).strip().splitlines()) if c is not None else "" for c in row]
        for row in rows
    ]
    widths = [
        max([text_width(h) + 2, *(text_width(row[i]) for row in cells)])
        for i, h in enumerate(headers)
    ]

    def line(values: list[str]) -> str:
        padded = (v + " " * (w - text_width(v)) for v, w in zip(values, widths, strict=True))
        return "  ".join(padded).rstrip()

    return "\n".join([line(list(headers)), line(["-" * w for w in widths]), *map(line, cells)])


def csv_text(records: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "prompt_id",
            "server",
            "server_url",
            "status",
            "percent",
            "submitted_at",
            "started_at",
            "finished_at",
            "outputs",
            "error",
            "labels",
        ]
    )
    for r in records:
        writer.writerow(
            [
                r["prompt_id"],
                r["server"],
                r["server_url"],
                r["status"],
                (r.get("progress") or {}).get("percent", ""),
                r.get("submitted_at") or "",
                r.get("started_at") or "",
                r.get("finished_at") or "",
                len(r.get("outputs") or []),
                (r.get("error") or {}).get("message", ""),
                ";".join(f"{k}={v}" for k, v in sorted((r.get("labels") or {}).items())),
            ]
        )
    return buffer.getvalue()


def state_line(record: dict[str, Any], detail: str | None = None) -> str:
    """One plain line per state change: id, server, status, percent, detail."""
    parts = [record["prompt_id"], record["server"], record["status"], percent_text(record)]
    if record["status"] in TERMINAL:
        if record.get("error"):
            parts.append(str(record["error"].get("message", "")).replace("\n", " "))
        elif record.get("outputs"):
            parts.append(f"{len(record['outputs'])} output(s)")
    if detail:
        parts.append(detail)
    return "\t".join(parts)


def event_json(
    kind: str, record: dict[str, Any] | None, server: str | None = None, detail: str | None = None
) -> str:
    payload: dict[str, Any] = {**EVENT_SCHEMA, "event": kind, "at": now_iso()}
    if record is not None:
        payload["prompt_id"] = record["prompt_id"]
        payload["server"] = record["server"]
        payload["server_url"] = record["server_url"]
        payload["status"] = record["status"]
        payload["progress"] = record.get("progress")
        if record["status"] in TERMINAL:
            payload["outputs"] = record.get("outputs") or []
            payload["error"] = record.get("error")
    elif server is not None:
        payload["server"] = server
    if detail:
        payload["detail"] = detail
    return json.dumps(payload)


def live_area_wanted(stream: IO[str]) -> bool:
    """Whether a live area can be drawn on ``stream``: a terminal that understands cursor
    movement (TERM=dumb does not). Otherwise only plain lines are printed."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


def terminal_size(stream: IO[str]) -> os.terminal_size:
    """The size of the terminal ``stream`` is on (not stdout's: stdout may be a pipe).

    A pty nobody gave a window size (``pty.fork``, some CI runners) reports 0 columns and
    0 lines: each unknown one then comes from COLUMNS/LINES, else 80x24, as
    ``shutil.get_terminal_size`` does."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return shutil.get_terminal_size((80, 24))
    return os.terminal_size(
        (size.columns or _env_size("COLUMNS", 80), size.lines or _env_size("LINES", 24))
    )


def _env_size(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def _job_key(record: dict[str, Any]) -> str:
    """One job's key in the live area: its client_id, which stays when the job is found
    under the id an older server gave it (comfyctl.submission.settle_submitting)."""
    return str(record.get("client_id") or record["prompt_id"])


class LiveArea:
    """One line per unfinished job on a terminal (stderr), redrawn in place at most 10
    times a second: running jobs with a bar, pending ones with their queue position, and
    the jobs of an unreachable server marked on their own line.

    Every line is cut to the terminal's width, so none wraps: the area then takes exactly
    as many rows as it has lines, and erasing that many rows leaves no stale copy. Lines
    printed through ``print_above`` (data on stdout, notices on stderr) appear above the
    area and stay.
    """

    def __init__(self, stream: IO[str] | None = None, color: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.color = color
        self.records: dict[str, dict[str, Any]] = {}
        # Keyed by _job_key: 1-based place in its queue.
        self.positions: dict[str, int] = {}
        self.down: dict[str, str] = {}  # server name -> why it is unreachable
        self._drawn = 0
        self._last = 0.0
        self._lock = threading.RLock()

    def update(self, record: dict[str, Any], force: bool = False) -> None:
        with self._lock:
            key = _job_key(record)
            if record["status"] in TERMINAL:
                self.records.pop(key, None)
                self.positions.pop(key, None)
            else:
                self.records[key] = record
            self._maybe_redraw(force)

    def queue_position(self, record: dict[str, Any], position: int | None) -> None:
        """Where a pending job waits in its server's queue (1 = next), when known."""
        with self._lock:
            if position is None:
                self.positions.pop(_job_key(record), None)
            else:
                self.positions[_job_key(record)] = position
            self.update(record)

    def server_state(self, server: str, reachable: bool, reason: str | None = None) -> None:
        with self._lock:
            if reachable:
                self.down.pop(server, None)
            else:
                self.down[server] = reason or "unreachable"
            self._maybe_redraw(True)

    def print_above(self, text: str, out: IO[str]) -> None:
        with self._lock:
            self._erase()
            out.write(text + "\n")
            out.flush()
            self._draw()

    def close(self) -> None:
        with self._lock:
            self._erase()
            self.stream.flush()

    def line(self, record: dict[str, Any], width: int) -> str:
        """One job's line, at most ``width - 1`` columns (the last column stays free: some
        terminals wrap as soon as it is written)."""
        status = record["status"]
        server = record["server"] if len(record["server"]) <= 16 else record["server"][:15] + "~"
        head = f"{server:<16} {short_id(record['prompt_id'])} "
        down = self.down.get(record["server"])
        if down is not None:
            tail = f"unreachable ({down})"
        elif status == RUNNING:
            progress = record.get("progress") or {}
            percent = float(progress.get("percent") or 0.0)
            room = width - 1 - len(head) - 11 - 10  # status; "[", "] ", the percent
            size = max(5, min(20, room))
            filled = int(percent / 100 * size)
            tail = f"[{'#' * filled}{'-' * (size - filled)}] {percent:6.2f}%"
            if progress.get("node"):
                tail += f" node {progress['node']}"
        elif status == PENDING:
            position = self.positions.get(_job_key(record))
            tail = f"queued, #{position} in line" if position else "queued"
        else:
            tail = ""
        plain = f"{head}{status:<10} {tail}".rstrip()[: max(1, width - 1)]
        if not self.color or len(plain) < len(head) + len(status):
            return plain
        at = len(head)
        painted = paint(status, "lost" if down is not None else status, True)
        return plain[:at] + painted + plain[at + len(status) :]

    def _maybe_redraw(self, force: bool) -> None:
        now = time.monotonic()
        if force or now - self._last > 0.1:
            self._draw(erase=True)
            self._last = now

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self, erase: bool = False) -> None:
        size = terminal_size(self.stream)
        # Fit the terminal: running jobs first, then pending ones in queue order, the rest
        # summed up in one line.
        room = max(3, size.lines - 2)
        order = {RUNNING: 0, PENDING: 1}
        records = sorted(
            self.records.values(),
            key=lambda r: (order.get(r["status"], 2), self.positions.get(_job_key(r), 1 << 30)),
        )
        lines = [self.line(r, size.columns) for r in records]
        if len(lines) > room:
            lines = [
                *lines[: room - 1],
                f"... and {len(lines) - room + 1} more job(s)"[: size.columns - 1],
            ]
        # One write per frame: the terminal never shows a half-drawn area.
        wipe = f"\x1b[{self._drawn}F\x1b[J" if erase and self._drawn else ""
        self.stream.write(wipe + "".join(line + "\n" for line in lines))
        self._drawn = len(lines)
        self.stream.flush()
