"""The newest ComfyUI's job API (``/api/jobs``), served when ``jobs_api=True``.

Written after ``comfy_execution/jobs.py`` (Comfy-Org/ComfyUI at commit
172be438576532bd3d7243c5608ddde8a31e2944) and the ``/api/jobs*`` routes of ``server.py``
(commit 002c3fb9a504255ccb3edb668c08b8f56e63d14a). A job is a queue item or a history
entry seen through one shape:

* queue items -> ``{id, status: pending|in_progress, priority, create_time,
  outputs_count: 0, previewable_outputs_count: 0, workflow_id}`` (+ ``workflow`` in detail);
* history entries -> ``{id, status: completed|failed|cancelled, priority, create_time,
  execution_start_time, execution_end_time, execution_error, outputs_count,
  previewable_outputs_count, preview_output, workflow_id}`` (+ ``outputs``,
  ``execution_status`` and ``workflow`` in detail). ``cancelled`` is an ``error`` status whose
  messages contain ``execution_interrupted``.

Keys whose value is None are left out (ComfyUI's ``prune_dict``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

PENDING = "pending"
IN_PROGRESS = "in_progress"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
ALL_STATUSES = [PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED]

CANCEL_RUNNING = "running"
CANCEL_PENDING = "pending"
CANCEL_TERMINAL = "terminal"
CANCEL_UNKNOWN = "unknown"

_PREVIEWABLE_MEDIA = frozenset({"images", "video", "audio", "3d", "text"})
_THREE_D = (".obj", ".fbx", ".gltf", ".glb", ".usdz")
_TEXT = (".txt", ".md", ".json")
_TEXT_PREVIEW_MAX = 1024


def validate_job_id(value: Any) -> str:
    """A job id must be a canonical (lowercase, hyphenated) UUID string."""
    if not isinstance(value, str):
        raise ValueError(f"job id must be a string, got {type(value).__name__}")
    if str(uuid.UUID(value)) != value:
        raise ValueError("job id must be a UUID in canonical lowercase hyphenated form")
    return value


def _prune(data: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if value is not None}


def _metadata(extra_data: Any) -> tuple[Any, Any]:
    if not isinstance(extra_data, dict):
        return None, None
    pnginfo = extra_data.get("extra_pnginfo") or {}
    workflow = pnginfo.get("workflow") if isinstance(pnginfo, dict) else None
    workflow_id = workflow.get("id") if isinstance(workflow, dict) else None
    return extra_data.get("create_time"), workflow_id


def _normalize_item(item: Any) -> Any:
    """String 3D file names become file dicts; other strings are not files."""
    if isinstance(item, str):
        if item.lower().endswith(_THREE_D):
            return {"filename": item, "type": "output", "subfolder": "", "mediaType": "3d"}
        return None
    return item if isinstance(item, dict) else None


def _normalize_outputs(outputs: dict[str, Any]) -> dict[str, Any]:
    normalized: dict[str, Any] = {}
    for node_id, node_outputs in outputs.items():
        if not isinstance(node_outputs, dict):
            normalized[node_id] = node_outputs
            continue
        node: dict[str, Any] = {}
        for media_type, items in node_outputs.items():
            if media_type == "animated" or not isinstance(items, list):
                node[media_type] = items
                continue
            node[media_type] = [
                (_normalize_item(item) or item) for item in items if item is not None
            ]
        normalized[node_id] = node
    return normalized


def _previewable(media_type: str, item: dict[str, Any]) -> bool:
    if media_type in _PREVIEWABLE_MEDIA:
        return True
    fmt = item.get("format", "") or ""
    if fmt.startswith(("video/", "audio/")):
        return True
    filename = str(item.get("filename", "")).lower()
    return filename.endswith(_THREE_D) or filename.endswith(_TEXT)


def _is_text(media_type: str, item: dict[str, Any]) -> bool:
    return media_type == "text" or str(item.get("filename", "")).lower().endswith(_TEXT)


def _output_items(outputs: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(node id, media type, item) for every listed output ("animated" flags excluded)."""
    for node_id, node_outputs in outputs.items():
        if not isinstance(node_outputs, dict):
            continue
        for media_type, items in node_outputs.items():
            if media_type != "animated" and isinstance(items, list):
                for item in items:
                    yield node_id, media_type, item


