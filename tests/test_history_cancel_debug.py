"""history, cancel and debug-tasks over a multi-server emulator setup (issue 5)."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import requests
from workflows import slow_graph as graph

from comfyctl.ledger import Ledger


@pytest.fixture
def schema() -> dict:
    text = resources.files("comfyctl").joinpath("schemas/task.schema.json").read_text()
    return json.loads(text)


@pytest.fixture
def fleet(emulator_factory, invoke, tmp_path, ledger_path):
    """Two servers: 3 finished jobs on A (labelled), 2 on B; a config naming both."""
    a, b = emulator_factory(), emulator_factory(jobs_api=True)
    (tmp_path / "config.toml").write_text(
        f'[servers.a]\nurl = "{a.url}"\n[servers.b]\nurl = "{b.url}"\n'
    )
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph()))
    ids = {}
    for name, count, label in (("a", 3, "batch=1"), ("b", 2, "batch=2")):
        result = invoke(
            "submit",
            str(wf),
            "-s",
            name,
            "--count",
            str(count),
            "--vary-seed",
            "--label",
            label,
            "--wait",
            "--poll-interval",
            "0.3",
        )
        assert result.exit_code == 0, result.stderr
        ids[name] = [line.split("\t")[0] for line in result.stdout.splitlines()][:count]
    return a, b, ids


def test_filters_and_formats(fleet, invoke, schema):
    a, b, ids = fleet
    table = invoke("history")
    assert table.exit_code == 0
    assert len(table.stdout.splitlines()) == 2 + 5  # header, rule, rows
    doc = json.loads(invoke("history", "--json").stdout)
    jsonschema.validate(doc, schema)
    assert [t["submitted_at"] for t in doc["tasks"]] == sorted(
        (t["submitted_at"] for t in doc["tasks"]), reverse=True
    )
    only_b = json.loads(invoke("history", "--server", "b", "--json").stdout)["tasks"]
    assert {t["prompt_id"] for t in only_b} == set(ids["b"])
    assert all(t["server_url"] == b.url for t in only_b)
    by_label = [
        json.loads(line)
        for line in invoke("history", "--label", "batch=1", "--nl").stdout.splitlines()
    ]
    assert {t["prompt_id"] for t in by_label} == set(ids["a"])
    for record in by_label:
        jsonschema.validate(record, schema)
    assert invoke("history", "--status", "error", "--json").stdout.count("prompt_id") == 0
    assert len(json.loads(invoke("history", "--limit", "2", "--json").stdout)["tasks"]) == 2
    assert len(json.loads(invoke("history", "--since", "1h", "--json").stdout)["tasks"]) == 5
    assert json.loads(invoke("history", "--since", "2999-01-01", "--json").stdout)["tasks"] == []
    rows = list(csv.DictReader(io.StringIO(invoke("history", "--csv").stdout)))
    assert len(rows) == 5 and {r["server_url"] for r in rows} == {a.url, b.url}


def test_one_id_refreshes_from_its_server_and_outputs_list(fleet, invoke, schema):
    a, _, ids = fleet
    pid = ids["a"][0]
    detail = json.loads(invoke("history", pid, "--json").stdout)
    jsonschema.validate(detail, schema)
    assert detail["status"] == "success"
    urls = invoke("history", pid, "--outputs").stdout.split()
    assert urls and all(u.startswith(a.url + "/view?") for u in urls)
    assert requests.get(urls[0], timeout=5).content.startswith(b"\x89PNG")
    assert invoke("history", "00000000-0000-4000-8000-000000000000").exit_code == 4


def test_bad_filter_values_are_usage_errors(invoke):
    assert invoke("history", "--since", "yesterday-ish").exit_code == 2
    assert invoke("history", "--label", "nolabel").exit_code == 2
    assert invoke("history", "--server", "nosuch").exit_code == 2


def test_prune_removes_old_terminal_records_and_their_workflows(fleet, invoke, ledger_path):
    ledger = Ledger(ledger_path)
    with ledger.transaction() as tasks:
        for record in tasks.values():
            record["finished_at"] = "2000-01-01T00:00:00.000+00:00"
            tasks.put(record)
    for path in ledger.workflow_dir.glob("*.json"):
        os.utime(path, (0, 0))  # stored long ago
    result = invoke("history", "--prune", "--older-than", "30d")
    assert result.exit_code == 0
    assert len(result.stdout.split()) == 5
    assert ledger.load() == {}
    assert list(ledger.workflow_dir.glob("*.json")) == []


@pytest.mark.parametrize("jobs_api", [False, True], ids=["classic", "jobs-api"])
def test_cancel_on_a_leaves_b_running(emulator_factory, invoke, tmp_path, ledger_path, jobs_api):
    a, b = emulator_factory(jobs_api=jobs_api), emulator_factory(jobs_api=jobs_api)
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph(steps=400, seconds=0.05)))
    running_a, pending_a = invoke(
        "submit", str(wf), "-s", a.url, "--count", "2", "--vary-seed"
    ).stdout.split()
    (running_b,) = invoke("submit", str(wf), "-s", b.url).stdout.split()
    time.sleep(0.5)
    result = invoke("cancel", pending_a, running_a)
    assert result.exit_code == 0, result.stderr
    a.wait_idle(timeout=10)
    ledger = Ledger(ledger_path).load()
    assert ledger[pending_a]["status"] == "cancelled"
    assert ledger[running_a]["status"] in ("cancelled", "interrupted")
    queue_b = requests.get(b.url + "/queue", timeout=5).json()
    assert [item[1] for item in queue_b["queue_running"]] == [running_b]
    assert ledger[running_b]["status"] in ("pending", "running")
    # Finished jobs are reported, not touched.
    again = invoke("cancel", pending_a)
    assert "already cancelled" in again.stdout


@pytest.mark.parametrize("jobs_api", [False, True], ids=["classic", "jobs-api"])
def test_cancel_of_jobs_a_restart_forgot_says_so_and_points_to_recover(
    emulator_factory, invoke, tmp_path, ledger_path, jobs_api
):
    """The server no longer knows them: cancel says that plainly, does not claim they are
    "now pending", and leaves lost-or-forgotten (which needs restart proof) to
    detect-stuck and recover, which it names."""
    emu = emulator_factory(jobs_api=jobs_api)
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph(steps=400, seconds=0.05)))
    ids = invoke("submit", str(wf), "-s", emu.url, "--count", "2", "--vary-seed").stdout.split()
    emu.restart()
    result = invoke("cancel", *ids)
    assert result.exit_code == 1, result.stderr
    assert "now pending" not in result.stdout and "(pending)" not in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all("no longer knows" in line for line in lines), lines
    assert "comfyctl detect-stuck" in result.stderr and "comfyctl recover" in result.stderr
    assert all(pid in result.stderr for pid in ids), result.stderr
    ledger = Ledger(ledger_path).load()
    assert [ledger[pid]["status"] for pid in ids] == ["pending", "pending"]  # left to recover
    nl = invoke("cancel", ids[0], "--nl")
    [item] = map(json.loads, nl.stdout.splitlines())
    assert "no longer knows" in item["result"] and "now pending" not in item["result"]
    # Not named (--all-pending): said on its line, which names detect-stuck; exit 0 as ever.
    swept = invoke("cancel", "--all-pending")
    assert swept.exit_code == 0, swept.stderr
    assert len(swept.stdout.splitlines()) == 2 and "comfyctl detect-stuck" in swept.stdout


def test_cancel_never_sends_a_bodyless_interrupt(emulator, invoke, tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph(steps=400, seconds=0.05)))
    (pid,) = invoke("submit", str(wf), "-s", emulator.url).stdout.split()
    time.sleep(0.3)
    interrupts: list[bytes] = []
    original = requests.Session.request

    def spy(self, method, url, *args, **kwargs):
        if url.endswith("/interrupt"):
            interrupts.append(json.dumps(kwargs.get("json")).encode())
        return original(self, method, url, *args, **kwargs)

    requests.Session.request = spy
    try:
        assert invoke("cancel", pid).exit_code == 0
    finally:
        requests.Session.request = original
    assert interrupts and all(json.loads(body) == {"prompt_id": pid} for body in interrupts)


def test_debug_tasks_hanging_server_reported_within_the_timeout(fleet, invoke, tmp_path):
    _, b, _ = fleet
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph(steps=400, seconds=0.05)))
    invoke("submit", str(wf), "-s", "a")
    b.faults.http_hang = True
    started = time.monotonic()
    result = invoke("debug-tasks", "--server-timeout", "1.5", "--json")
    elapsed = time.monotonic() - started
    b.faults.http_hang = False
    assert result.exit_code == 0
    assert elapsed < 1.5 + 1.5
    report = json.loads(result.stdout)
    servers = {s["name"]: s for s in report["servers"]}
    assert servers["a"]["reachable"] and servers["a"]["server_running"] == 1
    assert servers["a"]["version"]
    assert servers["b"]["reachable"] is False and servers["b"]["reason"] == "timeout"
    assert [j["server"] for j in report["jobs"]] == ["a"]


def test_debug_tasks_names_jobs_lost_in_a_restart(emulator, invoke, tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph(steps=400, seconds=0.05)))
    (pid,) = invoke("submit", str(wf), "-s", emulator.url).stdout.split()
    time.sleep(0.3)
    emulator.restart()
    report = json.loads(invoke("debug-tasks", "--json").stdout)
    kinds = {(a["kind"], a["prompt_id"]) for a in report["anomalies"]}
    assert ("lost-in-restart", pid) in kinds  # proven: start-up lines after submit's sighting


def test_debug_tasks_flags_bindings_whose_server_changed(emulator, invoke, tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph(steps=400, seconds=0.05)))
    config = Path(tmp_path / "config.toml")
    config.write_text(f'[servers.gpu]\nurl = "{emulator.url}"\n')
    (pid,) = invoke("submit", str(wf), "-s", "gpu").stdout.split()
    config.write_text('[servers.gpu]\nurl = "http://127.0.0.1:9"\n')
    report = json.loads(invoke("debug-tasks", "--json", "--server-timeout", "1").stdout)
    assert ("server-url-changed", pid) in {(a["kind"], a["prompt_id"]) for a in report["anomalies"]}
    # The job is still asked about on the server it is bound to, not the renamed one.
    assert any(s["url"] == emulator.url and s["reachable"] for s in report["servers"])


def test_refresh_updates_unfinished_jobs_from_their_servers(
    emulator_factory, invoke, tmp_path, ledger_path
):
    a, b = emulator_factory(), emulator_factory(jobs_api=True)
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph()))
    ids = invoke(
        "submit", str(wf), "-s", a.url, "-s", b.url, "--count", "4", "--vary-seed"
    ).stdout.split()
    a.wait_idle(timeout=10)
    b.wait_idle(timeout=10)
    assert (
        invoke("history", "--no-refresh", "--status", "success", "--json").stdout.count("prompt_id")
        == 0
    )
    result = invoke("history", "--refresh", "--json")
    tasks = json.loads(result.stdout)["tasks"]
    assert {t["prompt_id"]: t["status"] for t in tasks} == dict.fromkeys(ids, "success")
    out = tmp_path / "dl"
    saved = invoke("history", "--download", str(out))
    assert saved.exit_code == 0
    assert len([p for p in out.rglob("*.png")]) == 4


@pytest.mark.parametrize("server", ["a", "b"], ids=["classic", "jobs-api"])
def test_one_id_shows_the_servers_execution_messages(fleet, invoke, schema, server):
    *_, ids = fleet
    detail = json.loads(invoke("history", ids[server][0], "--json").stdout)
    jsonschema.validate(detail, schema)
    names = [name for name, _ in detail["server_messages"]]
    assert names[0] == "execution_start" and names[-1] == "execution_success"
    text = invoke("history", ids[server][0]).stdout
    assert "execution_success" in text
    offline = json.loads(invoke("history", ids[server][0], "--no-refresh", "--json").stdout)
    assert "server_messages" not in offline


def test_no_colour_codes_when_stdout_is_not_a_terminal(fleet, run_comfyctl):
    proc = run_comfyctl("history")
    assert proc.returncode == 0 and "success" in proc.stdout
    assert "\x1b[" not in proc.stdout


def test_prune_refuses_filters_it_would_ignore(fleet, invoke, ledger_path):
    before = ledger_path.read_bytes()
    result = invoke("history", "--prune", "--older-than", "1s", "--label", "batch=1")
    assert result.exit_code == 2 and ledger_path.read_bytes() == before


def test_debug_tasks_shows_what_the_server_says_next_to_the_ledger(emulator, invoke, tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph(steps=1, seconds=0.01)))
    (pid,) = invoke("submit", str(wf), "-s", emulator.url).stdout.split()
    emulator.wait_idle(timeout=10)  # finished on the server; nobody watched
    report = json.loads(invoke("debug-tasks", "--json").stdout)
    (job,) = report["jobs"]
    assert (job["status"], job["server_status"]) == ("pending", "finished")
    assert ("finished-unnoticed", pid) in {(a["kind"], a["prompt_id"]) for a in report["anomalies"]}
    assert "server says" in invoke("debug-tasks").stdout


def test_cancel_all_pending_on_a_server_takes_the_jobs_history_lists_for_it(
    emulator, invoke, run_comfyctl, tmp_path, config_path
):
    """This host's config spells the server another way (localhost) than the URL the jobs
    are bound to (127.0.0.1): --server gpu1 picks the same jobs in history and cancel."""
    port = emulator.url.rsplit(":", 1)[1]
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph(steps=400, seconds=0.05)))

    def submit(count: int) -> list[str]:
        config_path.write_text(f'[servers.gpu1]\nurl = "http://127.0.0.1:{port}"\n')
        result = invoke("submit", str(wf), "-s", "gpu1", "--count", str(count))
        assert result.exit_code == 0, result.stderr
        config_path.write_text(f'[servers.gpu1]\nurl = "http://localhost:{port}"\n')
        return result.stdout.split()

    first, *queued = submit(4)  # the first may be running: never interrupted
    listed = invoke("history", "--server", "gpu1", "--status", "pending", "--json")
    assert {t["prompt_id"] for t in json.loads(listed.stdout)["tasks"]} == {first, *queued}
    swept = invoke("cancel", "--all-pending", "--server", "gpu1", "--json")
    assert swept.exit_code == 0, swept.stdout + swept.stderr
    results = {r["prompt_id"]: r for r in json.loads(swept.stdout)["results"]}
    assert set(results) == {first, *queued}
    assert all(results[pid]["status"] == "cancelled" for pid in queued), results
    # As a real process too, for jobs submitted since.
    more = submit(2)
    again = run_comfyctl("cancel", "--all-pending", "--server", "gpu1", "--nl")
    assert again.returncode == 0, again.stdout + again.stderr
    lines = {json.loads(line)["prompt_id"]: json.loads(line) for line in again.stdout.splitlines()}
    assert set(more) <= set(lines) and all(lines[pid]["status"] == "cancelled" for pid in more)


def test_debug_tasks_and_metrics_on_a_server_take_the_jobs_history_lists_for_it(
    emulator, invoke, tmp_path, config_path
):
    """As above: the jobs were bound to 127.0.0.1, this config now says localhost. Each
    command's --server gpu1 takes gpu1's jobs, as history does."""
    port = emulator.url.rsplit(":", 1)[1]
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph(steps=400, seconds=0.05)))
    config_path.write_text(f'[servers.gpu1]\nurl = "http://127.0.0.1:{port}"\n')
    submitted = invoke("submit", str(wf), "-s", "gpu1", "--count", "2")
    assert submitted.exit_code == 0, submitted.stderr
    pids = set(submitted.stdout.split())
    config_path.write_text(f'[servers.gpu1]\nurl = "http://localhost:{port}"\n')
    listed = invoke("history", "--server", "gpu1", "--json")
    assert {t["prompt_id"] for t in json.loads(listed.stdout)["tasks"]} == pids
    report = json.loads(invoke("debug-tasks", "--server", "gpu1", "--json").stdout)
    assert {j["prompt_id"] for j in report["jobs"]} == pids
    for only in (("--server", "gpu1"), ()):
        metrics = json.loads(invoke("metrics", *only, "--json").stdout)
        for family in metrics["families"]:  # one series per server name: Prometheus' rule
            series = [(s["name"], sorted(s["labels"].items())) for s in family["samples"]]
            assert len(series) == len({repr(x) for x in series}), family["name"]
        jobs = next(f for f in metrics["families"] if f["name"] == "comfyctl_jobs")
        assert {s["labels"]["server"] for s in jobs["samples"]} == {"gpu1"}
        assert sum(s["value"] for s in jobs["samples"]) == len(pids)  # running or pending
    requests.post(emulator.url + "/queue", json={"clear": True}, timeout=5)
    requests.post(emulator.url + "/interrupt", timeout=5)
