"""Eight processes at a time mixing submit, watch, recover and history on one ledger."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from functools import partial

import pytest
from workflows import slow_graph

graph = partial(slow_graph, steps=3, seconds=0.02)

pytestmark = pytest.mark.faults

WAVES, WIDTH = 4, 8
ALLOWED = {"submit": {0}, "watch": {0, 5}, "recover": {0, 1}, "history": {0}}


def no_duplicate_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys in the ledger: {keys}"
    return dict(pairs)


def test_eight_processes_mixing_commands_lose_and_duplicate_nothing(
    emulator_factory, tmp_path, ledger_path, fault_counts
):
    a, b = emulator_factory(), emulator_factory()
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph()))
    commands = {
        "submit": ["submit", str(wf), "-s", a.url, "-s", b.url, "--count", "2", "--vary-seed"],
        "watch": ["watch", "--timeout", "3", "--poll-interval", "0.3"],
        "recover": ["recover", "--resubmit", "--server-timeout", "3"],
        "history": ["history", "--limit", "5", "--json"],
    }
    rng = random.Random(5)
    printed: list[str] = []
    operations = 0
    for _ in range(WAVES):
        kinds = ["submit", "submit", *rng.choices(sorted(commands), k=WIDTH - 2)]
        procs = [
            (
                kind,
                subprocess.Popen(
                    [sys.executable, "-m", "comfyctl", *commands[kind]],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
            for kind in kinds
        ]
        for kind, proc in procs:
            out, err = proc.communicate(timeout=120)
            operations += 1
            assert "Traceback" not in err, err
            assert proc.returncode in ALLOWED[kind], (kind, proc.returncode, err)
            if kind == "submit":
                printed += out.split()
    doc = json.loads(ledger_path.read_bytes(), object_pairs_hook=no_duplicate_keys)
    tasks = doc["tasks"]
    assert len(printed) == len(set(printed))
    assert set(printed) <= set(tasks), "a printed prompt_id is missing from the ledger"
    extra = set(tasks) - set(printed)
    assert all(tasks[pid].get("resubmitted_from") for pid in extra), "a record nobody made"
    assert all(pid == rec["prompt_id"] for pid, rec in tasks.items())
    fault_counts["concurrent processes (8 at a time)"] = operations
