"""Many observers, one job (issue 14): one process holds the job's listen lease and its
socket; every other watch / submit --wait follows through the store, and takes over
when the holder dies. Real subprocesses on a real socket, SIGKILL included."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from workflows import slow_graph

from comfyctl.emulator import Emulator
from comfyctl.lease import claim, leases_for, listen_lease, live_holder, new_owner
from comfyctl.ledger import Ledger
from comfyctl.records import new_record, submitter_gone

REPO = Path(__file__).resolve().parents[1]
LONG = slow_graph(steps=40, seconds=0.2)  # 8 s


def comfyctl(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "comfyctl", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def percents(evs: list[dict], after: str = "") -> list[float]:
    return [
        e["progress"]["percent"]
        for e in evs
        if e.get("event") == "progress" and e["at"] > after and e.get("progress")
    ]


def submit(invoke, tmp_path: Path, url: str) -> str:
    wf = tmp_path / "long.json"
    wf.write_text(json.dumps(LONG))
    result = invoke("submit", str(wf), "-s", url)
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def stamp() -> str:
    from comfyctl.records import now_iso

    return now_iso()


def wait_for_holder(ledger_path: Path, pid: str, timeout: float = 15) -> str:
    leases = leases_for(Ledger(ledger_path))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = live_holder(leases, listen_lease(pid))
        if holder is not None:
            return holder
        time.sleep(0.05)
    raise AssertionError("nobody took the lease")


def both_follow_to_the_end(first: subprocess.Popen[str], pid: str) -> None:
    """Start a second watcher of ``pid`` now; both must print progress to the end."""
    second_started = stamp()
    second = comfyctl("watch", pid, "--json", "--poll-interval", "0.5")
    out1, err1 = first.communicate(timeout=60)
    out2, err2 = second.communicate(timeout=60)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    ev1, ev2 = events(out1), events(out2)
    # The first was not silenced by the second: it kept hearing progress.
    assert len(set(percents(ev1, after=second_started))) >= 3
    assert len(set(percents(ev2))) >= 3  # the second followed it through the store
    assert ev1[-1]["status"] == ev2[-1]["status"] == "success"


def submit_wait(tmp_path: Path, url: str) -> tuple[subprocess.Popen[str], str]:
    wf = tmp_path / "long.json"
    wf.write_text(json.dumps(LONG))
    waiting = comfyctl("submit", str(wf), "-s", url, "--wait", "--json", "--poll-interval", "0.5")
    assert waiting.stdout is not None
    return waiting, json.loads(waiting.stdout.readline())["prompt_id"]


def test_two_watchers_both_see_progress_to_the_end(emulator, tmp_path, ledger_path, invoke):
    pid = submit(invoke, tmp_path, emulator.url)
    first = comfyctl("watch", pid, "--json", "--poll-interval", "0.5")
    wait_for_holder(ledger_path, pid)
    time.sleep(3)
    both_follow_to_the_end(first, pid)
    assert Ledger(ledger_path).get(pid)["status"] == "success"
    # Given up on the way out, not left to expire: a holder in another PID space or on
    # another host would otherwise keep the next watcher waiting for the expiry.
    assert leases_for(Ledger(ledger_path)).lease(listen_lease(pid)) is None


def test_a_watch_that_ends_leaves_no_lease_behind(emulator, tmp_path, ledger_path, run_comfyctl):
    for steps, args in ((10, ()), (40, ("--timeout", "1"))):  # to its end; before (exit 5)
        wf = tmp_path / f"wf{steps}.json"  # not the same graph: a cached run is instant
        wf.write_text(json.dumps(slow_graph(steps=steps, seconds=0.1)))
        submitted = run_comfyctl("submit", str(wf), "-s", emulator.url)
        (pid,) = submitted.stdout.split()
        watched = run_comfyctl("watch", pid, "--poll-interval", "0.5", *args)
        assert watched.returncode == (5 if args else 0), watched.stderr
        assert leases_for(Ledger(ledger_path)).lease(listen_lease(pid)) is None, args


def test_sigkill_of_the_holder_hands_over_and_the_end_is_kept(
    emulator, tmp_path, ledger_path, invoke
):
    pid = submit(invoke, tmp_path, emulator.url)
    first = comfyctl("watch", pid, "--json", "--poll-interval", "0.5")
    holder = wait_for_holder(ledger_path, pid)
    time.sleep(3)
    second = comfyctl("watch", pid, "--json", "--poll-interval", "0.5")
    time.sleep(1.5)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=10)
    killed = stamp()
    out2, err2 = second.communicate(timeout=60)
    assert second.returncode == 0, err2
    ev2 = events(out2)
    assert ev2[-1]["status"] == "success" and ev2[-1]["outputs"]
    assert len(set(percents(ev2, after=killed))) >= 2  # heard on its own socket now
    assert holder.split(":")[1] == str(first.pid)


def test_submit_wait_and_watch_share_one_listener(emulator, tmp_path, ledger_path):
    waiting, pid = submit_wait(tmp_path, emulator.url)
    wait_for_holder(ledger_path, pid)
    time.sleep(3)
    both_follow_to_the_end(waiting, pid)


def test_sigkill_of_submit_wait_hands_over_to_watch(emulator, tmp_path, ledger_path):
    waiting, pid = submit_wait(tmp_path, emulator.url)
    wait_for_holder(ledger_path, pid)
    watcher = comfyctl("watch", pid, "--json", "--poll-interval", "0.5")
    time.sleep(2)
    os.kill(waiting.pid, signal.SIGKILL)
    waiting.communicate(timeout=10)
    out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err
    assert events(out)[-1]["status"] == "success"


def test_detect_stuck_never_listens_to_a_job_a_watcher_holds(
    emulator, tmp_path, ledger_path, invoke
):
    g = slow_graph(steps=400, seconds=0.02)  # 52.25% after ~4 s, then it hangs
    g["2"]["inputs"].update(stall_at_step=210, stall_seconds=3600.0)
    wf = tmp_path / "stall.json"
    wf.write_text(json.dumps(g))
    pid = invoke("submit", str(wf), "-s", emulator.url).stdout.strip()
    out_file = (tmp_path / "watch.out").open("w+")  # 400 events: more than a pipe holds
    watcher = subprocess.Popen(
        [sys.executable, "-m", "comfyctl", "watch", pid, "--json", "--poll-interval", "0.5"],
        cwd=REPO,
        stdout=out_file,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    wait_for_holder(ledger_path, pid)
    deadline = time.monotonic() + 30
    while (Ledger(ledger_path).get(pid)["progress"] or {}).get("percent") != 52.25:
        assert time.monotonic() < deadline, "the watcher never recorded 52.25%"
        time.sleep(0.1)
    first = invoke("detect-stuck", "--stall-after", "2", "--nl")
    assert first.exit_code == 0, first.stdout
    assert "probe" not in Ledger(ledger_path).get(pid)  # it did not listen
    time.sleep(2.5)
    late = invoke("detect-stuck", "--stall-after", "2", "--nl")
    assert late.exit_code == 6
    (finding,) = [json.loads(line) for line in late.stdout.splitlines()]
    assert finding["condition"] == "stalled" and "52.25%" in finding["detail"]
    # The watcher still holds the job's socket: an interrupt reaches it as its end.
    requests.post(emulator.url + "/interrupt", json={"prompt_id": pid}, timeout=5)
    watcher.wait(timeout=30)
    out_file.seek(0)
    assert events(out_file.read())[-1]["status"] == "interrupted"


def test_a_lease_is_one_holders_and_a_dead_holders_is_taken_over(ledger_path):
    leases = leases_for(Ledger(ledger_path))
    name = listen_lease("job")
    mine, other = new_owner("a"), new_owner("b")
    assert claim(leases, name, mine) and not claim(leases, name, other)
    assert leases.claim_leases([name], mine, 5) == {name}  # renewed
    assert not leases.claim_leases([name], other, 5)
    assert live_holder(leases, name) == mine
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ghost = mine.replace(f":{os.getpid()}:", f":{dead.pid}:")
    assert leases.release_leases([name], mine) == {name} and claim(leases, name, ghost)
    assert live_holder(leases, name) is None  # its process is gone
    assert claim(leases, name, other) and live_holder(leases, name) == other
    assert not leases.release_leases([name], mine) and leases.release_leases([name], other)
    assert leases.claim_leases([name], mine, 0.05)
    time.sleep(0.1)
    assert leases.lease(name) is None and claim(leases, name, other)  # expired


def _names_written_in_another_pid_space() -> tuple[str, dict, int]:
    """A lease owner and a record's submitter as a process in its own PID namespace on
    this host writes them (a container sharing the hostname), and the pid it has there."""
    code = (
        "import json, os; from comfyctl.lease import new_owner; "
        "from comfyctl.records import new_record; "
        "r = new_record('job', 's', 'http://127.0.0.1:1', 'c', None); "
        "print(json.dumps([new_owner('watch'), r['submitter'], os.getpid()]))"
    )
    try:
        done = subprocess.run(
            ["unshare", "--pid", "--fork", sys.executable, "-c", code],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        pytest.skip("no unshare(1) here")
    if done.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here: {done.stderr.strip()}")
    owner, submitter, pid = json.loads(done.stdout)
    return owner, submitter, pid


def test_a_process_of_another_pid_space_on_this_host_is_not_taken_for_dead(ledger_path):
    # Its pid means nothing here: a pid that is not running here may be running there.
    owner, submitter, pid = _names_written_in_another_pid_space()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def named(process: str, role_and_nonce: str = "") -> str:
        """``process`` (``where:pid``) with ``dead.pid`` for its pid."""
        where, _, _ = process.partition(":")
        return f"{where}:{dead.pid}{role_and_nonce}"

    _, there_pid, rest = owner.split(":", 2)
    assert there_pid == str(pid)
    there = named(owner, f":{rest}")
    leases = leases_for(Ledger(ledger_path))
    name = listen_lease("job")
    assert leases.claim_leases([name], there, 5) == {name}
    assert live_holder(leases, name) == there
    assert not claim(leases, name, new_owner("watch"))  # waits for the lease to expire
    record = new_record("job", "s", "http://127.0.0.1:1", "c", None)
    record["submitter"] = {**submitter, "process": named(submitter["process"])}
    assert not submitter_gone(record)
    # The same names written here, by a process that is gone, are.
    here = named(new_owner("watch"), ":watch:0000")
    assert leases.release_leases([name], there) and leases.claim_leases([name], here, 5)
    assert live_holder(leases, name) is None
    mine = new_record("job", "s", "http://127.0.0.1:1", "c", None)
    mine["submitter"] = {**mine["submitter"], "process": named(mine["submitter"]["process"])}
    assert submitter_gone(mine)


class _SlowLooks:
    """A store whose reads for followers and lease claims take ``delay`` (PostgreSQL's one
    connection is the ledger writes' too, and one may wait on another host's row lock)."""

    def __init__(self, store: Ledger, delay: float) -> None:
        self._store, self.delay, self.slow = store, delay, False

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def load(self):
        if self.slow:
            time.sleep(self.delay)
        return self._store.load()

    def claim_leases(self, names, owner, ttl):
        if self.slow:
            time.sleep(self.delay)
        return self._store.claim_leases(names, owner, ttl)


def test_a_slow_store_never_holds_up_reading_the_sockets(tmp_path, ledger_path, invoke):
    """A watch that follows one job (another process holds it) and listens to another:
    however long its looks at the store take, the socket of the job it listens to is read
    on time (the store is the leases thread's to wait for, never the listen loop's)."""
    from comfyctl.context import AppContext
    from comfyctl.tracker import Tracker, WatchOptions

    followed_on, listened_on = Emulator().start(), Emulator().start()
    try:
        wf = tmp_path / "wf.json"
        wf.write_text(json.dumps(slow_graph(steps=30, seconds=0.1)))
        followed = invoke("submit", str(wf), "-s", followed_on.url).stdout.strip()
        listened = invoke("submit", str(wf), "-s", listened_on.url).stdout.strip()
        app = AppContext(ledger_path=ledger_path)
        assert claim(app.ledger, listen_lease(followed), "elsewhere:1:watch:x", ttl=600)
        store = _SlowLooks(app.ledger, delay=2.0)
        heard: list[float] = []

        def on_event(event) -> None:
            if event.kind == "progress" and event.record["prompt_id"] == listened:
                heard.append(time.monotonic())

        records = [app.ledger.get(followed), app.ledger.get(listened)]
        tracker = Tracker(store, records, app.client_for_record, WatchOptions(), on_event)
        store.slow = True
        tracker.run()
        for thread in tracker._threads:  # a slow store call may still be out: not in others' tests
            thread.join(5)
    finally:
        followed_on.stop()
        listened_on.stop()
    assert tracker.records[listened]["status"] == "success"
    gaps = [later - earlier for earlier, later in itertools.pairwise(heard)]
    assert len(heard) >= 10 and max(gaps) < 1.0, gaps


def test_a_claim_that_comes_back_after_the_end_gives_its_leases_up(ledger_path, invoke, tmp_path):
    """The leases thread may be in a claim when the tracker stops: the listen loop has let
    go of what was held by then, so what that claim won is given up at once (else the
    next watcher of the job would wait for the lease to expire)."""
    from comfyctl.context import AppContext
    from comfyctl.lease import live_holder
    from comfyctl.tracker import Tracker, WatchOptions

    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(slow_graph(steps=1, seconds=0.1)))
    with Emulator() as emu:
        pid = invoke("submit", str(wf), "-s", emu.url).stdout.strip()
    app = AppContext(ledger_path=ledger_path)
    tracker: Tracker

    class StopsMidClaim(_SlowLooks):
        def claim_leases(self, names, owner, ttl):
            won = super().claim_leases(names, owner, ttl)
            tracker.stop.set()  # the end comes while this call is out
            return won

    store = StopsMidClaim(app.ledger, delay=0.0)
    tracker = Tracker(store, [app.ledger.get(pid)], app.client_for_record, WatchOptions(), print)
    tracker._claim([pid])
    assert not tracker._held.get(pid)
    assert live_holder(leases_for(app.ledger), listen_lease(pid)) is None


def test_the_leases_thread_outlives_an_unexpected_error(ledger_path, invoke, tmp_path):
    """A bug in following another holder's job must not end the renewals of the leases
    this watch holds: they would expire, and a second watcher would connect as the job's
    client_id beside this one."""
    from comfyctl.context import AppContext
    from comfyctl.tracker import RENEW_EVERY, Tracker, WatchOptions

    def a_bug(prompt_ids: list[str]) -> None:
        raise RuntimeError("a bug")

    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(slow_graph(steps=40, seconds=0.1)))
    with Emulator() as followed_on, Emulator() as listened_on:
        followed = invoke("submit", str(wf), "-s", followed_on.url).stdout.strip()
        listened = invoke("submit", str(wf), "-s", listened_on.url).stdout.strip()
        app = AppContext(ledger_path=ledger_path)
        assert claim(app.ledger, listen_lease(followed), "elsewhere:1:watch:x", ttl=600)
        records = [app.ledger.get(followed), app.ledger.get(listened)]
        tracker = Tracker(app.ledger, records, app.client_for_record, WatchOptions(), print)
        tracker._observe = a_bug  # type: ignore[method-assign]
        runner = threading.Thread(target=tracker.run, daemon=True)
        runner.start()
        try:
            time.sleep(0.5)
            first = app.ledger.lease(listen_lease(listened))
            time.sleep(2 * RENEW_EVERY)
            later = app.ledger.lease(listen_lease(listened))
        finally:
            runner.join(30)  # both jobs end in about 4 s
            for thread in tracker._threads:
                thread.join(5)
    assert not runner.is_alive()
    assert first is not None and later is not None and later.owner == tracker.owner
    assert later.expires_at > first.expires_at  # renewed after the errors


def test_a_job_handed_to_the_listen_loop_as_the_watch_ends_gives_its_lease_up(
    tmp_path: Path,
) -> None:
    """The job ended (a poll said so) before the listen loop took it in: its lease, claimed
    at the start, is given up all the same, not left to expire (a loaded machine)."""
    from comfyctl.tracker import Tracker, WatchOptions

    ledger = Ledger(tmp_path / "ledger.json")
    record = {**new_record("job-1", "a", "http://127.0.0.1:1", "c", None), "status": "pending"}
    with ledger.transaction() as tasks:
        tasks.put(record)
    tracker = Tracker(ledger, [record], lambda r: None, WatchOptions(), print)
    tracker._claim(["job-1"])
    assert leases_for(ledger).lease(listen_lease("job-1")) is not None
    tracker._start_listeners()  # handed over; the loop has not run a round yet
    tracker.stop.set()
    tracker._listen_loop()
    tracker._release_ended()
    assert leases_for(ledger).lease(listen_lease("job-1")) is None
