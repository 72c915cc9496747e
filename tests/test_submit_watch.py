"""End-to-end: submit and watch against real emulated servers on loopback sockets."""

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
import responses
from workflows import slow_graph

from comfyctl.ledger import Ledger

quick_graph = partial(slow_graph, steps=5, seconds=0.05)
failing_graph = partial(slow_graph, steps=5, seconds=0.02, fail_at=3)


@pytest.fixture
def workflow(tmp_path: Path):
    def write(graph: dict | None = None, name: str = "wf.json") -> str:
        path = tmp_path / name
        path.write_text(json.dumps(graph or quick_graph()))
        return str(path)

    return write


def records(ledger_path: Path) -> dict:
    return Ledger(ledger_path).load()


def test_submit_prints_only_the_id_and_binds_the_job(invoke, emulator, workflow, ledger_path):
    result = invoke("submit", workflow(), "-s", emulator.url, "--label", "team=a")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    record = records(ledger_path)[lines[0]]
    assert record["server_url"] == emulator.url
    assert record["status"] in ("pending", "running")
    assert record["labels"] == {"team": "a"}
    assert record["client_id"].startswith("comfyctl-")
    stored = Ledger(ledger_path).load_workflow(record["workflow"])
    assert stored["2"]["class_type"] == "SlowProgress"


@pytest.mark.parametrize("jobs_api", [False, True], ids=["classic", "jobs-api"])
def test_ten_jobs_over_two_servers(
    invoke, emulator_factory, workflow, ledger_path, tmp_path, jobs_api
):
    a, b = emulator_factory(jobs_api=jobs_api), emulator_factory(jobs_api=jobs_api)
    out = tmp_path / "out"
    result = invoke(
        "submit",
        workflow(quick_graph(steps=3, seconds=0.02)),
        "-s",
        a.url,
        "-s",
        b.url,
        "--count",
        "10",
        "--vary-seed",
        "--wait",
        "--download",
        str(out),
        "--poll-interval",
        "0.5",
        "--timeout",
        "60",
    )
    assert result.exit_code == 0, result.stderr
    ids = [line.split("\t")[0] for line in result.stdout.splitlines()]
    submitted = ids[:10]
    assert len(set(submitted)) == 10
    ledger = records(ledger_path)
    by_server = {a.url: 0, b.url: 0}
    for pid in submitted:
        record = ledger[pid]
        assert record["status"] == "success"
        by_server[record["server_url"]] += 1
        assert record["outputs"], record
        for output in record["outputs"]:
            assert output["url"].startswith(record["server_url"] + "/view?")
    assert by_server == {a.url: 5, b.url: 5}
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(files) == 10
    server_dirs = {p.relative_to(out).parts[0] for p in files}
    assert len(server_dirs) == 2
    # Both servers name their outputs job_00001_.png, ...: they must not collide.
    names = [p.name for p in files]
    assert len(names) > len(set(names))


def test_rejected_workflow_is_recorded_with_node_errors(invoke, emulator, workflow, ledger_path):
    graph = quick_graph()
    del graph["2"]["inputs"]["steps"]
    result = invoke("submit", workflow(graph), "-s", emulator.url)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "node 2" in result.stderr and "steps" in result.stderr
    (record,) = records(ledger_path).values()
    assert record["status"] == "rejected"
    assert record["error"]["node_errors"]["2"]


def test_failed_job_exits_1_with_the_servers_message(invoke, emulator, workflow, ledger_path):
    result = invoke(
        "submit",
        workflow(failing_graph()),
        "-s",
        emulator.url,
        "--wait",
        "--poll-interval",
        "0.5",
        "--timeout",
        "30",
    )
    assert result.exit_code == 1
    (record,) = records(ledger_path).values()
    assert record["status"] == "error"
    assert "deliberate failure" in record["error"]["message"]
    assert record["error"]["node_id"] == "2"


def test_watch_unknown_id_exits_4(invoke):
    result = invoke("watch", "00000000-0000-4000-8000-000000000000")
    assert result.exit_code == 4
    assert "No task" in result.stderr


