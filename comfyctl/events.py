"""Turning what a ComfyUI server says into observations of one job.

Two sources: WebSocket messages (sent to the job's own client_id) and HTTP answers
(/queue, /history, the jobs API). Both produce ``records.Observation`` values, and what a
server says reaches a record only through ``records.apply``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from comfyctl.records import (
    CANCELLED,
    ERROR,
    INTERRUPTED,
    SUCCESS,
    Observation,
    job_error,
)

# Messages that say nothing about a job's state (from_ws_message returns None for them):
# the queue size broadcast, per-node progress (``progress`` says it too), cache hits.
_SILENT = ("status", "progress_state", "execution_cached")
_TYPE_AT = len('{"type": "')


def from_ws_text(text: str, server_url: str, prompt_id: str) -> Observation | None:
    """``from_ws_message`` for a text frame as received. ComfyUI writes each message as
    ``json.dumps({"type": ..., "data": ...})``: a frame whose type can be read off its start
    and is one of the silent ones is not parsed (they are about half of a run's frames)."""
    if text.startswith('{"type": "'):
        end = text.find('"', _TYPE_AT)
        if text[_TYPE_AT:end] in _SILENT:
            return None
    try:
        msg = json.loads(text)
    except ValueError:
        return None
    return from_ws_message(msg, server_url, prompt_id) if isinstance(msg, dict) else None


def from_ws_message(msg: dict[str, Any], server_url: str, prompt_id: str) -> Observation | None:
    """The observation a WebSocket message gives about ``prompt_id``, if any.

    Messages about other prompts are ignored. A reconnect's ``executing`` carries no
    prompt_id; on a socket opened with the job's own client_id it can only be that job.
    """
    kind = msg.get("type")
    data = msg.get("data")
    if not isinstance(data, dict) or kind == "status":
        return None
    pid = data.get("prompt_id")
    if pid is not None and pid != prompt_id:
        return None
    # A reconnect's executing has no prompt_id; on a socket opened with the job's own
    # client_id it can only be about this job. (Progress without one is dropped: old servers
    # broadcast another user's anonymous job's progress to every socket in that form.)
    if pid is None and not (kind == "executing" and data.get("node") is not None):
        return None

    if kind == "progress":  # the most frequent by far
        value, maximum = data.get("value"), data.get("max")
        if isinstance(value, (int, float)) and isinstance(maximum, (int, float)) and maximum:
            node = data.get("node")
            return Observation(
                "progress",
                prompt_id,
                server_url,
                source="ws",
                value=value,
                max=maximum,
                node=None if node is None else str(node),
            )
        return None
    if kind == "executing":
        node = data.get("node")
        # node None is ComfyUI's "done" signal (also after errors): when execution_success
        # could not settle the job, the tracker fetches the outcome from /history.
        if node is None:
            return Observation("done", prompt_id, server_url, source="ws")
        return Observation("executing", prompt_id, server_url, source="ws", node=str(node))
    if kind == "execution_start":
        timing = server_timing(None, data.get("timestamp"), None)
        return Observation("running", prompt_id, server_url, source="ws", timing=timing)
    if kind == "execution_success":
        # Not "finished": it is the whole outcome only to a socket that heard the run from
        # its start (outputs came in the executed messages before it); the tracker decides.
        timing = server_timing(None, None, data.get("timestamp"))
        return Observation("succeeded", prompt_id, server_url, source="ws", timing=timing)
    if kind == "executed":
        output = data.get("output")
        if isinstance(output, dict):
            node = str(data.get("node"))
            return Observation(
                "output", prompt_id, server_url, source="ws", node=node, outputs=output
            )
        return None
    if kind == "execution_error":
        error = error_summary(data)
        return Observation(
            "finished", prompt_id, server_url, source="ws", outcome=ERROR, error=error
        )
    if kind == "execution_interrupted":
        error = interrupt_summary(data)
        return Observation(
            "finished", prompt_id, server_url, source="ws", outcome=INTERRUPTED, error=error
        )
    return None


def error_summary(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": data.get("exception_type") or "error",
        "message": str(data.get("exception_message") or "").strip() or "execution error",
        "node_id": data.get("node_id"),
        "node_type": data.get("node_type"),
    }


def interrupt_summary(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "interrupted",
        "message": "Execution was interrupted on the server.",
        "node_id": data.get("node_id"),
        "node_type": data.get("node_type"),
    }


def messages_by_name(status: Any) -> dict[str, Any]:
    """A finished job's execution messages (``status.messages``: [name, data] pairs, in
    /history entries and the jobs API alike) by name."""
    messages = status.get("messages") if isinstance(status, dict) else None
    return {m[0]: m[1] for m in messages or [] if isinstance(m, list) and len(m) == 2}


def prompt_extra(prompt: Any) -> dict[str, Any]:
    """The extra_data (client_id, create_time) of a queued or finished prompt, which
    ComfyUI stores as [number, prompt_id, graph, extra_data, outputs_to_execute]."""
    extra = prompt[3] if isinstance(prompt, list) and len(prompt) > 3 else None
    return extra if isinstance(extra, dict) else {}


def from_history_entry(entry: dict[str, Any], server_url: str, prompt_id: str) -> Observation:
    """A /history/{id} entry (present only once the job has finished)."""
    status = entry.get("status") or {}
    names = messages_by_name(status)
    outcome, error = SUCCESS, None
    if "execution_error" in names:
        outcome, error = ERROR, error_summary(names["execution_error"] or {})
    elif "execution_interrupted" in names:
        outcome, error = INTERRUPTED, interrupt_summary(names["execution_interrupted"] or {})
    elif status.get("status_str") == "error" or status.get("completed") is False:
        outcome, error = ERROR, job_error("error", "The server recorded an error.")
    ends = [names.get(n) for n in ("execution_success", "execution_error", "execution_interrupted")]
    timing = server_timing(
        prompt_extra(entry.get("prompt")).get("create_time"),
        (names.get("execution_start") or {}).get("timestamp"),
        next((e.get("timestamp") for e in ends if isinstance(e, dict)), None),
    )
    return Observation(
        "finished",
        prompt_id,
        server_url,
        outcome=outcome,
        outputs=entry.get("outputs") or {},
        error=error,
        timing=timing,
    )


def server_timing(created: Any, started: Any, finished: Any) -> dict[str, str | None] | None:
    """The server's own clock for a finished job (ComfyUI gives milliseconds since the
    epoch): when it was queued (newer servers only), started and finished."""
    stamps = {"created_at": created, "started_at": started, "finished_at": finished}
    if not any(isinstance(v, (int, float)) for v in stamps.values()):
        return None
    return {
        key: (
            datetime.fromtimestamp(value / 1000, timezone.utc).isoformat(timespec="milliseconds")
            if isinstance(value, (int, float)) and value > 0
            else None
        )
        for key, value in stamps.items()
    }


def from_job(job: dict[str, Any], server_url: str) -> Observation:
    """A jobs-API job object (newer ComfyUI) as an observation."""
    obs = _from_job(job, server_url)
    if obs.kind == "finished":
        obs.timing = server_timing(
            job.get("create_time"), job.get("execution_start_time"), job.get("execution_end_time")
        )
    return obs


def _from_job(job: dict[str, Any], server_url: str) -> Observation:
    prompt_id = str(job.get("id") or job.get("prompt_id"))
    status = job.get("status")
    if status == "pending":
        return Observation("queued", prompt_id, server_url, number=_int(job.get("priority")))
    if status == "in_progress":
        return Observation("running", prompt_id, server_url)
    if status == "cancelled":
        # The jobs API calls an interrupted run "cancelled"; its detail keeps the history
        # messages, which tell it apart the way the classic /history path does.
        names = messages_by_name(job.get("execution_status"))
        if "execution_interrupted" in names:
            return Observation(
                "finished",
                prompt_id,
                server_url,
                outcome=INTERRUPTED,
                outputs=job.get("outputs") or {},
                error=interrupt_summary(names["execution_interrupted"] or {}),
            )
        return Observation(
            "finished",
            prompt_id,
            server_url,
            outcome=CANCELLED,
            outputs=job.get("outputs") or {},
            error=job_error("cancelled", "Cancelled on the server."),
        )
    if status == "failed":
        err = job.get("execution_error") or {}
        return Observation(
            "finished",
            prompt_id,
            server_url,
            outcome=ERROR,
            outputs=job.get("outputs") or {},
            error=error_summary(err)
            if err
            else job_error("error", "The server recorded an error."),
        )
    if status == "completed":
        return Observation(
            "finished", prompt_id, server_url, outcome=SUCCESS, outputs=job.get("outputs") or {}
        )
    return Observation("unknown", prompt_id, server_url)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) else None
