"""What proves that a server restarted, and what does not.

A job the server no longer knows (not queued, not running, not in its history) was
either lost in a restart or forgotten on purpose: ``POST /history {"delete": [...]}``
(the web UI's "Clear history") and ``POST /queue {"delete": [...]}`` leave a running
server that simply does not know the job. Only a restart makes resubmitting right, so
comfyctl names a restart only on proof:

- **Start-up lines in the server's log.** ComfyUI keeps its last 300 console writes at
  ``GET /internal/logs/raw`` (``{"t": local time, ISO, no zone; "m": text}``), and
  writes its start-up lines ("Starting server", "To see the GUI go to: ...") only when
  the process starts. Whenever comfyctl sees a job queued or running it reads the log
  *afterwards* and stores the newest entry's time in the record (``seen_alive``). A
  start-up line later than that time (both on the server's own clock) can only come
  from a process started after the job was alive: the job died with the old one.
- **comfyctl's own later submissions.** The prompt counter (``number``) only grows
  within one process (``front`` negates it). A job sent to the same server after this
  one was acknowledged that got a number no higher than this one's came from a new
  process.

Not proof: an empty queue and history (cleared by hand), a lower number in what the
server shows (history entries can be deleted), a dropped WebSocket (the network), an
unreachable server (it may come back with the job), and no start-up lines (rotated out
after 300 writes, or a server without the log route). Then the job is *forgotten*.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from comfyctl.client import ServerClient
from comfyctl.errors import ServerError
from comfyctl.jobs import by_server
from comfyctl.records import PENDING, now_iso, parse_time
from comfyctl.store import Record, Records, Store

log = logging.getLogger("comfyctl.restart")

LOG_PATH = "/internal/logs/raw"
# Written by main.py / server.py while ComfyUI starts, and never afterwards.
STARTUP_PREFIXES = (
    "Starting server",
    "To see the GUI go to:",
    "ComfyUI version:",
    "[Prompt Server] web root:",
    "Total VRAM ",
    "pytorch version:",
    "Checkpoint files will always be loaded safely",
)


@dataclass
class ServerLog:
    """What one read of a server's log tells: its newest entry's time and the times of
    the start-up lines still in the buffer (both on the server's local clock)."""

    newest: str | None
    startups: list[str]


def read_log(client: ServerClient) -> ServerLog | None:
    """The server's recent log, or None when it does not serve one (a proxy, an older
    or newer server without the route, an answer of the wrong shape)."""
    try:
        data = client.get_json(LOG_PATH)
    except ServerError as exc:
        log.info("no log from %s: %s", client.spec.name, exc)
        return None
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return None
    times = [(e.get("t"), e.get("m")) for e in entries if isinstance(e, dict)]
    stamped = [(t, m) for t, m in times if isinstance(t, str) and _clock(t) is not None]
    startups = [t for t, m in stamped if isinstance(m, str) and m.startswith(STARTUP_PREFIXES)]
    return ServerLog(max((t for t, _ in stamped), key=_key, default=None), startups)


def mark_alive(record: Record, server_log: ServerLog | None) -> bool:
    """Store that ``record`` was seen queued or running before ``server_log`` was read.
    Returns True when the record changed (only a later mark replaces an earlier one)."""
    if server_log is None or server_log.newest is None:
        return False
    current = (record.get("seen_alive") or {}).get("log_time")
    if current is not None and _key(current) >= _key(server_log.newest):
        return False
    record["seen_alive"] = {"log_time": server_log.newest, "at": now_iso()}
    return True


def restart_proof(
    record: Record, server_log: ServerLog | None, later: Iterable[Record] = ()
) -> str | None:
    """Why we know the job's server restarted after the job was alive, or None."""
    mark = (record.get("seen_alive") or {}).get("log_time")
    if server_log is not None and mark is not None:
        after = sorted((t for t in server_log.startups if _key(t) > _key(mark)), key=_key)
        if after:
            return (
                f"{record['server']} started again at {after[0]} (its log's start-up "
                f"lines), after this job was last seen queued or running ({mark}, "
                "server time): it restarted"
            )
    number = record.get("number")
    acked = parse_time(record.get("updated_at"))
    if isinstance(number, (int, float)) and acked is not None:
        for other in later:
            n = other.get("number")
            sent = parse_time(other.get("submitted_at"))
            if (
                other is record
                or other["prompt_id"] == record["prompt_id"]
                or other["server_url"] != record["server_url"]
                or not isinstance(n, (int, float))
                or sent is None
                or sent <= acked
            ):
                continue
            if abs(n) <= abs(number):
                return (
                    f"job {other['prompt_id']}, sent to it later, got prompt number "
                    f"{abs(n):g}, not above this job's {abs(number):g}: its counter "
                    "started again, it restarted"
                )
    return None


def no_proof(record: Record, server_log: ServerLog | None) -> str:
    """Why a job the server forgot is not taken for lost in a restart."""
    mark = (record.get("seen_alive") or {}).get("log_time")
    if server_log is None:
        return "no proof of a restart (the server serves no log to check)"
    if mark is not None and server_log.startups:
        started = min(server_log.startups, key=_key)
        return (
            f"the process that had it is still running (started {started}, server "
            "time; the job was seen alive after that): it was deleted from the queue "
            "or history, not lost in a restart"
        )
    if mark is None:
        return "no proof of a restart (comfyctl never saw it queued or running)"
    return "no proof of a restart (the log's start-up lines have rotated out)"


def later_submissions(tasks: Records, records: list[Record]) -> list[Record]:
    """Store records submitted after the oldest of ``records`` was acknowledged, newest
    first (read from the newest end; stops at the first older one)."""
    stamps = [parse_time(r.get("updated_at")) for r in records]
    known = [s for s in stamps if s is not None]
    if not known:
        return []
    oldest = min(known)
    found = []
    for record in tasks.newest():
        sent = parse_time(record.get("submitted_at"))
        if sent is None or sent <= oldest:
            break
        found.append(record)
    return found


def _clock(value: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=None)


def _key(value: str) -> datetime:
    return _clock(value) or datetime.min


def note_submitted(
    ledger: Store, records: list[Record], client_for: Callable[[Record], ServerClient]
) -> None:
    """Date the sighting of freshly acknowledged jobs on their servers' log clocks (one
    log read per server, after the acks), so a restart before anyone else looks at them
    is still proven."""
    acked = by_server(r for r in records if r["status"] == PENDING)
    logs = {url: read_log(client_for(group[0])) for url, group in acked.items()}
    marks = {
        r["prompt_id"]: r for url, group in acked.items() for r in group if mark_alive(r, logs[url])
    }
    if not marks:
        return
    with ledger.transaction() as tasks:
        for pid, record in marks.items():
            stored = tasks.get(pid)
            if stored is not None and stored.get("seen_alive") != record["seen_alive"]:
                stored["seen_alive"] = record["seen_alive"]
                tasks.put(stored)
