"""detect-stuck and recover against emulated servers (issue 6 acceptance)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import requests
from workflows import slow_graph

from comfyctl.ledger import Ledger

graph = partial(slow_graph, steps=5, seconds=0.02)


def submit(invoke, tmp_path: Path, server: str, g: dict | None = None, count: int = 1) -> list:
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(g or graph()))
    result = invoke("submit", str(wf), "-s", server, "--count", str(count))
    assert result.exit_code == 0, result.stderr
    return result.stdout.split()


def findings(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_stall_at_52_25_is_reported_after_the_threshold_not_before(
    invoke, emulator, tmp_path, ledger_path
):
    emulator.faults.stall_at_percent = 52.25
    (pid,) = submit(invoke, tmp_path, emulator.url, graph(steps=400, seconds=0.001))
    # A watcher records progress into the ledger, then goes away.
    watched = invoke("watch", pid, "--timeout", "1.5", "--poll-interval", "0.3")
    assert watched.exit_code == 5
    record = Ledger(ledger_path).get(pid)
    assert record["progress"]["percent"] == 52.25
    early = invoke("detect-stuck", "--stall-after", "4", "--nl")
    assert early.exit_code == 0, early.stdout
    time.sleep(4.5)
    late = invoke("detect-stuck", "--stall-after", "4", "--nl")
    assert late.exit_code == 6
    (finding,) = findings(late)
    assert finding["condition"] == "stalled" and finding["prompt_id"] == pid
    assert "52.25%" in finding["detail"] and finding["server_url"] == emulator.url


def test_sample_decides_stalls_when_nobody_recorded_progress(
    invoke, emulator, tmp_path, ledger_path
):
    emulator.faults.stall_at_percent = 52.25
    (pid,) = submit(invoke, tmp_path, emulator.url, graph(steps=400, seconds=0.001))
    time.sleep(1.0)
    assert Ledger(ledger_path).get(pid)["progress"] is None  # nobody was watching
    result = invoke("detect-stuck", "--sample", "1", "--stall-after", "1000", "--nl")
    assert result.exit_code == 6
    assert findings(result)[0]["condition"] == "stalled"
    emulator.faults.stall_at_percent = None


def test_killed_watcher_finished_unnoticed_then_recovered_once(
    emulator, tmp_path, ledger_path, invoke
):
    (pid,) = submit(invoke, tmp_path, emulator.url, graph(steps=30, seconds=0.05))
    watcher = subprocess.Popen(
        [sys.executable, "-m", "comfyctl", "watch", pid, "--poll-interval", "0.3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(0.8)
    os.kill(watcher.pid, signal.SIGKILL)
    watcher.wait()
    emulator.wait_idle(timeout=20)
    assert Ledger(ledger_path).get(pid)["status"] in ("pending", "running")
    detected = invoke("detect-stuck", "--nl")
    assert detected.exit_code == 6
    assert findings(detected)[0]["condition"] == "finished-unnoticed"
    recovered = invoke("recover", "--nl")
    assert recovered.exit_code == 0, recovered.stdout + recovered.stderr
    (action,) = findings(recovered)
    assert action["action"] == "record-success" and action["resolved"]
    record = Ledger(ledger_path).get(pid)
    assert record["status"] == "success" and record["recovered"]["how"] == "finished-unnoticed"
    assert record["outputs"] and all(
        o["url"].startswith(emulator.url + "/view?") for o in record["outputs"]
    )
    again = invoke("recover", "--nl")
    assert again.exit_code == 0 and again.stdout == ""


def test_the_evidence_of_a_job_a_server_lost_or_forgot_reads_as_one_sentence(
    emulator, tmp_path, ledger_path, invoke
):
    """What the server no longer knows, then why it is lost, joined once: no "... the
    history of gpu2 does not know it"."""
    ids = submit(invoke, tmp_path, emulator.url, graph(steps=200, seconds=0.05), 2)
    time.sleep(0.3)
    emulator.restart()
    server = Ledger(ledger_path).get(ids[0])["server"]
    detected = invoke("detect-stuck", "--nl")
    [first, second] = findings(detected)
    for finding in (first, second):
        assert finding["detail"].startswith(
            f"{server} no longer knows it (not pending, not running, not in its history); "
            f"{server} started again at "
        ), finding["detail"]
        assert finding["detail"].endswith("it restarted")
    # A watch records them lost (it judges as detect-stuck does), and nobody resubmits them.
    watched = invoke("watch", "--poll-interval", "0.1", "--no-websocket", "--timeout", "30")
    assert watched.exit_code == 1, watched.stderr
    again = findings(invoke("detect-stuck", "--nl"))
    assert again and all(
        f["detail"].startswith(
            f"recorded lost earlier and not resubmitted, and {server} still does not know it; "
        )
        for f in again
    ), again


