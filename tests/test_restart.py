"""What proves a restart (comfyctl.restart): start-up lines after the job was seen alive,
or a later submission's prompt number; an empty or shrunken history proves nothing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from comfyctl.config import ServerSpec
from comfyctl.fleet import Probe, _server_anomalies
from comfyctl.records import new_record
from comfyctl.restart import ServerLog, mark_alive, no_proof, restart_proof

URL = "http://gpu1:8188"


def stamp(seconds_ago: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)).isoformat()


def job(
    pid: str, number: int | None = None, submitted_ago: float = 60.0, acked_ago: float = 59.0
) -> dict:
    rec = new_record(pid, "gpu1", URL, "c", None)
    rec.update(
        status="pending",
        number=number,
        submitted_at=stamp(submitted_ago),
        updated_at=stamp(acked_ago),
    )
    return rec


BOOT = "2026-12-01T10:00:00.000001"
SEEN = "2026-12-01T10:05:00.500000"
REBOOT = "2026-12-01T10:07:00.000001"


def test_start_up_lines_after_the_sighting_prove_a_restart() -> None:
    record = job("a")
    assert mark_alive(record, ServerLog(SEEN, [BOOT]))
    assert not mark_alive(record, ServerLog("2026-12-01T10:04:00", [BOOT]))  # older: kept
    proof = restart_proof(record, ServerLog("2026-12-01T10:07:05", [REBOOT]))
    assert proof is not None and REBOOT in proof and proof.endswith("it restarted")
    # The same process, still up: its start-up lines predate the sighting.
    assert restart_proof(record, ServerLog("2026-12-01T10:09:00", [BOOT])) is None
    assert "still running" in no_proof(record, ServerLog("2026-12-01T10:09:00", [BOOT]))
    # Rotated out, no log route, or never seen alive: no proof either way.
    assert restart_proof(record, ServerLog("2026-12-01T11:00:00", [])) is None
    assert "rotated out" in no_proof(record, ServerLog("2026-12-01T11:00:00", []))
    assert restart_proof(record, None) is None and "serves no log" in no_proof(record, None)
    unseen = job("b")
    assert restart_proof(unseen, ServerLog("2026-12-01T10:07:05", [REBOOT])) is None
    assert "never saw it" in no_proof(unseen, ServerLog("2026-12-01T10:07:05", [REBOOT]))


def test_a_later_submission_with_a_number_no_higher_proves_a_restart() -> None:
    record = job("a", number=29, submitted_ago=60, acked_ago=59)
    after_restart = job("b", number=0, submitted_ago=10, acked_ago=9)
    same_process = job("c", number=30, submitted_ago=10, acked_ago=9)
    front = job("d", number=-31, submitted_ago=10, acked_ago=9)
    # Sent concurrently (before "a" was acknowledged): a lower number proves nothing.
    racing = job("e", number=3, submitted_ago=59.5, acked_ago=58)
    proof = restart_proof(record, None, [after_restart])
    assert proof is not None and "number 0" in proof and "29" in proof
    assert restart_proof(record, None, [same_process, front, racing]) is None
    other_server = dict(after_restart, server_url="http://gpu2:8188")
    assert restart_proof(record, None, [other_server]) is None


def test_debug_tasks_names_lost_only_on_proof() -> None:
    spec = ServerSpec(name="gpu1", url=URL)
    seen = job("seen")
    mark_alive(seen, ServerLog(SEEN, [BOOT]))
    restarted = Probe(
        latency_ms=1.0,
        version="0.3.64",
        running=[],
        pending=[],
        unknown=["seen"],
        log=ServerLog("2026-12-01T10:07:05", [REBOOT]),
    )
    (anomaly,) = _server_anomalies(spec, restarted, [seen], [seen])
    assert anomaly["kind"] == "lost-in-restart" and REBOOT in anomaly["detail"]
    deleted = Probe(
        latency_ms=1.0,
        version="0.3.64",
        running=[],
        pending=[],
        unknown=["seen"],
        log=ServerLog("2026-12-01T10:09:00", [BOOT]),
    )
    (anomaly,) = _server_anomalies(spec, deleted, [seen], [seen])
    assert anomaly["kind"] == "unknown-to-server" and "not lost in a restart" in anomaly["detail"]