def test_watch_timeout_exits_5_naming_running_jobs(invoke, emulator, workflow):
    submitted = invoke("submit", workflow(quick_graph(steps=200, seconds=0.1)), "-s", emulator.url)
    pid = submitted.stdout.strip()
    result = invoke("watch", pid, "--timeout", "1", "--poll-interval", "0.3")
    assert result.exit_code == 5
    assert pid in result.stderr


def test_job_finished_before_watch_is_reported_at_once(invoke, emulator, workflow, ledger_path):
    pid = invoke(
        "submit", workflow(quick_graph(steps=2, seconds=0.01)), "-s", emulator.url
    ).stdout.strip()
    emulator.wait_idle(timeout=10)
    started = time.monotonic()
    result = invoke("watch", pid, "--json", "--poll-interval", "5")
    assert result.exit_code == 0, result.stderr
    assert time.monotonic() - started < 4  # from history at once, not after a poll interval
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[-1]["status"] == "success" and events[-1]["outputs"]
    assert records(ledger_path)[pid]["status"] == "success"


def test_a_socket_that_heard_the_whole_run_settles_it_without_asking_history(
    invoke, emulator, workflow, ledger_path
):
    # execution_success after execution_start on one connection is the whole outcome:
    # outputs came in executed messages, times in the messages' timestamps.
    emulator.faults.stall_at_percent = 0  # the first job holds the queue until watch listens
    _blocker, pid = invoke("submit", workflow(), "-s", emulator.url, "--count", "2").stdout.split()
    threading.Timer(1.5, setattr, (emulator.faults, "stall_at_percent", None)).start()
    result = invoke("watch", pid, "--json", "--poll-interval", "30")
    assert result.exit_code == 0, result.stderr
    record = records(ledger_path)[pid]
    assert record["status"] == "success" and len(record["outputs"]) == 1
    assert record["server_timing"]["started_at"] and record["server_timing"]["finished_at"]
    assert emulator.requests[f"GET /history/{pid}"] == 0, dict(emulator.requests)


def test_a_socket_that_joined_mid_run_takes_the_outcome_from_history(
    invoke, emulator, workflow, ledger_path
):
    # Connected after execution_start, the socket may have missed outputs: /history says.
    emulator.faults.stall_at_percent = 50
    pid = invoke("submit", workflow(), "-s", emulator.url).stdout.strip()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # running: its execution_start went to nobody
        if requests.get(f"{emulator.url}/queue", timeout=5).json()["queue_running"]:
            break
        time.sleep(0.02)
    threading.Timer(1.5, setattr, (emulator.faults, "stall_at_percent", None)).start()
    result = invoke("watch", pid, "--json", "--poll-interval", "30")
    assert result.exit_code == 0, result.stderr
    assert records(ledger_path)[pid]["status"] == "success"
    assert records(ledger_path)[pid]["outputs"]
    assert emulator.requests[f"GET /history/{pid}"] >= 1


def test_stall_is_reported_and_fail_on_stall_exits_6(invoke, emulator, workflow):
    emulator.faults.stall_at_percent = 52.25
    pid = invoke(
        "submit", workflow(quick_graph(steps=400, seconds=0.001)), "-s", emulator.url
    ).stdout.strip()
    result = invoke(
        "watch",
        pid,
        "--stall-timeout",
        "1",
        "--fail-on-stall",
        "--poll-interval",
        "0.3",
        "--timeout",
        "30",
    )
    assert result.exit_code == 6
    assert "52.25%" in result.stdout
    assert pid in result.stderr


def test_restart_mid_run_marks_the_job_lost(invoke, emulator, workflow, ledger_path):
    pid = invoke(
        "submit", workflow(quick_graph(steps=100, seconds=0.05)), "-s", emulator.url
    ).stdout.strip()
    threading.Timer(0.8, emulator.restart).start()
    result = invoke("watch", pid, "--poll-interval", "0.3", "--timeout", "30")
    assert result.exit_code == 1
    record = records(ledger_path)[pid]
    assert record["status"] == "lost"
    assert "restarted" in record["error"]["message"]


