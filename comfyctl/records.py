"""The task record, its states, and the one function that applies what a server says.

Everything comfyctl learns about a job (a WebSocket message, a /queue snapshot, a
/history entry, a jobs-API answer) becomes an ``Observation`` from the job's bound
server. ``apply`` folds an observation into a record; an observation from any other
server is ignored, so one server can never change a job bound to another.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote_plus

from comfyctl.liveness import gone, this_process

Record = dict[str, Any]

SUBMITTING, PENDING, RUNNING = "submitting", "pending", "running"
SUCCESS, ERROR, INTERRUPTED, CANCELLED = "success", "error", "interrupted", "cancelled"
REJECTED, LOST = "rejected", "lost"
STATUSES = (SUBMITTING, PENDING, RUNNING, SUCCESS, ERROR, INTERRUPTED, CANCELLED, REJECTED, LOST)
ACTIVE = frozenset({SUBMITTING, PENDING, RUNNING})
# What the server decided; a later observation can't undo it. LOST is not here: a server
# that comes back and does know the job is believed.
FINAL = frozenset({SUCCESS, ERROR, INTERRUPTED, CANCELLED, REJECTED})
TERMINAL = FINAL | {LOST}
FAILED = frozenset({ERROR, INTERRUPTED, CANCELLED, REJECTED, LOST})

PROGRESS_HISTORY_LIMIT = 20
# A write-ahead record older than this is settled even if its process seems alive.
STALE_SUBMIT_SECONDS = 600.0


_this_second: tuple[int, str] = (0, "")


def now_iso() -> str:
    """Now in UTC, to the millisecond, as ``datetime.isoformat`` writes it. Every event
    watch hears is stamped, so the date and time of a second are formatted once."""
    global _this_second
    now = time.time()
    whole = int(now)
    second = _this_second  # one read: another thread may replace it meanwhile
    if second[0] != whole:
        second = _this_second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{second[1]}.{int((now - whole) * 1000):03d}+00:00"


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def age_seconds(value: str | None, now: datetime | None = None) -> float | None:
    moment = parse_time(value)
    if moment is None:
        return None
    return ((now or datetime.now(timezone.utc)) - moment) / timedelta(seconds=1)


def new_record(
    prompt_id: str,
    server: str,
    server_url: str,
    client_id: str,
    workflow_ref: str | None,
    labels: dict[str, str] | None = None,
    resubmitted_from: str | None = None,
) -> Record:
    """A write-ahead record, made before the job is sent (status ``submitting``)."""
    stamp = now_iso()
    return {
        "prompt_id": prompt_id,
        "server": server,
        "server_url": server_url,
        "client_id": client_id,
        "status": SUBMITTING,
        "submitted_at": stamp,
        "updated_at": stamp,
        "started_at": None,
        "finished_at": None,
        "number": None,
        "progress": None,
        "progress_history": [],
        "outputs": [],
        "error": None,
        "warnings": [],
        "workflow": workflow_ref,
        "resubmitted_from": resubmitted_from,
        "superseded_by": None,
        "recovered": None,
        "labels": dict(labels or {}),
        # Lets a later command tell a crashed submit from one still in flight.
        "submitter": {"process": this_process()},
    }


def submitter_gone(record: Record) -> bool:
    """Whether the process that wrote a ``submitting`` record can no longer finish it."""
    info = record.get("submitter") or {}
    if info.get("finished"):  # it gave up on an uncertain send: nobody else will settle it
        return True
    if (age_seconds(record.get("submitted_at")) or 0.0) > STALE_SUBMIT_SECONDS:
        return True
    return isinstance(info.get("process"), str) and gone(info["process"])


def never_arrived(record: Record) -> Observation:
    """The verdict on a write-ahead record whose submitter is gone (``submitter_gone``)
    when its server does not know the job: the submit never reached it."""
    return Observation(
        "lost",
        record["prompt_id"],
        record["server_url"],
        error=job_error(
            "submit_failed", "The submitting process died and the server never got the job."
        ),
    )


def view_url(server_url: str, filename: str, subfolder: str, kind: str) -> str:
    """The /view URL of one output, always on the job's own server (the query as
    ``urlencode`` writes it, without its per-key work: every output of every job has one)."""
    return (
        f"{server_url}/view?filename={quote_plus(filename, safe='')}"
        f"&subfolder={quote_plus(subfolder, safe='')}&type={quote_plus(kind, safe='')}"
    )


def flatten_outputs(server_url: str, outputs: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file in a /history ``outputs`` dict, whatever the list key (images, gifs, audio...)."""
    files: list[dict[str, Any]] = []
    if not isinstance(outputs, dict):
        return files
    for node, node_output in outputs.items():
        if not isinstance(node_output, dict):
            continue
        for key, items in node_output.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and isinstance(item.get("filename"), str):
                    subfolder = str(item.get("subfolder") or "")
                    kind = str(item.get("type") or "output")
                    files.append(
                        {
                            "node": str(node),
                            "key": key,
                            "filename": item["filename"],
                            "subfolder": subfolder,
                            "type": kind,
                            "url": view_url(server_url, item["filename"], subfolder, kind),
                        }
                    )
    return files