def test_restart_lost_resubmitted_exactly_once_by_concurrent_recovers(
    emulator, tmp_path, ledger_path, invoke
):
    (pid,) = submit(invoke, tmp_path, emulator.url, graph(steps=200, seconds=0.05))
    time.sleep(0.3)
    emulator.restart()
    detected = invoke("detect-stuck", "--nl")
    assert detected.exit_code == 6
    assert findings(detected)[0]["condition"] == "lost"
    assert findings(detected)[0]["detail"].endswith("it restarted")  # the evidence is named
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "comfyctl", "recover", "--resubmit", "--nl"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    ledger = Ledger(ledger_path).load()
    old = ledger[pid]
    children = [r for r in ledger.values() if r.get("resubmitted_from") == pid]
    assert len(children) == 1
    (child,) = children
    assert old["superseded_by"] == child["prompt_id"]
    assert child["server_url"] == emulator.url
    assert old["status"] == "lost"
    # The server really got exactly one new job (the old one died with the restart).
    queue = requests.get(emulator.url + "/queue", timeout=5).json()
    assert [item[1] for item in queue["queue_running"] + queue["queue_pending"]] == [
        child["prompt_id"]
    ]
    third = invoke("recover", "--resubmit", "--nl")
    assert third.exit_code == 0
    assert (
        len([r for r in Ledger(ledger_path).load().values() if r.get("resubmitted_from") == pid])
        == 1
    )


def test_healthy_server_recovered_while_hanging_one_is_left_alone(
    emulator_factory, tmp_path, ledger_path, invoke
):
    a, b = emulator_factory(), emulator_factory()
    a_ids = submit(invoke, tmp_path, a.url, graph(steps=2, seconds=0.01), count=2)
    b_ids = submit(invoke, tmp_path, b.url, graph(steps=2, seconds=0.01), count=2)
    a.wait_idle(timeout=10)
    b.wait_idle(timeout=10)
    before_b = {pid: Ledger(ledger_path).get(pid) for pid in b_ids}
    b.faults.http_hang = True
    started = time.monotonic()
    result = invoke("recover", "--server-timeout", "2", "--nl")
    elapsed = time.monotonic() - started
    b.faults.http_hang = False
    assert elapsed < 2 + 3.5
    actions = {a["prompt_id"]: a for a in findings(result)}
    assert result.exit_code == 1  # B's problems remain
    for pid in a_ids:
        assert actions[pid]["resolved"] and Ledger(ledger_path).get(pid)["status"] == "success"
    for pid in b_ids:
        assert actions[pid]["condition"] == "unreachable" and not actions[pid]["resolved"]
        assert Ledger(ledger_path).get(pid) == before_b[pid]


def test_error_at_node_is_failed_unnoticed_with_the_servers_message(
    emulator, tmp_path, ledger_path, invoke
):
    emulator.faults.error_at_node = "2"
    (pid,) = submit(invoke, tmp_path, emulator.url)
    emulator.wait_idle(timeout=10)
    detected = invoke("detect-stuck", "--nl")
    assert detected.exit_code == 6
    assert findings(detected)[0]["condition"] == "failed-unnoticed"
    assert invoke("recover").exit_code == 0
    record = Ledger(ledger_path).get(pid)
    assert record["status"] == "error"
    assert record["error"]["message"] and record["error"]["node_id"] == "2"


def test_quiet_prints_nothing_and_exit_codes_hold(emulator, tmp_path, invoke):
    assert invoke("detect-stuck", "--quiet").exit_code == 0
    submit(invoke, tmp_path, emulator.url, graph(steps=1, seconds=0.01))
    emulator.wait_idle(timeout=10)
    quiet = invoke("detect-stuck", "--quiet")
    assert quiet.exit_code == 6 and quiet.stdout == "" and quiet.stderr == ""
    emulator.stop()
    down = invoke("detect-stuck", "--nl", "--server-timeout", "1")
    assert down.exit_code == 3
    assert findings(down)[0]["condition"] == "unreachable"


def test_dry_run_changes_nothing(emulator, tmp_path, ledger_path, invoke):
    (pid,) = submit(invoke, tmp_path, emulator.url, graph(steps=1, seconds=0.01))
    emulator.wait_idle(timeout=10)
    before = ledger_path.read_bytes()
    result = invoke("recover", "--dry-run", "--nl")
    assert result.exit_code == 1  # the problem remains
    (action,) = findings(result)
    assert action["dry_run"] and action["action"] == "record-success"
    assert action["prompt_id"] == pid
    assert ledger_path.read_bytes() == before