def test_hostile_output_names_never_escape_the_download_dir(invoke, emulator, workflow, tmp_path):
    out = tmp_path / "dl" / "out"
    for name, subfolder in (
        ("../../evil.png", ""),
        ("/tmp/abs-evil.png", "../../.."),
        ("a\\..\\..\\b.png", "..\\.."),
    ):
        emulator.faults.output_filename = name
        emulator.faults.output_subfolder = subfolder
        result = invoke(
            "submit",
            workflow(quick_graph(steps=1, seconds=0.01)),
            "-s",
            emulator.url,
            "--wait",
            "--download",
            str(out),
            "--poll-interval",
            "0.3",
            "--timeout",
            "30",
        )
        # A real ComfyUI /view refuses such names, so the download is reported as failed.
        assert result.exit_code == 1, result.stderr
        assert "download" in result.stderr and "failed" in result.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".png"]
    assert all(out in p.parents for p in written)
    assert not Path("/tmp/abs-evil.png").exists()


@responses.activate
def test_download_keeps_hostile_names_inside_the_dir(tmp_path):
    """A server that does serve hostile names still cannot make comfyctl write outside DIR."""
    from comfyctl.client import ServerClient
    from comfyctl.config import ServerSpec
    from comfyctl.download import download_outputs
    from comfyctl.records import flatten_outputs

    url = "http://127.0.0.1:9"
    responses.get(url + "/view", body=b"\x89PNG-bytes")
    names = ["../../evil.png", "/etc/passwd", "a\\..\\..\\b.png", "nul\x00byte.png", ".."]
    subfolders = ["", "../../..", "..\\..", "/abs", "x/../.."]
    outputs = flatten_outputs(
        url,
        {
            "9": {
                "images": [
                    {"filename": name, "subfolder": sub, "type": "output"}
                    for name, sub in zip(names, subfolders, strict=True)
                ]
            }
        },
    )
    record = {"server": "../gpu:1", "outputs": outputs}
    root = tmp_path / "dl"
    results = download_outputs(ServerClient(ServerSpec("x", url)), record, root)
    assert len(results) == 5
    for path, what in results:
        assert what in ("saved", "exists")
        assert root.resolve() in path.parents
    assert {p.name for p in root.rglob("*") if p.is_file()} >= {"evil.png", "passwd", "b.png"}


def test_submit_pipe_watch_as_real_processes(emulator, workflow, ledger_path):
    wf = workflow(quick_graph(steps=3, seconds=0.02))
    cmd = (
        f"{sys.executable} -m comfyctl submit {wf} -s {emulator.url} --count 2 | "
        f"{sys.executable} -m comfyctl watch - --json --poll-interval 0.5 --timeout 60"
    )
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    finals = [json.loads(line) for line in proc.stdout.splitlines()]
    done = {e["prompt_id"] for e in finals if e["status"] == "success"}
    assert len(done) == 2
    assert all(records(ledger_path)[pid]["status"] == "success" for pid in done)


def test_two_watchers_on_one_server_each_see_their_own_progress(invoke, emulator, workflow):
    # Long enough that the first job is still running when its watcher's process is up.
    wf = workflow(quick_graph(steps=40, seconds=0.1))
    first = invoke("submit", wf, "-s", emulator.url).stdout.strip()
    second = invoke("submit", wf, "-s", emulator.url).stdout.strip()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "comfyctl",
                "watch",
                pid,
                "--json",
                "--poll-interval",
                "5",
                "--timeout",
                "60",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in (first, second)
    ]
    for pid, proc in zip((first, second), procs, strict=True):
        stdout, stderr = proc.communicate(timeout=90)
        assert proc.returncode == 0, stderr
        events = [json.loads(line) for line in stdout.splitlines()]
        progress = [e for e in events if e["event"] == "progress"]
        assert progress, f"watcher of {pid} saw no progress events"
        assert {e["prompt_id"] for e in events} == {pid}


