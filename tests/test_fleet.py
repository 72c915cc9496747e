"""debug-tasks anomalies that need a history to show: unusually long runs (restarts: see
test_restart.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from comfyctl.fleet import _slow_jobs
from comfyctl.records import new_record

URL = "http://gpu1:8188"


def stamp(seconds_ago: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).isoformat()


def record(
    pid: str,
    status: str,
    started_ago: float,
    finished_ago: float | None = None,
    number: int | None = None,
) -> dict:
    rec = new_record(pid, "gpu1", URL, "c", None)
    rec.update(
        status=status,
        started_at=stamp(started_ago),
        number=number,
        finished_at=stamp(finished_ago) if finished_ago is not None else None,
    )
    return rec


def test_a_job_running_far_longer_than_finished_ones_is_named() -> None:
    done = [record(f"d{i}", "success", 100 + 10 * i, 90 + 10 * i) for i in range(5)]
    running = [record("slow", "running", 600), record("normal", "running", 20)]
    found = _slow_jobs(done + running)
    assert [a["prompt_id"] for a in found] == ["slow"]
    assert found[0]["kind"] == "running-long" and "typically take 10s" in found[0]["detail"]
    assert _slow_jobs(done[:2] + running) == []  # too little history to judge