def test_lost_job_fails_over_with_to(emulator_factory, tmp_path, ledger_path, invoke):
    a, b = emulator_factory(), emulator_factory()
    (pid,) = submit(invoke, tmp_path, a.url, graph(steps=100, seconds=0.05))
    a.restart()
    result = invoke("recover", "--resubmit", "--to", b.url, "--nl")
    assert result.exit_code == 0, result.stdout + result.stderr
    (action,) = findings(result)
    ledger = Ledger(ledger_path).load()
    child = ledger[action["new_prompt_id"]]
    assert child["server_url"] == b.url and child["resubmitted_from"] == pid
    assert ledger[pid]["superseded_by"] == child["prompt_id"]
    assert ledger[pid]["server_url"] == a.url  # the old binding never changes


def test_interrupt_stalled_cancels_on_its_own_server(
    emulator_factory, tmp_path, ledger_path, invoke
):
    a, b = emulator_factory(), emulator_factory()
    a.faults.stall_at_percent = 52.25
    (stalled,) = submit(invoke, tmp_path, a.url, graph(steps=400, seconds=0.001))
    (busy,) = submit(invoke, tmp_path, b.url, graph(steps=200, seconds=0.05))
    time.sleep(1.0)
    result = invoke(
        "recover", "--sample", "1", "--stall-after", "1000", "--interrupt-stalled", "--nl"
    )
    actions = {a["prompt_id"]: a for a in findings(result)}
    assert actions[stalled]["action"] == "interrupt" and actions[stalled]["resolved"]
    assert busy not in actions
    a.wait_idle(timeout=10)
    entry = requests.get(f"{a.url}/history/{stalled}", timeout=5).json()[stalled]
    assert entry["status"]["status_str"] == "error"  # interrupted on the server
    queue_b = requests.get(b.url + "/queue", timeout=5).json()
    assert [item[1] for item in queue_b["queue_running"]] == [busy]
    assert Ledger(ledger_path).get(stalled)["status"] == "cancelled"


def test_queued_too_long_only_with_max_queue_age(emulator, tmp_path, invoke):
    submit(invoke, tmp_path, emulator.url, graph(steps=200, seconds=0.05))
    (waiting,) = submit(invoke, tmp_path, emulator.url, graph(steps=200, seconds=0.06))
    time.sleep(1.2)
    assert invoke("detect-stuck", "--nl").exit_code == 0
    result = invoke("detect-stuck", "--nl", "--max-queue-age", "1")
    assert result.exit_code == 6
    (finding,) = findings(result)
    assert finding["prompt_id"] == waiting and finding["condition"] == "queued-too-long"
    assert "position 1" in finding["detail"]


def test_a_job_watch_marked_lost_is_resubmitted_by_recover(emulator, tmp_path, ledger_path, invoke):
    (pid,) = submit(invoke, tmp_path, emulator.url, graph(steps=100, seconds=0.05))
    threading.Timer(0.6, emulator.restart).start()
    assert invoke("watch", pid, "--poll-interval", "0.3", "--timeout", "20").exit_code == 1
    assert Ledger(ledger_path).get(pid)["status"] == "lost"
    detected = invoke("detect-stuck", "--nl")
    assert detected.exit_code == 6 and findings(detected)[0]["condition"] == "lost"
    result = invoke("recover", "--resubmit", "--nl")
    assert result.exit_code == 0, result.stdout
    (action,) = findings(result)
    assert action["action"] == "resubmit" and action["new_prompt_id"]
    assert Ledger(ledger_path).get(pid)["superseded_by"] == action["new_prompt_id"]
    assert invoke("detect-stuck", "--nl").stdout.count('"lost"') == 0


def test_a_progressing_job_whose_watcher_died_is_not_called_stalled(
    emulator, tmp_path, ledger_path, invoke
):
    (pid,) = submit(invoke, tmp_path, emulator.url, graph(steps=200, seconds=0.05))
    watched = invoke("watch", pid, "--timeout", "1", "--poll-interval", "0.3")
    assert watched.exit_code == 5 and Ledger(ledger_path).get(pid)["progress"]
    time.sleep(2.5)  # the recorded progress is now older than the threshold
    result = invoke("detect-stuck", "--stall-after", "2", "--confirm", "1.5", "--nl")
    assert result.exit_code == 0, result.stdout  # its listen heard it move
    assert (
        Ledger(ledger_path).get(pid)["probe"]["since"]
        > Ledger(ledger_path).get(pid)["progress"]["updated_at"]
    )  # and recorded that
    time.sleep(2.5)
    trusting = invoke(
        "detect-stuck", "--stall-after", "2", "--listen", "0", "--confirm", "0", "--nl"
    )
    assert trusting.exit_code == 6  # without listening, the last recorded movement decides