def test_a_process_the_suite_starts_hears_ctrl_c() -> None:
    # The Ctrl-C tests (here, test_hooks, test_live_view) send SIGINT to a comfyctl they
    # start. Had the suite been started with SIGINT ignored (`pytest &` in a shell without
    # job control), that comfyctl would ignore it too and they would wait out their
    # timeouts; conftest.pytest_configure restores it.
    probe = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.strip() == "True", "SIGINT is ignored in processes the tests start"


@pytest.mark.parametrize(
    ("signum", "code", "word"),
    [(signal.SIGINT, 130, "Interrupted"), (signal.SIGTERM, 143, "Terminated")],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_exits_130_naming_what_still_runs_where(
    emulator, workflow, ledger_path, signum, code, word
):
    # SIGTERM (kill, a script stopping its `comfyctl watch &`, whose SIGINT a shell ignores)
    # ends it the same way: the lease given up, what still runs named, 128 + 15.
    from comfyctl.lease import leases_for, listen_lease, live_holder

    pid = subprocess.run(
        [
            sys.executable,
            "-m",
            "comfyctl",
            "submit",
            workflow(quick_graph(steps=200, seconds=0.05)),
            "-s",
            emulator.url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    proc = subprocess.Popen(
        [sys.executable, "-m", "comfyctl", "watch", pid],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    leases, deadline = leases_for(Ledger(ledger_path)), time.monotonic() + 20
    while live_holder(leases, listen_lease(pid)) is None:  # it is following the job now
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == code, stderr
    assert f"Error: {word};" in stderr, stderr
    assert pid in stderr and emulator.url.split("://")[1] in stderr
    assert "Traceback" not in stderr
    assert live_holder(leases, listen_lease(pid)) is None  # given up on the way out


HANGING_READS = r"""
import sys, threading, time
from comfyctl.client import ServerClient
from comfyctl.config import ServerSpec
client = ServerClient(ServerSpec("hangs", sys.argv[1], timeout=60))
print("ready", flush=True)
sys.stdin.readline()  # the server hangs from now on
# A poller (a daemon thread, as the tracker's are) reads two jobs' history side by side,
# as snapshot() does for the ids the queue did not hold.
each = client._each
threading.Thread(target=each, args=(client.history_entry, ["a", "b"]), daemon=True).start()
time.sleep(0.5)
raise SystemExit(130)  # what Ctrl-C ends in, with the reads still hanging
"""


def test_a_hanging_servers_reads_do_not_hold_up_the_exit(emulator):
    # Before: client._each used a ThreadPoolExecutor, whose workers Python joins at exit,
    # so watch stayed up after Ctrl-C (or its end) for the rest of a 60 s read timeout.
    proc = subprocess.Popen(
        [sys.executable, "-c", HANGING_READS, emulator.url],
        cwd=Path(__file__).resolve().parents[1],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        emulator.faults.http_hang = True
        _, stderr = proc.communicate("go\n", timeout=20)  # far less than the 60 s
        assert proc.returncode == 130, stderr
        assert emulator.requests["GET /history/a"] == emulator.requests["GET /history/b"] == 1, (
            dict(emulator.requests)
        )
    finally:
        proc.kill()
        emulator.faults.http_hang = False


def test_unreachable_servers_are_skipped_and_none_reachable_exits_3(
    invoke, emulator, workflow, ledger_path
):
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port
    result = invoke(
        "submit", workflow(), "-s", dead, "-s", emulator.url, "--count", "3", "--vary-seed", "--nl"
    )
    assert result.exit_code == 0, result.stderr
    jobs = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(jobs) == 3 and {j["server_url"] for j in jobs} == {emulator.url}
    assert all(j["schema"] == "comfyctl.submitted" and j["status"] == "pending" for j in jobs)
    none = invoke("submit", workflow(), "-s", dead)
    assert none.exit_code == 3 and none.stdout == ""
    assert set(records(ledger_path)) == {j["prompt_id"] for j in jobs}  # no ghost records


def test_set_overrides_an_input_and_rejects_unknown_ones(invoke, emulator, workflow, ledger_path):
    result = invoke(
        "submit",
        workflow(),
        "-s",
        emulator.url,
        "--set",
        "2.steps=3",
        "--set",
        "3.filename_prefix=custom",
    )
    assert result.exit_code == 0, result.stderr
    record = records(ledger_path)[result.stdout.strip()]
    stored = Ledger(ledger_path).load_workflow(record["workflow"])
    assert stored["2"]["inputs"]["steps"] == 3
    assert stored["3"]["inputs"]["filename_prefix"] == "custom"
    assert invoke("submit", workflow(), "-s", emulator.url, "--set", "9.steps=1").exit_code == 2
    assert invoke("submit", workflow(), "-s", emulator.url, "--set", "2.nope=1").exit_code == 2


def test_demo_runs_end_to_end_as_a_real_process(run_comfyctl):
    proc = run_comfyctl("demo", "--jobs", "2", "--steps", "3", timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if "success" in line]
    assert len(rows) >= 2
    assert "emulator-1" in proc.stdout and "emulator-2" in proc.stdout


def test_wait_without_json_prints_plain_lines(invoke, emulator, workflow):
    result = invoke(
        "submit",
        workflow(quick_graph(steps=2, seconds=0.01)),
        "-s",
        emulator.url,
        "--wait",
        "--poll-interval",
        "0.3",
    )
    assert result.exit_code == 0, result.stderr
    pid, *states = result.stdout.splitlines()
    assert not any(line.startswith("{") for line in result.stdout.splitlines())
    assert states and states[-1].split("\t")[:3] == [pid, emulator.url.split("://")[1], "success"]


def test_stall_timeout_without_websocket_is_a_usage_error(invoke, emulator, workflow):
    pid = invoke("submit", workflow(), "-s", emulator.url).stdout.strip()
    result = invoke("watch", pid, "--no-websocket", "--stall-timeout", "1")
    assert result.exit_code == 2 and "WebSocket" in result.stderr


def test_short_ids_and_submit_json_lines_work_everywhere(invoke, emulator, workflow, ledger_path):
    submitted = invoke(
        "submit", workflow(quick_graph(steps=1, seconds=0.01)), "-s", emulator.url, "--nl"
    )
    pid = json.loads(submitted.stdout)["prompt_id"]
    emulator.wait_idle(timeout=10)
    piped = invoke("watch", "-", "--json", input=submitted.stdout)  # submit --nl | watch -
    assert piped.exit_code == 0, piped.stderr
    document = invoke(
        "submit", workflow(quick_graph(steps=1, seconds=0.01)), "-s", emulator.url, "--json"
    )
    doc_pid = json.loads(document.stdout)["jobs"][0]["prompt_id"]
    emulator.wait_idle(timeout=10)
    piped = invoke("watch", "-", "--json", input=document.stdout)  # submit --json | watch -
    assert piped.exit_code == 0, piped.stderr
    assert {json.loads(line)["prompt_id"] for line in piped.stdout.splitlines()} == {doc_pid}
    short = pid[:8]  # what the history table shows
    assert invoke("watch", short).exit_code == 0
    assert invoke("history", short, "--no-refresh", "--json").exit_code == 0
    assert invoke("detect-stuck", short).exit_code == 0
    assert invoke("cancel", short).stdout.startswith(pid)  # already finished: reported
    assert invoke("watch", pid[:3]).exit_code == 4  # too short to be a prefix


def test_verbose_says_what_happens_on_stderr(emulator, workflow, run_comfyctl):
    proc = run_comfyctl(
        "-v",
        "submit",
        workflow(quick_graph(steps=1, seconds=0.01)),
        "-s",
        emulator.url,
        "--wait",
        "--poll-interval",
        "0.3",
    )
    assert proc.returncode == 0, proc.stderr
    assert "sending" in proc.stderr and "following 1 job(s)" in proc.stderr
    assert "comfyctl:" not in proc.stdout  # logging never goes to stdout


def test_a_jobs_line_comes_before_its_downloads_messages(
    emulator, workflow, tmp_path, run_comfyctl
) -> None:
    """watch writes its lines in one write per wake-up; a job's own line still goes out
    before the files it downloads are reported (stdout and stderr on one terminal)."""
    submitted = run_comfyctl("submit", workflow(), "-s", emulator.url, "--wait")
    job = submitted.stdout.split()[0]
    both = subprocess.run(
        [sys.executable, "-m", "comfyctl", "watch", job, "--download", str(tmp_path / "o")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    lines = both.stdout.splitlines()
    assert both.returncode == 0, lines
    state = next(i for i, line in enumerate(lines) if line.startswith(job))
    saved = next(i for i, line in enumerate(lines) if line.startswith("comfyctl: saved: "))
    assert state < saved, lines


@pytest.mark.parametrize(
    "option", [("--timeout", "2"), ("--download", "out"), ("--exec", "true"), ("--fail-on-stall",)]
)
def test_following_options_without_wait_are_usage_errors(
    invoke, emulator, workflow, ledger_path, option
):
    """submit follows nothing without --wait: an option about following (which a script
    would trust to bound or act on the run) is refused, not silently ignored."""
    result = invoke("submit", workflow(), "-s", emulator.url, *option)
    assert result.exit_code == 2, result.stderr
    assert option[0] in result.stderr and "--wait" in result.stderr
    assert len(Ledger(ledger_path).load()) == 0  # nothing was sent


def test_submit_wait_timeout_counts_from_the_start(invoke, emulator, workflow, ledger_path):
    """--timeout is "give up after this long" for the whole command: time spent submitting
    counts (a submit whose reply hangs is uncertain, then followed for what is left)."""
    emulator.faults.reply, emulator.faults.reply_routes = "freeze", ("POST /prompt",)
    config = Path(os.environ["COMFYCTL_CONFIG"])
    config.write_text(f'[servers.a]\nurl = "{emulator.url}"\ntimeout = 1.0\n')
    started = time.monotonic()
    result = invoke("submit", workflow(), "-s", "a", "--wait", "--timeout", "3")
    took = time.monotonic() - started
    emulator.faults.clear()
    assert result.exit_code == 5, result.stderr
    assert took < 4.2, took  # the submit's 2 x 1 s, then what is left of 3 s; not 3 s more


def test_verbose_names_requests_that_failed_too(workflow, run_comfyctl, ledger_path):
    """-vv shows each request with its answer; one that got none (refused, timed out) is
    shown with why, so a long wait on a hanging server is not a silent one."""
    import socket

    from comfyctl.records import new_record

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    record = new_record("d" * 32, "gone", url, "c" * 32, None)
    record["status"] = "running"
    with Ledger(ledger_path).transaction() as tasks:
        tasks.put(record)
    proc = run_comfyctl("-vv", "history", record["prompt_id"])
    assert proc.returncode == 0, proc.stderr
    assert f"GET {url}/api/jobs -> refused" in proc.stderr, proc.stderr


def test_a_job_cancelled_elsewhere_is_shown_cancelled_by_its_watcher(
    emulator, workflow, invoke, ledger_path
):
    """cancel (another shell, another host) writes 'cancelled' and stops the job on its
    server; the watcher then sees it vanish from the queue, or interrupted. What the
    watcher reports must be what the ledger says (and hooks announced), not its own guess."""
    long_wf = workflow(slow_graph(steps=60, seconds=0.1))
    running, waiting = invoke("submit", long_wf, "-s", emulator.url, "--count", "2").stdout.split()
    watch = subprocess.Popen(
        [sys.executable, "-m", "comfyctl", "watch", running, waiting, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert watch.stdout is not None
        for line in watch.stdout:  # the first job is running and listened to
            event = json.loads(line)
            if event.get("prompt_id") == running and event["event"] == "progress":
                break
        assert invoke("cancel", running, waiting).exit_code == 0
        out, err = watch.communicate(timeout=30)
    finally:
        watch.kill()
    ends = {
        e["prompt_id"]: e["status"]
        for e in map(json.loads, out.splitlines())
        if e["event"] == "state" and e["status"] not in ("pending", "running")
    }
    assert ends == {running: "cancelled", waiting: "cancelled"}, (ends, err)
    assert {r["status"] for r in records(ledger_path).values()} == {"cancelled"}
