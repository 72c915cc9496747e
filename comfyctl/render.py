"""Turning records and events into tables, JSON, NDJSON, CSV and live progress lines.

Rendering never decides the data format from the terminal: the terminal only switches
on colour and the live progress area (on stderr).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
import threading
import time
from datetime import datetime, timezone
from typing import IO, Any

from comfyctl.records import (
    CANCELLED,
    ERROR,
    INTERRUPTED,
    LOST,
    REJECTED,
    RUNNING,
    SUCCESS,
    TERMINAL,
    age_seconds,
)

RECORD_SCHEMA = {"schema": "comfyctl.task", "schema_version": 1}
EVENT_SCHEMA = {"schema": "comfyctl.watch-event", "schema_version": 1}
SUBMIT_SCHEMA = {"schema": "comfyctl.submitted", "schema_version": 1}

_COLOURS = {SUCCESS: "32", ERROR: "31", INTERRUPTED: "33", CANCELLED: "33", REJECTED: "31",
            LOST: "35", RUNNING: "36"}


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
            return f"{seconds / size:.0f}{unit}" if unit != "m" or seconds >= 600 else \
                f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
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
        rows.append([
            short_id(r["prompt_id"]), r["server"], paint(r["status"], r["status"], color),
            percent_text(r), submitted, human_age(age_seconds(r.get("submitted_at"), now)),
            str(len(r.get("outputs") or [])), labels,
        ])
    return rows


def table(headers: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    from tabulate import tabulate  # imported here: keeps it off the --help path

    return tabulate(rows, headers=list(headers), tablefmt="simple", disable_numparse=True)


def csv_text(records: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["prompt_id", "server", "server_url", "status", "percent", "submitted_at",
                     "started_at", "finished_at", "outputs", "error", "labels"])
    for r in records:
        writer.writerow([
            r["prompt_id"], r["server"], r["server_url"], r["status"],
            (r.get("progress") or {}).get("percent", ""), r.get("submitted_at") or "",
            r.get("started_at") or "", r.get("finished_at") or "", len(r.get("outputs") or []),
            (r.get("error") or {}).get("message", ""),
            ";".join(f"{k}={v}" for k, v in sorted((r.get("labels") or {}).items())),
        ])
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


def event_json(kind: str, record: dict[str, Any] | None, server: str | None = None,
               detail: str | None = None) -> str:
    payload: dict[str, Any] = {**EVENT_SCHEMA, "event": kind,
                               "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
    if record is not None:
        payload.update(prompt_id=record["prompt_id"], server=record["server"],
                       server_url=record["server_url"], status=record["status"],
                       progress=record.get("progress"))
        if record["status"] in TERMINAL:
            payload.update(outputs=record.get("outputs") or [], error=record.get("error"))
    elif server is not None:
        payload["server"] = server
    if detail:
        payload["detail"] = detail
    return json.dumps(payload)


class LiveArea:
    """Progress bars for active jobs on a terminal (stderr), redrawn at most 10 times a second.

    Lines printed through ``print_above`` appear above the bars, so data lines on stdout
    and the live area share one terminal cleanly.
    """

    def __init__(self, stream: IO[str] | None = None, color: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.color = color
        self.lines: dict[str, str] = {}
        self._drawn = 0
        self._last = 0.0
        self._lock = threading.Lock()

    def update(self, record: dict[str, Any], force: bool = False) -> None:
        pid = record["prompt_id"]
        if record["status"] in TERMINAL:
            self.lines.pop(pid, None)
        else:
            self.lines[pid] = self._bar(record)
        now = time.monotonic()
        if force or now - self._last > 0.1:
            self._redraw()
            self._last = now

    def print_above(self, text: str, out: IO[str]) -> None:
        with self._lock:
            self._erase()
            out.write(text + "\n")
            out.flush()
            self._draw()

    def close(self) -> None:
        with self._lock:
            self._erase()

    def _bar(self, record: dict[str, Any]) -> str:
        progress = record.get("progress") or {}
        percent = float(progress.get("percent") or 0.0)
        filled = int(percent / 5)
        bar = "#" * filled + "-" * (20 - filled)
        node = progress.get("node") or "-"
        status = paint(f"{record['status']:<9}", record["status"], self.color)
        return (f"{record['server'][:20]:<20} {short_id(record['prompt_id'])} {status} "
                f"[{bar}] {percent:6.2f}% node {node}")

    def _redraw(self) -> None:
        with self._lock:
            self._erase()
            self._draw()

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        # Fit the terminal: running jobs first, the rest summed up in one line.
        room = max(3, shutil.get_terminal_size((80, 24)).lines - 2)
        lines = sorted(self.lines.values(), key=lambda line: RUNNING not in line)
        if len(lines) > room:
            lines = [*lines[:room - 1], f"... and {len(lines) - room + 1} more job(s)"]
        for line in lines:
            self.stream.write(line + "\n")
        self._drawn = len(lines)
        self.stream.flush()
