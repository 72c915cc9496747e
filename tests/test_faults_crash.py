"""Crash injection: SIGKILL of submit, watch and recover at random moments.

After every kill: the ledger parses; every printed prompt_id is in it; every job the server
received is in it (write-ahead); and no later recover ever submits a job twice.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import pytest
import requests
from workflows import slow_graph as graph

from comfyctl.ledger import Ledger

pytestmark = pytest.mark.faults


def comfyctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "comfyctl", *args]


def kill_at_random(args: list[str], low: float, high: float, rng: random.Random) -> str:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(rng.uniform(low, high))
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    return out


def server_ids(url: str) -> set[str]:
    queue = requests.get(url + "/queue", timeout=5).json()
    history = requests.get(url + "/history", timeout=5).json()
    return {i[1] for i in queue["queue_running"] + queue["queue_pending"]} | set(history)


def test_sigkill_submit_loses_nothing_and_recover_never_resubmits_twice(
    emulator, tmp_path, ledger_path, fault_counts
):
    rng = random.Random(7)
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph(1, 0.001)))
    trials = 50
    for _ in range(trials):
        printed = kill_at_random(
            comfyctl("submit", str(wf), "-s", emulator.url, "--count", "3", "--vary-seed"),
            0.15,
            0.6,
            rng,
        ).split()
        ledger = Ledger(ledger_path).load()  # raises if torn
        assert set(printed) <= set(ledger)
    fault_counts["SIGKILL trials: submit"] = trials
    emulator.wait_idle(timeout=30)
    received = server_ids(emulator.url)
    ledger = Ledger(ledger_path).load()
    assert received <= set(ledger), "a job the server got is missing from the ledger"
    # Orphaned write-ahead records are settled by asking the server, never by resending.
    result = subprocess.run(
        comfyctl("recover", "--resubmit", "--nl"), capture_output=True, text=True, timeout=120
    )
    assert "Traceback" not in result.stderr
    after = Ledger(ledger_path).load()
    children = [r for r in after.values() if r.get("resubmitted_from")]
    assert all(r["resubmitted_from"] not in received for r in children)
    parents = [r["resubmitted_from"] for r in children]
    assert len(parents) == len(set(parents))
    assert not [
        r
        for r in after.values()
        if r["status"] == "submitting" and r["prompt_id"] not in {c["prompt_id"] for c in children}
    ]


def test_sigkill_watch_never_tears_the_ledger(
    emulator_factory, tmp_path, ledger_path, fault_counts
):
    rng = random.Random(11)
    a, b = emulator_factory(), emulator_factory()
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph(4, 0.02)))
    submitted = []
    for url in (a.url, b.url):
        out = subprocess.run(
            comfyctl("submit", str(wf), "-s", url, "--count", "30", "--vary-seed"),
            capture_output=True,
            text=True,
            check=True,
        )
        submitted += out.stdout.split()
    bound = {pid: rec["server_url"] for pid, rec in Ledger(ledger_path).load().items()}
    trials = 30
    for _ in range(trials):
        kill_at_random(comfyctl("watch", "--poll-interval", "0.2"), 0.2, 0.8, rng)
        ledger = Ledger(ledger_path).load()
        assert set(submitted) <= set(ledger)
        assert {pid: rec["server_url"] for pid, rec in ledger.items()} == bound
    fault_counts["SIGKILL trials: watch"] = trials
    final = subprocess.run(
        comfyctl("watch", "--timeout", "60", "--poll-interval", "0.3"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert final.returncode == 0, final.stderr
    assert all(r["status"] == "success" for r in Ledger(ledger_path).load().values())


def test_sigkill_recover_never_resubmits_a_job_twice(emulator, tmp_path, ledger_path, fault_counts):
    rng = random.Random(13)
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph(200, 0.05)))
    out = subprocess.run(
        comfyctl("submit", str(wf), "-s", emulator.url, "--count", "20", "--vary-seed"),
        capture_output=True,
        text=True,
        check=True,
    )
    lost = out.stdout.split()
    emulator.restart()
    trials = 30
    for _ in range(trials):
        kill_at_random(comfyctl("recover", "--resubmit"), 0.15, 0.5, rng)
        Ledger(ledger_path).load()
    fault_counts["SIGKILL trials: recover"] = trials
    subprocess.run(comfyctl("recover", "--resubmit"), capture_output=True, timeout=120)
    ledger = Ledger(ledger_path).load()
    for pid in lost:
        children = [r for r in ledger.values() if r.get("resubmitted_from") == pid]
        assert len(children) <= 1, f"{pid} was resubmitted {len(children)} times"
        if children:
            assert ledger[pid]["superseded_by"] == children[0]["prompt_id"]
    # The server holds each resubmitted job at most once, and nothing else.
    received = server_ids(emulator.url)
    assert received <= {r["prompt_id"] for r in ledger.values() if r.get("resubmitted_from")}
