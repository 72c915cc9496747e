"""Detection with no watcher (issue 14): stalls found by detect-stuck from cron alone,
sound restart evidence (a deleted history entry is not a restart), and foreign jobs
that block ours named."""

from __future__ import annotations

import json
import threading
import time

import requests
from workflows import slow_graph, submit_jobs

from comfyctl.ledger import Ledger


def stalling(steps: int = 400, at: int = 210) -> dict:
    """Reports steps 1..at-1, then hangs: 209/400 is the seed's 52.25%."""
    g = slow_graph(steps=steps, seconds=0.001)
    g["2"]["inputs"].update(stall_at_step=at, stall_seconds=3600.0)
    return g


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_cron_only_finds_the_stall_and_never_the_slow_steady_job(
    emulator_factory, tmp_path, ledger_path, invoke, run_comfyctl
):
    stuck_server, slow_server = emulator_factory(), emulator_factory()
    (stuck,) = submit_jobs(invoke, tmp_path, stuck_server.url, stalling())
    (slow,) = submit_jobs(invoke, tmp_path, slow_server.url, slow_graph(steps=80, seconds=0.5))
    time.sleep(0.5)
    reports = []
    for run in range(3):
        if run:
            time.sleep(5)
        done = run_comfyctl("detect-stuck", "--stall-after", "5", "--nl")
        assert done.returncode in (0, 6), done.stderr
        reports.append(lines(done.stdout))
        if any(f["condition"] == "stalled" for f in reports[-1]):
            break
    assert reports[0] == []  # one look proves nothing
    (finding,) = reports[-1]
    assert finding["condition"] == "stalled" and finding["prompt_id"] == stuck
    assert "node 2 (SlowProgress)" in finding["detail"]
    assert "last percent unknown" in finding["detail"]  # nobody ever heard a percentage
    assert finding["evidence"]["node"] == "2" and finding["evidence"]["still_for_s"] >= 5
    assert all(f["prompt_id"] != slow for report in reports for f in report)
    probe = Ledger(ledger_path).get(slow)["probe"]
    assert probe["value"] is not None and probe["checks"] == 1  # heard moving every time


def test_a_stall_a_watcher_saw_reaching_52_25_percent_keeps_its_percentage(
    emulator, tmp_path, ledger_path, invoke
):
    (pid,) = submit_jobs(invoke, tmp_path, emulator.url, stalling())
    watched = invoke("watch", pid, "--timeout", "1.5", "--poll-interval", "0.3")
    assert watched.exit_code == 5
    # Right after: what the watcher saw is fresh. (Read from the ledger only: listening
    # and confirming would take the 3 s themselves, and then it is rightly a stall.)
    early = invoke("detect-stuck", "--stall-after", "3", "--listen", "0", "--confirm", "0", "--nl")
    assert early.exit_code == 0, early.stdout + early.stderr
    time.sleep(3.5)
    late = invoke("detect-stuck", "--stall-after", "3", "--nl")
    assert late.exit_code == 6
    (finding,) = lines(late.stdout)
    assert "last percent 52.25%" in finding["detail"]


def test_a_deleted_history_entry_is_forgotten_not_lost(emulator, tmp_path, ledger_path, invoke):
    (pid,) = submit_jobs(invoke, tmp_path, emulator.url, slow_graph(steps=2, seconds=0.01))
    emulator.wait_idle(timeout=10)
    requests.post(emulator.url + "/history", json={"delete": [pid]}, timeout=5)
    detected = invoke("detect-stuck", "--nl")
    assert detected.exit_code == 6
    (finding,) = lines(detected.stdout)
    assert finding["condition"] == "forgotten", finding
    assert "still running" in finding["detail"] and "restarted" not in finding["detail"]
    report = json.loads(invoke("debug-tasks", "--json").stdout)
    kinds = {a["kind"] for a in report["anomalies"]}
    assert "lost-in-restart" not in kinds and "unknown-to-server" in kinds
    recovered = invoke("recover", "--resubmit", "--nl")
    assert recovered.exit_code == 0, recovered.stdout
    (action,) = lines(recovered.stdout)
    assert action["action"] == "mark-forgotten" and action["new_prompt_id"] is None
    record = Ledger(ledger_path).get(pid)
    assert record["status"] == "lost" and record["error"]["type"] == "forgotten"
    assert not [r for r in Ledger(ledger_path).load().values() if r.get("resubmitted_from") == pid]
    assert invoke("detect-stuck", "--nl").exit_code == 0
    assert invoke("recover", "--resubmit", "--nl").stdout == ""
    # Only when asked for by name.
    asked = invoke("recover", "--resubmit-forgotten", "--nl")
    assert asked.exit_code == 0, asked.stdout
    (action,) = lines(asked.stdout)
    assert action["action"] == "resubmit" and action["new_prompt_id"]
    emulator.wait_idle(timeout=10)
    again = lines(invoke("recover", "--resubmit-forgotten", "--nl").stdout)
    assert [a["action"] for a in again] == ["record-success"]  # the new job, seen finished
    assert (
        len([r for r in Ledger(ledger_path).load().values() if r.get("resubmitted_from") == pid])
        == 1
    )


