"""Isolation, the reason comfyctl exists: server A misbehaving never delays or changes B's jobs.

Jobs on A (long) and B (short) are watched together while A refuses, hangs, restarts or
sends malformed JSON. B's completion must be reported within one poll interval of B
finishing (measured against B's own history timestamp), and B's record must be B's alone.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest
import requests
from workflows import slow_graph as graph

from comfyctl.ledger import Ledger

POLL = 0.5


def break_a(a, how: str) -> None:
    if how == "refused":
        a.stop()
    elif how == "hang":
        a.faults.http_hang = True
        a.drop_websockets()
    elif how == "malformed-json":
        a.faults.malformed_json = True
        a.drop_websockets()
    elif how == "restart":
        a.restart()


def assert_b_reported_within_a_poll(b, job_b: str, events: list[dict]) -> None:
    """B's success was reported, within one poll interval of B's own end (its history)."""
    done_b = [e for e in events if e.get("prompt_id") == job_b and e["status"] == "success"]
    assert done_b, f"B's success was never reported: {events[-3:]}"
    entry = requests.get(f"{b.url}/history/{job_b}", timeout=5).json()[job_b]
    finished_ms = dict(entry["status"]["messages"])["execution_success"]["timestamp"]
    reported = datetime.fromisoformat(done_b[0]["at"]).timestamp()
    assert reported - finished_ms / 1000 <= POLL + 0.5


@pytest.mark.parametrize("how", ["refused", "hang", "malformed-json", "restart"])
def test_a_misbehaving_never_delays_or_touches_b(
    emulator_factory, invoke, tmp_path, ledger_path, how
):
    a, b = emulator_factory(), emulator_factory()
    long_wf, short_wf = tmp_path / "long.json", tmp_path / "short.json"
    long_wf.write_text(json.dumps(graph(400, 0.05)))
    short_wf.write_text(json.dumps(graph(20, 0.1)))
    (job_a,) = invoke("submit", str(long_wf), "-s", a.url).stdout.split()
    (job_b,) = invoke("submit", str(short_wf), "-s", b.url).stdout.split()
    break_a(a, how)
    result = invoke("watch", job_a, job_b, "--json", "--poll-interval", str(POLL), "--timeout", "6")
    a.faults.clear()
    events = [json.loads(line) for line in result.stdout.splitlines()]
    # A never finishes normally: exit 5 (still running) or 1 (lost in the restart).
    assert result.exit_code == (1 if how == "restart" else 5), result.stderr
    assert_b_reported_within_a_poll(b, job_b, events)
    record_b = Ledger(ledger_path).get(job_b)
    assert record_b["status"] == "success" and record_b["server_url"] == b.url
    assert all(o["url"].startswith(b.url + "/") for o in record_b["outputs"])
    assert {h["server"] for h in record_b["progress_history"]} <= {record_b["server"]}
    record_a = Ledger(ledger_path).get(job_a)
    assert record_a["server_url"] == a.url
    if how == "restart":
        assert record_a["status"] == "lost"
    else:
        assert record_a["status"] in ("pending", "running")


def test_a_server_that_never_answers_a_handshake_does_not_hold_up_b_s_events(
    emulator_factory, invoke, tmp_path, ledger_path
):
    """The listen loop reads every server's sockets; a connection waits for its server's
    handshake reply in that server's own connector. A server that accepts connections and
    then says nothing (frozen) must not delay a word of B's."""
    import socket
    import threading

    from comfyctl.records import new_record

    hole = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with hole:
            while True:
                try:
                    held.append(hole.accept()[0])  # kept open, never answered
                except OSError:
                    return

    threading.Thread(target=accept, daemon=True).start()
    a_url = f"http://127.0.0.1:{hole.getsockname()[1]}"
    b = emulator_factory()
    short_wf = tmp_path / "short.json"
    short_wf.write_text(json.dumps(graph(10, 0.1)))
    (job_b,) = invoke("submit", str(short_wf), "-s", b.url).stdout.split()
    job_a = new_record("a" * 32, "frozen", a_url, "c" * 32, None)
    job_a.update(status="running", started_at=job_a["submitted_at"])
    with Ledger(ledger_path).transaction() as tasks:
        tasks.put(job_a)
    try:
        result = invoke(
            "watch",
            job_a["prompt_id"],
            job_b,
            "--json",
            "--poll-interval",
            str(POLL),
            "--timeout",
            "3",
        )
    finally:
        hole.close()
        for conn in held:
            conn.close()
    assert result.exit_code == 5, result.stderr  # A is still "running" at the timeout
    events = [json.loads(line) for line in result.stdout.splitlines()]
    progress_b = [e for e in events if e.get("prompt_id") == job_b and e["event"] == "progress"]
    assert len(progress_b) >= 10  # every step, from B's socket
    assert_b_reported_within_a_poll(b, job_b, events)


def test_crashed_submits_on_a_hung_server_do_not_hold_up_b(
    emulator_factory, invoke, tmp_path, ledger_path
):
    """Write-ahead records that a crashed submit left on A are settled by asking A; while
    A hangs, that must hold up only A's jobs (it held up everything: watch asked A about
    each such job in turn, a whole timeout each, before it followed any job)."""
    from comfyctl.records import new_record

    a, b = emulator_factory(), emulator_factory()
    short_wf = tmp_path / "short.json"
    short_wf.write_text(json.dumps(graph(10, 0.1)))
    (job_b,) = invoke("submit", str(short_wf), "-s", b.url).stdout.split()
    orphans = [new_record(f"{n}" * 32, "a", a.url, "c" * 32, None) for n in (1, 2)]
    with Ledger(ledger_path).transaction() as tasks:
        for orphan in orphans:
            orphan["submitter"] = {"finished": True}  # it gave up: nobody else settles it
            tasks.put(orphan)
    a.faults.http_hang = True
    try:
        ids = [o["prompt_id"] for o in orphans]
        result = invoke(
            "watch", *ids, job_b, "--json", "--poll-interval", str(POLL), "--timeout", "4"
        )
    finally:
        a.faults.clear()
    assert result.exit_code == 5, result.stderr  # A's jobs are still not settled
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert_b_reported_within_a_poll(b, job_b, events)