@dataclass
class Observation:
    """One fact about one job, as told by one server.

    kind: ``queued`` (number, position), ``running``, ``progress`` (value, max, node),
    ``executing`` (node), ``output`` (node, outputs), ``finished`` (outcome, outputs,
    error), ``cancelled``, ``unknown`` (the server knows nothing of it: a fact, not yet
    a verdict), ``lost`` (the verdict that it is gone), ``done`` (the WebSocket's
    end-of-run signal; the outcome still has to be read from the history).
    """

    kind: str
    prompt_id: str
    server_url: str
    at: str = field(default_factory=now_iso)
    node: str | None = None
    value: float | None = None
    max: float | None = None
    number: int | None = None
    position: int | None = None
    outcome: str | None = None
    outputs: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    source: str = "http"
    timing: dict[str, str | None] | None = None  # finished: the server's own timestamps


def job_error(kind: str, message: str) -> dict[str, Any]:
    """A record's ``error`` for a failure no node caused (lost, cancelled, submit failed)."""
    return {"type": kind, "message": message, "node_id": None, "node_type": None}


def apply(record: Record, obs: Observation, server_name: str | None = None) -> bool:
    """Fold ``obs`` into ``record`` in place; returns True when the record changed."""
    if obs.server_url != record["server_url"] or obs.prompt_id != record["prompt_id"]:
        return False
    status = record["status"]
    if status in FINAL or obs.kind == "unknown":
        return False
    if status == LOST and record.get("superseded_by"):
        return False  # it is to be cancelled, not revived: see settle_superseded
    if (
        obs.kind == "progress"
        and status == RUNNING
        and record["started_at"]
        and obs.value is not None
        and obs.max
    ):
        # Most of what a watch hears: only the progress can change (the branch below
        # comes to the same, comparing the whole record before and after).
        changed = _record_progress(record, obs, server_name or record["server"])
        if changed:
            record["updated_at"] = obs.at
        return changed
    before = _fingerprint(record)
    if status == LOST and obs.kind != "lost":
        # The server knows it after all: "lost" (its error, its end) no longer holds.
        record["error"], record["finished_at"] = None, None
    if obs.kind == "queued":
        if status in (SUBMITTING, LOST):
            record["status"] = PENDING
        if obs.number is not None:
            record["number"] = obs.number
    elif obs.kind in ("running", "executing", "progress"):
        _mark_running(record, obs.at)
        if obs.kind == "progress" and obs.value is not None and obs.max:
            _record_progress(record, obs, server_name or record["server"])
        elif obs.node is not None and (record["progress"] or {}).get("node") != obs.node:
            # A new node is movement; the same node again (a reconnect replays it) is not.
            progress = record["progress"] or {"value": 0, "max": 0, "percent": 0.0}
            record["progress"] = {**progress, "node": obs.node, "updated_at": obs.at}
    elif obs.kind == "output":
        _mark_running(record, obs.at)
        _merge_outputs(record, {obs.node or "?": obs.outputs or {}})
    elif obs.kind == "finished":
        # The server's own clock when it says (history messages, jobs-API fields): comfyctl
        # may notice the end late (recover, a watcher that was not running), not the run.
        timing = obs.timing or {}
        record["status"] = obs.outcome or SUCCESS
        record["finished_at"] = timing.get("finished_at") or record["finished_at"] or obs.at
        record["started_at"] = timing.get("started_at") or record["started_at"] or obs.at
        if obs.outputs is not None:
            _merge_outputs(record, obs.outputs)
        if obs.error:
            record["error"] = obs.error
        if obs.timing:
            record["server_timing"] = obs.timing
        if record["status"] == SUCCESS and record["progress"] and record["progress"]["max"]:
            record["progress"] = {
                **record["progress"],
                "value": record["progress"]["max"],
                "percent": 100.0,
            }
    elif obs.kind == "cancelled":
        record["status"] = CANCELLED
        record["finished_at"] = record["finished_at"] or obs.at
    elif obs.kind == "lost":
        if status == LOST:
            return False
        record["status"] = LOST
        record["finished_at"] = obs.at
        record["error"] = obs.error or job_error("lost", "The server no longer knows this job.")
    changed = _fingerprint(record) != before
    if changed:
        record["updated_at"] = obs.at  # when it was heard (a flush may write it later)
    return changed


