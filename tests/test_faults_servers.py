"""Server faults, one server at a time with another healthy beside it.

Each fault on server A must give A's jobs the right classification and exit code, with no
traceback, while server B's jobs are classified and repaired exactly as if A were fine.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from workflows import slow_graph as graph

from comfyctl.ledger import Ledger

pytestmark = pytest.mark.faults


def fault_refused(a, b_ids):
    a.stop()


def fault_hang(a, b_ids):
    a.faults.http_hang = True


def fault_slow_drip(a, b_ids):
    a.faults.slow_drip = 0.5


def fault_500(a, b_ids):
    a.faults.http_status = 500


def fault_502_html(a, b_ids):
    a.faults.http_status = 502


def fault_truncated_json(a, b_ids):
    a.faults.malformed_json = True


def fault_wrong_content_type(a, b_ids):
    a.faults.wrong_content_type = True


def fault_foreign_ids(a, b_ids):
    """A answers with history entries for B's prompt ids (failed ones)."""
    a.faults.foreign_history = {
        pid: {
            "prompt": [0, pid, {}, {}, []],
            "outputs": {},
            "status": {
                "status_str": "error",
                "completed": False,
                "messages": [
                    [
                        "execution_error",
                        {
                            "prompt_id": pid,
                            "node_id": "2",
                            "node_type": "X",
                            "exception_message": "from the wrong server",
                            "exception_type": "RuntimeError",
                        },
                    ]
                ],
            },
            "meta": {},
        }
        for pid in b_ids
    }


# fault -> (condition of A's finished-unnoticed job, detail fragment)
FAULTS = {
    # The condition says the job cannot be judged; the detail says what the server did.
    "refused": (fault_refused, "unreachable", "is unreachable (refused)"),
    "hang": (fault_hang, "unreachable", "did not answer (timeout)"),
    "slow-drip": (fault_slow_drip, "unreachable", "did not answer (timeout)"),
    "500": (fault_500, "unreachable", "answered with an error (http 500)"),
    "502-html": (fault_502_html, "unreachable", "answered with an error (http 502)"),
    "truncated-json": (
        fault_truncated_json,
        "unreachable",
        "would not send (malformed JSON reply)",
    ),
    "wrong-content-type": (
        fault_wrong_content_type,
        "unreachable",
        "would not send (malformed JSON reply)",
    ),
    "foreign-ids": (fault_foreign_ids, "finished-unnoticed", "successfully"),
}


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_fault_on_a_is_classified_and_b_is_unaffected(
    name, emulator_factory, invoke, tmp_path, ledger_path, fault_counts
):
    apply_fault, condition, fragment = FAULTS[name]
    a, b = emulator_factory(), emulator_factory()
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph()))
    a_ids = invoke("submit", str(wf), "-s", a.url, "--count", "2", "--vary-seed").stdout.split()
    b_ids = invoke("submit", str(wf), "-s", b.url, "--count", "2", "--vary-seed").stdout.split()
    a.wait_idle(timeout=10)
    b.wait_idle(timeout=10)
    apply_fault(a, b_ids)
    started = time.monotonic()
    result = invoke("detect-stuck", "--nl", "--server-timeout", "1.5")
    assert time.monotonic() - started < 1.5 + 3
    assert "Traceback" not in result.stderr
    assert result.exit_code == 6, result.stderr
    found = {f["prompt_id"]: f for f in map(json.loads, result.stdout.splitlines())}
    for pid in a_ids:
        assert found[pid]["condition"] == condition, found[pid]
        assert fragment in found[pid]["detail"], found[pid]
        assert found[pid]["server_url"] == a.url
    for pid in b_ids:
        assert found[pid]["condition"] == "finished-unnoticed", found[pid]
        assert found[pid]["server_url"] == b.url
    recovered = invoke("recover", "--server-timeout", "1.5", "--nl")
    assert "Traceback" not in recovered.stderr
    ledger = Ledger(ledger_path).load()
    for pid in b_ids:
        assert ledger[pid]["status"] == "success"
        assert all(o["url"].startswith(b.url) for o in ledger[pid]["outputs"])
    a.faults.clear()
    fault_counts["server faults"] = fault_counts.get("server faults", 0) + 1


def test_restart_that_loses_history_is_lost_and_b_unaffected(
    emulator_factory, invoke, tmp_path, fault_counts
):
    a, b = emulator_factory(), emulator_factory()
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph()))
    (on_a,) = invoke("submit", str(wf), "-s", a.url).stdout.split()
    (on_b,) = invoke("submit", str(wf), "-s", b.url).stdout.split()
    a.wait_idle(timeout=10)
    b.wait_idle(timeout=10)
    a.restart()
    result = invoke("detect-stuck", "--nl")
    found = {f["prompt_id"]: f["condition"] for f in map(json.loads, result.stdout.splitlines())}
    assert result.exit_code == 6
    assert found == {on_a: "lost", on_b: "finished-unnoticed"}
    fault_counts["server faults"] = fault_counts.get("server faults", 0) + 1


@pytest.mark.parametrize("how", ["never-opened", "closed-mid-run"])
def test_websocket_faults_fall_back_to_polling(
    how, emulator_factory, invoke, tmp_path, ledger_path, fault_counts
):
    a, b = emulator_factory(), emulator_factory()
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph(steps=20, seconds=0.05)))
    if how == "never-opened":
        a.faults.refuse_websocket = True
    (on_a,) = invoke("submit", str(wf), "-s", a.url).stdout.split()
    (on_b,) = invoke("submit", str(wf), "-s", b.url).stdout.split()
    if how == "closed-mid-run":
        threading.Timer(0.5, a.drop_websockets).start()
    result = invoke("watch", on_a, on_b, "--poll-interval", "0.3", "--timeout", "30")
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    ledger = Ledger(ledger_path).load()
    assert ledger[on_a]["status"] == ledger[on_b]["status"] == "success"
    assert ledger[on_a]["outputs"] and ledger[on_b]["outputs"]
    fault_counts["server faults"] = fault_counts.get("server faults", 0) + 1