def test_after_a_real_restart_queued_jobs_are_lost_and_resubmitted_once(
    emulator, tmp_path, ledger_path, invoke
):
    ids = submit_jobs(invoke, tmp_path, emulator.url, slow_graph(steps=200, seconds=0.05), count=3)
    time.sleep(0.3)
    emulator.restart()
    detected = invoke("detect-stuck", "--nl")
    assert detected.exit_code == 6
    found = lines(detected.stdout)
    assert sorted(f["prompt_id"] for f in found) == sorted(ids)
    assert all(f["condition"] == "lost" and "start-up lines" in f["detail"] for f in found)
    assert all(f["evidence"]["restart"] for f in found)
    assert invoke("recover", "--resubmit", "--nl").exit_code == 0
    assert invoke("recover", "--resubmit", "--nl").stdout == ""
    children = [r for r in Ledger(ledger_path).load().values() if r.get("resubmitted_from")]
    assert sorted(r["resubmitted_from"] for r in children) == sorted(ids)
    queue = requests.get(emulator.url + "/queue", timeout=5).json()
    assert sorted(i[1] for i in queue["queue_running"] + queue["queue_pending"]) == sorted(
        r["prompt_id"] for r in children
    )


def test_a_foreign_stalled_job_ahead_of_ours_is_named(emulator, tmp_path, ledger_path, invoke):
    foreign = requests.post(
        emulator.url + "/prompt", json={"prompt": stalling(), "client_id": "webui-7f3a"}, timeout=5
    ).json()["prompt_id"]
    (ours,) = submit_jobs(invoke, tmp_path, emulator.url, slow_graph(steps=2, seconds=0.01))
    first = invoke("detect-stuck", "--stall-after", "1", "--nl")
    assert first.exit_code == 0, first.stdout  # first sighting: just timed
    time.sleep(1.5)
    second = invoke("detect-stuck", "--stall-after", "1", "--nl")
    assert second.exit_code == 6
    (finding,) = lines(second.stdout)
    assert finding["prompt_id"] == ours and finding["condition"] == "blocked"
    assert foreign in finding["detail"] and "did not submit" in finding["detail"]
    assert finding["evidence"]["blocking_client_id"] == "webui-7f3a"
    assert finding["evidence"]["running_for_s"] >= 1
    report = json.loads(invoke("debug-tasks", "--json").stdout)
    (anomaly,) = [a for a in report["anomalies"] if a["kind"] == "foreign-job-blocking"]
    assert anomaly["prompt_id"] == foreign and anomaly["running_for_s"] >= 1
    assert "not submitted by comfyctl" in anomaly["detail"]
    table = invoke("debug-tasks")
    assert foreign in table.stdout
    requests.post(emulator.url + "/interrupt", json={"prompt_id": foreign}, timeout=5)


def test_watch_calls_a_job_deleted_from_the_queue_forgotten_and_recover_keeps_it(
    emulator, tmp_path, ledger_path, invoke
):
    (ahead,) = submit_jobs(invoke, tmp_path, emulator.url, slow_graph(steps=100, seconds=0.05))
    (deleted,) = submit_jobs(invoke, tmp_path, emulator.url, slow_graph(steps=2, seconds=0.01))
    threading.Timer(
        0.8, lambda: requests.post(emulator.url + "/queue", json={"delete": [deleted]}, timeout=5)
    ).start()
    watched = invoke("watch", deleted, "--poll-interval", "0.3", "--timeout", "20")
    assert watched.exit_code == 1
    record = Ledger(ledger_path).get(deleted)
    assert record["status"] == "lost" and record["error"]["type"] == "forgotten"
    assert "still running" in record["error"]["message"]
    recovered = invoke("recover", "--resubmit", deleted, "--nl")
    (action,) = lines(recovered.stdout)
    assert action["action"] == "mark-forgotten" and action["new_prompt_id"] is None
    requests.post(emulator.url + "/interrupt", json={"prompt_id": ahead}, timeout=5)