def test_a_job_nobody_recorded_is_not_stalled_from_its_age_alone(emulator, tmp_path, invoke):
    submit(invoke, tmp_path, emulator.url, graph(steps=200, seconds=0.05))
    time.sleep(0.5)
    assert invoke("detect-stuck", "--stall-after", "0.1").exit_code == 0
    time.sleep(0.5)
    assert invoke("detect-stuck", "--stall-after", "0.1").exit_code == 0


@pytest.mark.parametrize("jobs_api", [False, True], ids=["classic", "jobs-api"])
def test_an_interrupt_by_someone_else_is_recorded_as_interrupted(
    emulator_factory, tmp_path, ledger_path, invoke, jobs_api
):
    """Both API generations give the same status for a run interrupted on the server."""
    emu = emulator_factory(jobs_api=jobs_api)
    (pid,) = submit(invoke, tmp_path, emu.url, graph(steps=200, seconds=0.05))
    time.sleep(0.5)
    requests.post(emu.url + "/interrupt", json={"prompt_id": pid}, timeout=5)
    emu.wait_idle(timeout=10)
    detected = invoke("detect-stuck", "--nl")
    (finding,) = findings(detected)
    assert finding["condition"] == "failed-unnoticed" and "interrupted" in finding["detail"]
    assert invoke("recover").exit_code == 0
    assert Ledger(ledger_path).get(pid)["status"] == "interrupted"


def test_a_resubmitted_job_lost_in_a_second_restart_is_proven_lost_and_resubmitted(
    emulator, tmp_path, ledger_path, invoke, run_comfyctl
):
    """recover --resubmit dates its new job on the server's log, as submit does: a second
    restart is proof against it too, so each lost job is resubmitted once."""
    (pid,) = submit(invoke, tmp_path, emulator.url, graph(steps=400, seconds=0.05))
    time.sleep(0.3)
    emulator.restart()
    first = invoke("recover", "--resubmit", "--nl")
    assert first.exit_code == 0, first.stdout + first.stderr
    (action,) = findings(first)
    assert action["prompt_id"] == pid and action["action"] == "resubmit"
    new = action["new_prompt_id"]
    assert Ledger(ledger_path).get(new).get("seen_alive")  # the restart evidence submit records
    time.sleep(0.3)
    emulator.restart()
    detected = run_comfyctl("detect-stuck", new, "--nl", "--listen", "0")
    assert detected.returncode == 6, detected.stdout + detected.stderr
    (finding,) = findings(detected)
    assert finding["condition"] == "lost", finding["detail"]
    assert finding["detail"].endswith("it restarted")
    second = run_comfyctl("recover", "--resubmit", new, "--nl")
    assert second.returncode == 0, second.stdout + second.stderr
    (again,) = findings(second)
    assert again["action"] == "resubmit" and again["resolved"], again
    ledger = Ledger(ledger_path).load()
    assert (
        ledger[new]["status"] == "lost" and ledger[new]["superseded_by"] == again["new_prompt_id"]
    )
    assert ledger[again["new_prompt_id"]]["resubmitted_from"] == new


def test_a_resubmit_whose_outcome_is_uncertain_names_the_new_job(
    emulator, tmp_path, ledger_path, invoke, config_path
):
    """The server took the resubmitted job and froze: recover cannot say it is queued,
    but it names the new job (its write-ahead record is kept, to be settled), and a later
    recover finds it resubmitted instead of sending it again."""
    config_path.write_text(
        f'[defaults]\ntimeout = 1\nconnect_timeout = 1\n[servers.a]\nurl = "{emulator.url}"\n'
    )
    (pid,) = submit(invoke, tmp_path, "a", graph(steps=200, seconds=0.05))
    time.sleep(0.3)
    emulator.restart()
    emulator.faults.reply, emulator.faults.reply_routes = "freeze", ("POST /prompt",)
    result = invoke("recover", "--resubmit", "--nl")
    assert result.exit_code == 1, result.stderr
    (action,) = findings(result)
    ledger = Ledger(ledger_path).load()
    [child] = [r for r in ledger.values() if r.get("resubmitted_from") == pid]
    assert action["new_prompt_id"] == child["prompt_id"] and not action["resolved"]
    assert "uncertain" in action["detail"]
    assert ledger[pid]["superseded_by"] == child["prompt_id"]
    emulator.faults.clear()
    again = invoke("recover", "--resubmit", "--nl")
    assert again.exit_code == 0, again.stdout + again.stderr
    queue = requests.get(emulator.url + "/queue", timeout=5).json()
    queued = [item[1] for item in queue["queue_running"] + queue["queue_pending"]]
    assert queued == [child["prompt_id"]]