def outputs_summary(outputs: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    """(outputs_count, preview_output): saved visual media first, then other visual
    media, then saved text files, then raw text."""
    count = 0
    preview = fallback = text_file = text_raw = None
    for node_id, media_type, item in _output_items(outputs):
        if not isinstance(item, dict):
            normalized = _normalize_item(item)
            if normalized is None:
                if media_type == "text" and preview is None and text_raw is None:
                    value = (item[0] if item else "") if isinstance(item, tuple) else str(item)
                    text_preview: dict[str, Any] = {"content": value[:_TEXT_PREVIEW_MAX]}
                    if len(value) > _TEXT_PREVIEW_MAX:
                        text_preview["truncated"] = True
                    text_raw = {**text_preview, "nodeId": node_id, "mediaType": media_type}
                continue
            item = normalized
        count += 1
        if preview is not None or not _previewable(media_type, item):
            continue
        enriched = {**item, "nodeId": node_id}
        enriched.setdefault("mediaType", media_type)
        if _is_text(media_type, item):
            text_file = text_file or enriched
        elif item.get("type") == "output":
            preview = enriched
        elif fallback is None:
            fallback = enriched
    return count, preview or fallback or text_file or text_raw


def count_previewable(outputs: dict[str, Any]) -> int:
    count = 0
    for _, media_type, item in _output_items(outputs):
        normalized = item if isinstance(item, dict) else _normalize_item(item)
        if normalized is not None and _previewable(media_type, normalized):
            count += 1
    return count


def from_queue_item(item: Any, status: str, detail: bool = False) -> dict[str, Any]:
    priority, prompt_id, prompt, extra_data = item[0], item[1], item[2], item[3]
    create_time, workflow_id = _metadata(extra_data)
    job = _prune(
        {
            "id": prompt_id,
            "status": status,
            "priority": priority,
            "create_time": create_time,
            "outputs_count": 0,
            "previewable_outputs_count": 0,
            "workflow_id": workflow_id,
        }
    )
    if detail:
        job["workflow"] = {"prompt": prompt, "extra_data": extra_data}
    return job


def from_history(prompt_id: str, entry: dict[str, Any], detail: bool = False) -> dict[str, Any]:
    priority, _, prompt, extra_data = entry["prompt"][:4]
    create_time, workflow_id = _metadata(extra_data)
    status_info = entry.get("status") or {}
    outputs = entry.get("outputs", {})
    outputs_count, preview_output = outputs_summary(outputs)

    start = end = error = None
    interrupted = False
    for message in status_info.get("messages", []):
        if not (isinstance(message, (list, tuple)) and len(message) >= 2):
            continue
        name, data = message[0], message[1]
        if not isinstance(data, dict):
            continue
        if name == "execution_start":
            start = data.get("timestamp")
        elif name in ("execution_success", "execution_error", "execution_interrupted"):
            end = data.get("timestamp")
            if name == "execution_error":
                error = data
            elif name == "execution_interrupted":
                interrupted = True

    failed = status_info.get("status_str") == "error"
    status = (CANCELLED if interrupted else FAILED) if failed else COMPLETED

    job = _prune(
        {
            "id": prompt_id,
            "status": status,
            "priority": priority,
            "create_time": create_time,
            "execution_start_time": start,
            "execution_end_time": end,
            "execution_error": error,
            "outputs_count": outputs_count,
            "previewable_outputs_count": count_previewable(outputs),
            "preview_output": preview_output,
            "workflow_id": workflow_id,
        }
    )
    if detail:
        job["outputs"] = _normalize_outputs(outputs)
        job["execution_status"] = entry.get("status")
        job["workflow"] = {"prompt": prompt, "extra_data": extra_data}
    return job


def get_job(
    prompt_id: str, running: list[Any], pending: list[Any], history: dict[str, Any]
) -> dict[str, Any] | None:
    if prompt_id in history:
        return from_history(prompt_id, history[prompt_id], detail=True)
    for item in running:
        if item[1] == prompt_id:
            return from_queue_item(item, IN_PROGRESS, detail=True)
    for item in pending:
        if item[1] == prompt_id:
            return from_queue_item(item, PENDING, detail=True)
    return None


def _sort_key(sort_by: str) -> Callable[[dict[str, Any]], Any]:
    if sort_by == "execution_duration":

        def duration(job: dict[str, Any]) -> Any:
            start = job.get("execution_start_time", 0)
            end = job.get("execution_end_time", 0)
            return end - start if end and start else 0

        return duration
    return lambda job: job.get("create_time", 0)


def list_jobs(
    running: list[Any],
    pending: list[Any],
    history: dict[str, Any],
    *,
    statuses: list[str] | None = None,
    workflow_id: str | None = None,
    sort_by: str = "created_at",
    sort_order: str = "desc",
    limit: int | None = None,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """(page of jobs, total before paging): running, then pending, then history, filtered,
    then stably sorted by ``create_time`` (or execution duration)."""
    wanted = ALL_STATUSES if statuses is None else statuses
    jobs: list[dict[str, Any]] = []
    if IN_PROGRESS in wanted:
        jobs += [from_queue_item(item, IN_PROGRESS) for item in running]
    if PENDING in wanted:
        jobs += [from_queue_item(item, PENDING) for item in pending]
    history_wanted = {COMPLETED, FAILED, CANCELLED} & set(wanted)
    if history_wanted:
        for prompt_id, entry in history.items():
            job = from_history(prompt_id, entry)
            if job["status"] in history_wanted:
                jobs.append(job)
    if workflow_id:
        jobs = [job for job in jobs if job.get("workflow_id") == workflow_id]
    jobs = sorted(jobs, key=_sort_key(sort_by), reverse=sort_order == "desc")
    total = len(jobs)
    if offset > 0:
        jobs = jobs[offset:]
    if limit is not None:
        jobs = jobs[:limit]
    return jobs, total


def cancel_job(
    prompt_id: str,
    running: list[Any],
    pending: list[Any],
    history: dict[str, Any],
    interrupt: Callable[[str], bool],
    dequeue: Callable[[str], bool],
) -> str:
    """Interrupt a running job, dequeue a pending one; finished or unknown ids are no-ops."""
    if any(item[1] == prompt_id for item in running):
        return CANCEL_RUNNING if interrupt(prompt_id) else CANCEL_UNKNOWN
    if any(item[1] == prompt_id for item in pending):
        if dequeue(prompt_id):
            return CANCEL_PENDING
        return CANCEL_RUNNING if interrupt(prompt_id) else CANCEL_UNKNOWN
    return CANCEL_TERMINAL if prompt_id in history else CANCEL_UNKNOWN
