"""watch listens to the head of each server's queue, not to every queued job at once (ComfyUI
sends every queue change to every open socket), and still hears every job's progress."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

from workflows import slow_graph

from comfyctl.context import AppContext
from comfyctl.emulator import Emulator
from comfyctl.tracker import LISTEN_AHEAD, Tracker, TrackerEvent, WatchOptions, _Listening


def wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_listeners_follow_the_head_of_the_queue_and_hear_every_job(
    emulator: Emulator, invoke, tmp_path: Path, ledger_path: Path
) -> None:
    jobs = LISTEN_AHEAD + 3
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(slow_graph(steps=3, seconds=0.1)))
    emulator.faults.stall_at_percent = 0  # the first job holds at its first step
    result = invoke(
        "submit", str(workflow), "-s", emulator.url, "--count", str(jobs), "--vary-seed"
    )
    ids = result.stdout.split()
    assert len(ids) == jobs
    app = AppContext(ledger_path=ledger_path)
    records = [app.ledger.get(pid) for pid in ids]
    events: list[TrackerEvent] = []
    tracker = Tracker(
        app.ledger,
        [r for r in records if r is not None],
        app.client_for_record,
        WatchOptions(poll_interval=0.2),
        events.append,
    )
    thread = threading.Thread(target=tracker.run, daemon=True)
    thread.start()
    # The first job runs (held at its first step) and the next LISTEN_AHEAD are listened
    # to while they wait; the rest are not (all of them would be there from the start).
    head = set(ids[: LISTEN_AHEAD + 1])
    wait_until(lambda: tracker.listened() >= head)
    assert tracker.records[ids[0]]["status"] == "running"
    assert tracker.listened() == head
    # One listen loop (for every server) and one connector per server, not a thread per job.
    names = [t.name for t in threading.enumerate()]
    assert names.count("listen") == 1
    assert names.count(f"connect {emulator.url}") == 1
    assert not [n for n in names if n.startswith("ws ")]

    emulator.faults.stall_at_percent = None
    thread.join(60)
    assert not thread.is_alive()
    assert {pid: r["status"] for pid, r in tracker.records.items()} == dict.fromkeys(ids, "success")
    heard = {e.record["prompt_id"] for e in events if e.kind == "progress" and e.record}
    assert heard == set(ids)  # listened to in time: progress comes over the socket only


def test_what_is_told_before_a_timeout_is_flushed_before_it_is_raised(
    emulator: Emulator, invoke, tmp_path: Path, ledger_path: Path
) -> None:
    # A job that ends just before --timeout is told about by the last announce, after the
    # loop's last flush: the display must still be flushed before the error shows.
    from comfyctl.records import SUCCESS, Observation

    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(slow_graph(steps=50, seconds=0.1)))
    ids = invoke("submit", str(workflow), "-s", emulator.url, "--count", "2").stdout.split()
    app = AppContext(ledger_path=ledger_path)
    calls: list[str] = []
    tracker = Tracker(
        app.ledger,
        [app.ledger.get(pid) for pid in ids],  # type: ignore[misc]
        app.client_for_record,
        WatchOptions(poll_interval=30, timeout=0.001, use_websocket=False),
        lambda event: calls.append(f"{event.kind} {event.record and event.record['status']}"),
        on_drained=lambda: calls.append("flush"),
    )
    # Heard at once; the deadline has passed by the time it is handled.
    tracker.inbox.put(Observation("finished", ids[1], emulator.url, outcome=SUCCESS))
    try:
        tracker.run()
    except TimeoutError:
        pass
    else:
        raise AssertionError("the tracker did not time out")
    assert f"state {SUCCESS}" in calls
    assert calls[-1] == "flush", calls[-5:]


def test_a_poll_leaves_the_end_of_a_job_to_the_socket_that_heard_it_start(
    ledger_path: Path,
) -> None:
    """A poll that finds a job finished reaches the tracker before the socket's last frames
    (read up to READ_GAP later) and would end the job without its last progress lines. A
    job whose socket heard its start is left to that socket by one poll (not by two: a
    socket that missed the end must not keep the job open)."""
    from comfyctl.ledger import Ledger
    from comfyctl.records import SUCCESS, Observation, new_record

    url = "http://127.0.0.1:9"
    record = new_record("p" * 32, "gpu1", url, "c" * 32, None)
    record.update(status="running", started_at=record["submitted_at"])
    with Ledger(ledger_path).transaction() as tasks:
        tasks.put(record)
    polls: list[float] = []

    class Socket:  # stands for a connected WebSocket (never read: no listen loop runs)
        pass

    class Client:  # a server whose /queue and /history say the job is done
        def __init__(self) -> None:
            self.url = url

        def snapshot(self, ids: list[str]) -> dict[str, Observation]:
            polls.append(time.monotonic())
            return {pid: Observation("finished", pid, url, outcome=SUCCESS) for pid in ids}

    def first_word(told_by_socket: bool) -> int:
        polls.clear()
        tracker = Tracker(
            Ledger(ledger_path), [dict(record)], lambda r: Client(), WatchOptions(0.05), print
        )
        state = tracker.servers[url]
        if told_by_socket:  # the listen loop's socket for it heard execution_start
            job = _Listening(record["prompt_id"], record["client_id"], threading.Event())
            job.sock, job.heard_start = Socket(), True
            state.listening[job.prompt_id] = job
        thread = threading.Thread(target=tracker._server_worker, args=(state,), daemon=True)
        thread.start()
        try:
            assert tracker.inbox.get(timeout=5).kind == "finished"
            return len(polls)
        finally:
            tracker.stop.set()
            thread.join(5)

    assert first_word(told_by_socket=False) == 1
    assert first_word(told_by_socket=True) == 2


def test_at_the_end_no_connection_starts_and_a_lease_goes_only_after_its_socket_closed(
    ledger_path: Path, monkeypatch
) -> None:
    """Connections are made by each server's connector, the listen loop is elsewhere: when
    the tracker stops, a job waiting for its connect is not connected any more, and the one
    being connected keeps its lease until its socket is closed (the server must forget the
    socket before the next holder connects as the same client_id)."""
    from comfyctl import tracker as tracker_module
    from comfyctl.errors import ServerUnreachable
    from comfyctl.ledger import Ledger
    from comfyctl.records import new_record

    log: list[str] = []
    url = "http://127.0.0.1:9"

    class Socket:
        def __init__(self, client_id: str) -> None:
            self.client_id = client_id

        def close(self) -> None:
            log.append(f"close {self.client_id}")

    class Client:  # a server whose handshakes take 1 s each, and whose HTTP is down
        def __init__(self) -> None:
            self.url = url

        def snapshot(self, ids: list[str]) -> dict:
            raise ServerUnreachable("slow", "timeout")

        def connect_ws(self, client_id: str) -> Socket:
            log.append(f"connect {client_id}")
            time.sleep(1.0)
            return Socket(client_id)

    real_release = tracker_module.release_quietly

    def release(store, names, owner) -> None:
        log.extend(f"release {name}" for name in sorted(names))
        real_release(store, names, owner)

    monkeypatch.setattr(tracker_module, "release_quietly", release)
    records = []
    with Ledger(ledger_path).transaction() as tasks:
        for i in range(3):
            record = new_record(f"p{i}", "slow", url, f"c{i}", None)
            record.update(status="running", started_at=record["submitted_at"])
            tasks.put(record)
            records.append(dict(record))
    tracker = Tracker(
        Ledger(ledger_path),
        records,
        lambda r: Client(),
        WatchOptions(timeout=0.5, poll_interval=0.2),
        lambda event: None,
    )
    with contextlib.suppress(TimeoutError):
        tracker.run()
    log.append("stopped")
    time.sleep(2.5)  # the connect in flight ends; no other may start
    started = [entry for entry in log if entry.startswith("connect")]
    assert started == [log[0]] and log.index("stopped") > 0, log  # only the one in flight
    first = started[0].split()[1]
    job = "p" + first[1:]
    assert log.index(f"close {first}") < log.index(f"release listen:{job}"), log