def settle_superseded(record: Record, obs: Observation) -> bool:
    """The one state of a lost job that was resubmitted as another (``superseded_by``),
    once its own server answers again: ``cancelled`` there (it was still queued or running
    and has just been cancelled), the outcome it reached anyway (both ran: a warning says
    so), or still ``lost`` when the server does not have it. ``recovered.original`` says
    which, so the server is not asked again. Returns True when the record changed."""
    new = record.get("superseded_by")
    if (
        not new
        or record["status"] != LOST
        or obs.server_url != record["server_url"]
        or obs.prompt_id != record["prompt_id"]
    ):
        return False
    if obs.kind == "cancelled":
        record.update(
            status=CANCELLED,
            finished_at=obs.at,
            error=job_error(
                "superseded",
                f"Cancelled on {record['server']}, where it was still queued or "
                f"running: it had been resubmitted as {new}.",
            ),
        )
        how = "cancelled"
    elif obs.kind == "finished":
        record.update(
            status=obs.outcome or SUCCESS,
            error=obs.error,
            finished_at=(obs.timing or {}).get("finished_at") or obs.at,
            started_at=(obs.timing or {}).get("started_at") or record.get("started_at") or obs.at,
        )
        _merge_outputs(record, obs.outputs or {})
        record["warnings"] = [
            *record.get("warnings", []),
            f"It ran to the end on {record['server']} although it had been "
            f"resubmitted as {new}: both ran.",
        ]
        how = "ran"
    elif obs.kind == "unknown":
        how = "gone"
    else:
        return False  # still queued or running: it has to be cancelled first
    record["recovered"] = {**(record.get("recovered") or {}), "original": how}
    record["updated_at"] = now_iso()
    return True


def superseded_unsettled(record: Record) -> bool:
    """A lost job resubmitted as another whose own server has not been asked since."""
    return (
        record["status"] == LOST
        and bool(record.get("superseded_by"))
        and not (record.get("recovered") or {}).get("original")
    )


def _fingerprint(record: Record) -> tuple[Any, ...]:
    return (
        record["status"],
        record["started_at"],
        record["progress"],
        len(record["outputs"]),
        record["error"],
        record["number"],
    )


def _mark_running(record: Record, at: str) -> None:
    if record["status"] in (SUBMITTING, PENDING, LOST):
        record["status"] = RUNNING
    record["started_at"] = record["started_at"] or at


def _record_progress(record: Record, obs: Observation, server_name: str) -> bool:
    """Whether the progress moved (then it is recorded, with when)."""
    assert obs.value is not None and obs.max
    current = record["progress"] or {}
    if (current.get("value"), current.get("max"), current.get("node")) == (
        obs.value,
        obs.max,
        obs.node,
    ):
        return False  # nothing moved: the time of the last change stays what it was
    percent = round(100.0 * obs.value / obs.max, 2)
    record["progress"] = {
        "value": obs.value,
        "max": obs.max,
        "percent": percent,
        "node": obs.node,
        "updated_at": obs.at,
    }
    history = record["progress_history"]
    history.append(
        {"at": obs.at, "value": obs.value, "max": obs.max, "node": obs.node, "server": server_name}
    )
    del history[:-PROGRESS_HISTORY_LIMIT]
    return True


def _merge_outputs(record: Record, outputs: dict[str, Any]) -> None:
    known = {
        (o["node"], o["key"], o["filename"], o["subfolder"], o["type"]) for o in record["outputs"]
    }
    for item in flatten_outputs(record["server_url"], outputs):
        key = (item["node"], item["key"], item["filename"], item["subfolder"], item["type"])
        if key not in known:
            known.add(key)
            record["outputs"].append(item)


def progress_changed_at(record: Record) -> str | None:
    """When the job last made visible progress (or started, when it never reported any)."""
    progress = record.get("progress") or {}
    return progress.get("updated_at") or record.get("started_at")
