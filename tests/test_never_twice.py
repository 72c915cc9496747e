"""A job runs at most once, and every job comfyctl accepted stays in the ledger until it ends.

Each test drives a fault the emulator reproduces on a real socket (a reply dropped after
the request was read, a 200 with a garbled body, a server that takes a job and freezes)
and checks the servers' own queues and histories: no job may be on two servers, and every
id printed on stdout must be in the ledger.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from workflows import slow_graph

from comfyctl.errors import ExitCode
from comfyctl.ledger import Ledger


@pytest.fixture
def wf(tmp_path: Path) -> str:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(slow_graph(steps=2, seconds=0.01)))
    return str(path)


def configure(config_path: Path, timeout: float = 1.0, **servers: str) -> None:
    """Named servers with a short read timeout (a frozen server costs one timeout)."""
    text = f"[defaults]\ntimeout = {timeout}\nconnect_timeout = 1\n"
    for name, url in servers.items():
        text += f'[servers.{name}]\nurl = "{url}"\n'
    config_path.write_text(text)


def server_ids(emu) -> list[str]:
    """Every prompt id the server has queued, running or in its history (duplicates kept)."""
    emu.faults.clear()
    import requests

    queue = requests.get(emu.url + "/queue", timeout=5).json()
    history = requests.get(emu.url + "/history", timeout=5).json()
    return [item[1] for key in ("queue_running", "queue_pending") for item in queue[key]] + list(
        history
    )


def test_uncertain_send_to_a_is_never_sent_to_b(
    emulator_factory, invoke, config_path, wf, ledger_path
):
    """Point 1: a takes the job and freezes (the reply and the confirmation both time out).
    The job must not go to b; its id is printed and its record kept."""
    a, b = emulator_factory(), emulator_factory()
    configure(config_path, a=a.url, b=b.url)
    a.faults.reply, a.faults.reply_routes = "freeze", ("POST /prompt",)
    result = invoke("submit", wf, "-s", "a", "-s", "b")
    assert result.exit_code == ExitCode.UNCERTAIN, result.stderr
    [pid] = result.stdout.split()
    assert "uncertain" in result.stderr and "Trying another server" not in result.stderr
    ledger = Ledger(ledger_path).load()
    assert list(ledger) == [pid] and ledger[pid]["server"] == "a"
    assert ledger[pid]["status"] == "submitting"
    a.faults.clear()
    a.wait_idle(timeout=10)
    assert server_ids(b) == [] and server_ids(a) == [pid]
    watched = invoke("watch", pid, "--timeout", "20", "--poll-interval", "0.2")
    assert watched.exit_code == 0, watched.stderr
    assert Ledger(ledger_path).get(pid)["status"] == "success"


@pytest.mark.parametrize("routes", [("POST /prompt",), ()], ids=["only-the-reply", "every-reply"])
@pytest.mark.parametrize("mode", ["garble", "drop"])
def test_garbled_or_dropped_reply_keeps_the_job(
    emulator_factory, invoke, config_path, wf, ledger_path, mode, routes
):
    """Point 2: the server queued the job and its reply came garbled or not at all. When the
    server can be asked, the job is confirmed (exit 0); else it is uncertain (exit 11,
    never 3): in both cases its id is printed and its record kept."""
    a = emulator_factory()
    configure(config_path, a=a.url)
    a.faults.reply, a.faults.reply_routes = mode, routes
    result = invoke("submit", wf, "-s", "a")
    confirmed = bool(routes)
    assert result.exit_code == (0 if confirmed else ExitCode.UNCERTAIN), result.stderr
    assert result.stderr.count("is uncertain") == (0 if confirmed else 1), result.stderr
    [pid] = result.stdout.split()
    record = Ledger(ledger_path).get(pid)
    assert record is not None
    assert record["status"] in (("pending", "running", "success") if confirmed else ("submitting",))
    a.faults.clear()
    a.wait_idle(timeout=10)
    assert server_ids(a) == [pid]
    assert invoke("watch", pid, "--timeout", "20").exit_code == 0
    assert Ledger(ledger_path).get(pid)["status"] == "success"


def test_config_error_writes_nothing(emulator, invoke, config_path, wf, ledger_path, monkeypatch):
    """Point 3: a server whose secret is unset fails before anything is written."""
    monkeypatch.delenv("COMFYCTL_TEST_UNSET_PW", raising=False)
    config_path.write_text(
        f'[servers.a]\nurl = "{emulator.url}"\nusername = "u"\n'
        'password = "${COMFYCTL_TEST_UNSET_PW}"\n'
    )
    result = invoke("submit", wf, "-s", "a")
    assert result.exit_code == ExitCode.USAGE
    assert "COMFYCTL_TEST_UNSET_PW" in result.stderr
    assert len(Ledger(ledger_path).load()) == 0
    assert invoke("detect-stuck").exit_code == 0  # no phantom 'lost' job
    assert server_ids(emulator) == []


def test_frozen_server_prints_the_id_and_settles_later(
    emulator_factory, run_comfyctl, config_path, wf, ledger_path
):
    """Point 4, as a real process: a server that takes the job and never answers. The id
    is on stdout (so `submit | watch -` follows it), the outcome is called uncertain, the
    record is kept and settled by the next command that reaches the server."""
    a = emulator_factory()
    configure(config_path, a=a.url)
    a.faults.reply = "freeze"
    submitted = run_comfyctl("submit", wf, "-s", "a")
    assert submitted.returncode == ExitCode.UNCERTAIN, submitted.stderr
    assert "uncertain" in submitted.stderr and "Traceback" not in submitted.stderr
    [pid] = submitted.stdout.split()
    assert Ledger(ledger_path).get(pid)["status"] == "submitting"
    a.faults.clear()
    watched = run_comfyctl(
        "watch", "-", "--poll-interval", "0.2", "--timeout", "30", input=submitted.stdout
    )
    assert watched.returncode == 0, watched.stderr
    assert Ledger(ledger_path).get(pid)["status"] == "success"
    assert server_ids(a) == [pid]


@pytest.mark.parametrize("failure", ["locked", "disk-full"])
@pytest.mark.parametrize("reply", ["answered", "dropped-then-confirmed"])
def test_a_ledger_that_fails_after_the_post_still_gets_the_id_printed(
    emulator, invoke, run_comfyctl, wf, ledger_path, monkeypatch, failure, reply
):
    """The server queued the job; only the ledger's "pending" could not be written (a
    database gone, a lock held too long, a full disk), after its reply or after asking it
    when the reply was lost. The id is printed and the exit is 11, never 7 (or 1): a
    script that resubmits on "ledger unreachable" would run the job twice."""
    import errno

    from comfyctl.errors import LedgerLocked

    real = Ledger.transaction
    calls = []

    def failing_after_the_post(self):
        calls.append(1)
        if len(calls) == 2:  # the first writes ahead; the second records the queued job
            if failure == "locked":
                raise LedgerLocked(self.path, 1.0)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self)

    if reply != "answered":
        emulator.faults.reply, emulator.faults.reply_routes = "drop", ("POST /prompt",)
    monkeypatch.setattr(Ledger, "transaction", failing_after_the_post)
    submitted = invoke("submit", wf, "-s", emulator.url)
    monkeypatch.setattr(Ledger, "transaction", real)
    assert submitted.exit_code == ExitCode.UNCERTAIN, submitted.stderr
    [pid] = submitted.stdout.split()
    assert "queued" in submitted.stderr and "do not submit it again" in submitted.stderr
    assert Ledger(ledger_path).get(pid)["status"] == "submitting"  # the write-ahead record
    emulator.wait_idle(timeout=10)  # not between its queue and its history when asked
    assert server_ids(emulator) == [pid]
    watched = run_comfyctl("watch", pid, "--poll-interval", "0.2", "--timeout", "30")
    assert watched.returncode == 0, watched.stderr
    assert Ledger(ledger_path).get(pid)["status"] == "success"


def test_a_ledger_that_fails_mid_batch_ends_with_the_queued_jobs_exit_11(
    emulator_factory, invoke, config_path, wf, ledger_path, monkeypatch
):
    """Job 1 was queued and could not be recorded; the ledger still fails for job 2. The
    exit is 11 (do not resubmit job 1), not the ledger's 7; job 2 is never sent."""
    from comfyctl.errors import LedgerLocked

    a, b = emulator_factory(), emulator_factory()
    configure(config_path, a=a.url, b=b.url)
    real = Ledger.transaction
    calls = []

    def failing_from_the_second(self):
        calls.append(1)
        if len(calls) >= 2:
            raise LedgerLocked(self.path, 1.0)
        return real(self)

    monkeypatch.setattr(Ledger, "transaction", failing_from_the_second)
    submitted = invoke("submit", wf, "-s", "a", "-s", "b", "--count", "2")
    monkeypatch.setattr(Ledger, "transaction", real)
    assert submitted.exit_code == ExitCode.UNCERTAIN, submitted.stderr
    [pid] = submitted.stdout.split()
    a.wait_idle(timeout=10)
    b.wait_idle(timeout=10)
    assert sorted(server_ids(a) + server_ids(b)) == [pid]


def test_uncertain_submit_the_server_never_got_is_settled_lost(
    emulator_factory, invoke, config_path, wf, ledger_path
):
    """The other end of point 4: asked later, the server does not know the job, so the
    record is settled (not left 'submitting' forever) and the job never ran twice."""
    a = emulator_factory()
    configure(config_path, a=a.url)
    a.faults.http_hang = True  # hangs before reading: nothing is queued
    result = invoke("submit", wf, "-s", "a")
    assert result.exit_code == ExitCode.UNCERTAIN
    [pid] = result.stdout.split()
    a.restart()  # ends the hanging requests unread
    a.faults.clear()
    assert invoke("history", pid).exit_code == 0
    record = Ledger(ledger_path).get(pid)
    assert record["status"] == "lost" and record["error"]["type"] == "submit_failed"
    assert server_ids(a) == []


def uncertain_submit_to_an_older_server(emulator_factory, invoke, config_path, workflow):
    """A server that gives jobs ids of its own takes one and freezes before it answers:
    the submit is uncertain (exit 11), its write-ahead record under comfyctl's id. The
    server answers again afterwards. Returns the server and the printed id."""
    a = emulator_factory()
    configure(config_path, a=a.url)
    a.faults.own_prompt_ids = True
    a.faults.reply, a.faults.reply_routes = "freeze", ("POST /prompt",)
    result = invoke("submit", str(workflow), "-s", "a")
    assert result.exit_code == ExitCode.UNCERTAIN, result.stderr
    [pid] = result.stdout.split()
    a.faults.reply = None
    return a, pid


@pytest.mark.parametrize("settler", ["history", "watch"])
def test_an_older_servers_own_id_is_adopted_when_an_uncertain_submit_is_settled(
    emulator_factory, invoke, config_path, wf, ledger_path, settler
):
    """A server older than client-chosen ids queues the job under an id of its own, and the
    reply is lost: the write-ahead record's id is one the server never heard of. Settled
    later, the job is found by its client_id and recorded under the server's id, never as
    lost (recover would send it again)."""
    a, pid = uncertain_submit_to_an_older_server(emulator_factory, invoke, config_path, wf)
    a.wait_idle(timeout=10)
    [server_id] = server_ids(a)
    assert server_id != pid
    args = ("watch", pid, "--timeout", "20", "--poll-interval", "0.2") if settler == "watch" else ()
    settled = invoke(*(args or ("history", pid)))
    assert settled.exit_code == 0, settled.stdout + settled.stderr
    assert server_id in settled.stdout
    ledger = Ledger(ledger_path).load()
    assert list(ledger) == [server_id]
    assert ledger[server_id]["status"] == "success"
    # The id submit printed still names the job (what scripts and the hint go on with).
    again = invoke("history", pid, "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["prompt_id"] == server_id
    assert json.loads(again.stdout)["submitted_as"] == pid
    short = invoke("history", pid[:8], "--json")  # a prefix of it too, as of any id
    assert short.exit_code == 0 and json.loads(short.stdout)["prompt_id"] == server_id
    recovered = invoke("recover", "--resubmit", "--nl")
    assert recovered.exit_code == 0 and recovered.stdout == "", recovered.stdout
    assert server_ids(a) == [server_id]


def test_an_older_servers_job_running_when_watch_starts_is_adopted_not_lost(
    emulator_factory, invoke, config_path, wf, ledger_path, tmp_path
):
    """Its socket (the job's client_id) replays the running node without a prompt_id: that
    must not make the write-ahead record "running" under an id the server does not know,
    which the polls would then call lost."""
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(slow_graph(steps=60, seconds=0.05)))
    a, pid = uncertain_submit_to_an_older_server(emulator_factory, invoke, config_path, slow)
    time.sleep(0.5)  # running on the server
    watched = invoke("watch", pid, "--timeout", "30", "--poll-interval", "0.3")
    assert watched.exit_code == 0, watched.stdout + watched.stderr
    [server_id] = server_ids(a)
    assert server_id != pid and list(Ledger(ledger_path).load()) == [server_id]
    assert Ledger(ledger_path).get(server_id)["status"] == "success"


def test_a_watch_follows_an_older_servers_job_another_process_adopted(
    emulator_factory, invoke, config_path, ledger_path, tmp_path
):
    """The record moved to the server's id under a watch that follows the old one (a
    history run adopted it): the watch follows it there, to its end."""
    import subprocess
    import sys

    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(slow_graph(steps=60, seconds=0.05)))
    a, pid = uncertain_submit_to_an_older_server(emulator_factory, invoke, config_path, slow)
    watch = subprocess.Popen(
        [sys.executable, "-m", "comfyctl", "watch", pid, "--poll-interval", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # following, and not yet polled twice
    [server_id] = server_ids(a)
    assert server_id in invoke("history", pid).stdout  # adopted by this process
    out, err = watch.communicate(timeout=60)
    assert watch.returncode == 0, err
    assert f"{server_id[:8]}" in out and "success" in out, out


def test_an_older_servers_job_many_jobs_ago_is_still_found_by_client_id(
    emulator_factory, invoke, config_path, wf, ledger_path
):
    """Settled after more jobs than the recent end of /history holds: still found (a
    "never arrived" would let recover send it again)."""
    from comfyctl.client import RECENT_HISTORY

    a, pid = uncertain_submit_to_an_older_server(emulator_factory, invoke, config_path, wf)
    a.wait_idle(timeout=10)
    [server_id] = server_ids(a)
    import requests

    a.faults.own_prompt_ids = True  # cleared by server_ids
    for n in range(RECENT_HISTORY):  # another client's jobs, after it
        other = {"prompt": slow_graph(steps=1, seconds=0.0), "client_id": f"other-{n}"}
        assert requests.post(a.url + "/prompt", json=other, timeout=5).status_code == 200
    a.wait_idle(timeout=60)
    settled = invoke("history", pid)
    assert settled.exit_code == 0 and server_id in settled.stdout, settled.stdout
    assert Ledger(ledger_path).get(server_id)["status"] == "success"


def test_recover_finds_an_older_servers_job_by_client_id_and_never_sends_it_twice(
    emulator_factory, invoke, config_path, wf, ledger_path
):
    """detect-stuck and recover settle crashed submits first, as every refresh does: even
    asked to resubmit forgotten jobs, recover sends nothing."""
    a, _ = uncertain_submit_to_an_older_server(emulator_factory, invoke, config_path, wf)
    a.wait_idle(timeout=10)
    [server_id] = server_ids(a)
    detected = invoke("detect-stuck", "--nl")
    assert detected.exit_code == 0 and detected.stdout == "", detected.stdout
    recovered = invoke("recover", "--resubmit", "--resubmit-forgotten", "--nl")
    assert recovered.exit_code == 0 and recovered.stdout == "", recovered.stdout
    assert server_ids(a) == [server_id]
    assert Ledger(ledger_path).get(server_id)["status"] == "success"


@pytest.mark.parametrize("how", ["submit-wait", "history"])
def test_failed_download_exits_1_naming_the_file_and_the_reason(
    emulator, invoke, wf, tmp_path, ledger_path, how
):
    """Point 8: a /view answered 400 is a server error for that file, not "unreachable",
    and the command exits 1."""
    emulator.faults.output_filename = "../outside.png"  # ComfyUI's /view refuses '..' (400)
    out = tmp_path / "out"
    if how == "submit-wait":
        result = invoke(
            "submit",
            wf,
            "-s",
            emulator.url,
            "--wait",
            "--download",
            str(out),
            "--poll-interval",
            "0.2",
            "--timeout",
            "30",
        )
    else:
        pid = invoke("submit", wf, "-s", emulator.url).stdout.strip()
        emulator.wait_idle(timeout=10)
        assert invoke("watch", pid).exit_code == 0
        result = invoke("history", pid, "--download", str(out))
    assert result.exit_code == ExitCode.FAILED, result.stderr
    assert "outside.png" in result.stderr and "http 400" in result.stderr
    assert "unreachable" not in result.stderr


# -- point 5: failover never leaves the original running -----------------------------------


def gone_from_queue(emu, prompt_id: str) -> bool:
    """Whether the job leaves the server's queue (an interrupt takes effect at the next
    step, so it is given a few seconds)."""
    import time

    import requests

    for _ in range(100):
        queue = requests.get(emu.url + "/queue", timeout=5).json()
        if prompt_id not in [
            item[1] for key in ("queue_running", "queue_pending") for item in queue[key]
        ]:
            return True
        time.sleep(0.05)
    return False


def fail_over(invoke, a, b, wf_path: Path, ledger_path: Path, pending: bool) -> tuple[str, str]:
    """A job on b (running, stalled at 50%; or pending behind such a job) while b freezes;
    recover fails it over to a. Returns (original on b, its copy on a)."""
    b.faults.stall_at_percent = 50.0
    slow = json.dumps(slow_graph(steps=10, seconds=0.01))
    wf_path.write_text(slow)
    ids = invoke(
        "submit", str(wf_path), "-s", "b", "--count", "2" if pending else "1", "--vary-seed"
    ).stdout.split()
    original = ids[-1]
    b.faults.http_hang = True
    result = invoke("recover", "--resubmit", "--to", "a", "--server-timeout", "1", "--nl")
    actions = {x["prompt_id"]: x for x in map(json.loads, result.stdout.splitlines())}
    copy = actions[original]["new_prompt_id"]
    assert copy and Ledger(ledger_path).get(copy)["server_url"] == a.url
    b.faults.http_hang = False  # b thaws: the original is still there
    return original, copy


@pytest.mark.parametrize("reach", ["detect-stuck", "history", "watch", "debug-tasks"])
@pytest.mark.parametrize("pending", [False, True], ids=["running", "pending"])
def test_superseded_job_is_cancelled_when_its_server_is_reached_again(
    emulator_factory, invoke, config_path, tmp_path, ledger_path, reach, pending
):
    a, b = emulator_factory(), emulator_factory()
    configure(config_path, timeout=2.0, a=a.url, b=b.url)
    original, copy = fail_over(invoke, a, b, tmp_path / "slow.json", ledger_path, pending)
    if reach == "watch":  # following another job on b reaches b
        other = invoke("submit", str(tmp_path / "slow.json"), "-s", "b").stdout.strip()
        invoke("watch", other, "--timeout", "2", "--poll-interval", "0.2")
    elif reach == "history":
        invoke("history", "--refresh")
    else:
        invoke(reach)
    record = Ledger(ledger_path).get(original)
    assert record["status"] == "cancelled", record
    assert record["superseded_by"] == copy and record["error"]["type"] == "superseded"
    assert gone_from_queue(b, original)
    # One consistent story: the list, the single view and debug-tasks agree.
    listed = json.loads(invoke("history", "--refresh", "--json").stdout)["tasks"]
    single = json.loads(invoke("history", original, "--json").stdout)
    assert {t["prompt_id"]: t["status"] for t in listed}[original] == "cancelled"
    assert single["status"] == "cancelled" and single["error"]["type"] == "superseded"


def test_superseded_job_that_ran_anyway_says_so_once(
    emulator_factory, invoke, config_path, tmp_path, ledger_path
):
    """If the original finished before any command reached its server again, its record
    says it ran (no 'lost' error beside a success), with a warning naming the copy."""
    a, b = emulator_factory(), emulator_factory()
    configure(config_path, timeout=2.0, a=a.url, b=b.url)
    original, copy = fail_over(invoke, a, b, tmp_path / "slow.json", ledger_path, False)
    b.faults.stall_at_percent = None  # it runs on to the end before anyone asks
    b.wait_idle(timeout=10)
    assert invoke("history", original, "--json").exit_code == 0
    record = Ledger(ledger_path).get(original)
    assert record["status"] == "success" and record["error"] is None
    assert record["superseded_by"] == copy
    assert any(copy in w and "both ran" in w for w in record["warnings"])
    assert (
        invoke("history", original, "--json").stdout == invoke("history", original, "--json").stdout
    )  # settled once: nothing changes
    # The one thing comfyctl exists to prevent happened: debug-tasks says so.
    report = json.loads(invoke("debug-tasks", "--json").stdout)
    (anomaly,) = [a for a in report["anomalies"] if a["kind"] == "ran-twice"]
    assert anomaly["prompt_id"] == original and copy in anomaly["detail"]


# -- point 6: cancel by a short id ---------------------------------------------------------


def test_cancel_by_short_id_interrupts_a_running_job(emulator, invoke, tmp_path, ledger_path):
    path = tmp_path / "long.json"
    path.write_text(json.dumps(slow_graph(steps=400, seconds=0.05)))
    pid = invoke("submit", str(path), "-s", emulator.url).stdout.strip()
    assert invoke("watch", pid, "--timeout", "0.5").exit_code == 5  # it is running now
    result = invoke("cancel", pid[:8])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "interrupted by prompt_id" in result.stdout
    assert gone_from_queue(emulator, pid)
    assert Ledger(ledger_path).get(pid)["status"] in ("cancelled", "interrupted")


def test_cancel_exits_1_when_a_named_job_could_not_be_cancelled(emulator, invoke, wf, ledger_path):
    pid = invoke("submit", wf, "-s", emulator.url).stdout.strip()
    emulator.wait_idle(timeout=10)
    assert invoke("watch", pid).exit_code == 0
    result = invoke("cancel", pid[:6])
    assert result.exit_code == ExitCode.FAILED
    assert "already success" in result.stdout and pid in result.stderr


# -- point 7: the server's times ---------------------------------------------------------


@pytest.mark.parametrize("jobs_api", [False, True], ids=["classic", "jobs-api"])
@pytest.mark.parametrize("notice", ["recover", "watch"])
def test_start_and_end_are_the_servers_times(
    emulator_factory, invoke, wf, ledger_path, jobs_api, notice
):
    """Noticed late (the job ran while nobody watched), the record still says when the
    server ran it: execution_start and execution_success from the server's history."""
    import requests

    from comfyctl.events import server_timing

    emu = emulator_factory(jobs_api=jobs_api)
    path = Path(wf)
    path.write_text(json.dumps(slow_graph(steps=10, seconds=0.03)))
    pid = invoke("submit", wf, "-s", emu.url).stdout.strip()
    emu.wait_idle(timeout=10)
    messages = dict(
        requests.get(f"{emu.url}/history/{pid}", timeout=5).json()[pid]["status"]["messages"]
    )
    expected = server_timing(
        None, messages["execution_start"]["timestamp"], messages["execution_success"]["timestamp"]
    )
    assert invoke(notice, *([] if notice == "recover" else [pid])).exit_code == 0
    record = Ledger(ledger_path).get(pid)
    assert record["status"] == "success"
    assert (record["started_at"], record["finished_at"]) == (
        expected["started_at"],
        expected["finished_at"],
    )


# -- point 9: pipes and streams ------------------------------------------------------------


def many_records(ledger_path: Path, count: int = 300, status: str = "success") -> list[str]:
    """A ledger big enough that its output outlasts any pipe buffer."""
    from comfyctl.records import new_record, view_url

    ids = []
    with Ledger(ledger_path).transaction() as tasks:
        for n in range(count):
            record = new_record(
                f"00000000-0000-4000-8000-{n:012d}",
                "gone",
                "http://127.0.0.1:9",
                f"comfyctl-{n}",
                None,
            )
            record["status"] = status
            record["outputs"] = [
                {
                    "node": "3",
                    "key": "images",
                    "filename": f"f{n}_{i}.png",
                    "subfolder": "",
                    "type": "output",
                    "url": view_url("http://127.0.0.1:9", f"f{n}_{i}.png", "", "output"),
                }
                for i in range(5)
            ]
            tasks.put(record)
            ids.append(record["prompt_id"])
    return ids


@pytest.mark.parametrize(
    "command", ["history --nl", "history --outputs", "history", "debug-tasks", "watch - --json"]
)
def test_a_closed_stdout_ends_the_command_quietly(ledger_path, tmp_path, command):
    import subprocess
    import sys

    ids = many_records(ledger_path, status="running" if command == "debug-tasks" else "success")
    (tmp_path / "ids").write_text("\n".join(ids) + "\n")
    line = (
        f"{sys.executable} -m comfyctl {command} --server-timeout 0.5 < {tmp_path / 'ids'}"
        if command == "debug-tasks"
        else f"{sys.executable} -m comfyctl {command} < {tmp_path / 'ids'}"
    )
    script = f'{line} | head -1; echo "exit=${{PIPESTATUS[0]}}" >&2'
    proc = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[1],
    )
    assert len(proc.stdout.splitlines()) == 1
    # Nothing on stderr; 141 as for any program SIGPIPE stops (0 when the whole output fit
    # in the pipe before head left, as a table printed in one write may, or watch's lines
    # of one wake-up).
    one_write = command in ("history", "watch - --json")
    codes = {f"exit={ExitCode.BROKEN_PIPE}"} | ({"exit=0"} if one_write else set())
    assert proc.stderr.strip() in codes, proc.stderr


@pytest.mark.parametrize("command", ["watch -", "submit - -s http://127.0.0.1:9"])
def test_a_closed_stdin_is_a_clear_usage_error(command):
    import subprocess
    import sys

    proc = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m comfyctl {command} <&-"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[1],
    )
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "stdin is closed" in proc.stderr and "Traceback" not in proc.stderr


# -- point 10: small ones seen at the same time ---------------------------------------------


def test_demo_never_writes_the_ledger_named_by_the_environment(invoke, ledger_path):
    result = invoke("demo", "--jobs", "2", "--steps", "1")
    assert result.exit_code == 0, result.stderr
    assert not ledger_path.exists() or len(Ledger(ledger_path).load()) == 0


@pytest.mark.parametrize("corruption", ["status-42", "cut-line"])
def test_a_corrupt_record_line_is_exit_7_not_hidden(ledger_path, invoke, corruption):
    ids = many_records(ledger_path, count=3)
    raw = ledger_path.read_text()
    if corruption == "status-42":
        raw = raw.replace('"status":"success"', '"status":42', 1)
    else:  # a line cut off before its submit time
        start = raw.index(f'"{ids[1]}":')
        end = raw.index("\n", start)
        raw = raw[:start] + raw[start : start + 60] + ",\n" + raw[end + 1 :]
    ledger_path.write_text(raw)
    broken = ids[0] if corruption == "status-42" else ids[1]
    for args in (("history",), ("history", "--json"), ("history", broken)):
        result = invoke(*args)
        assert result.exit_code == ExitCode.LEDGER, (args, result.stdout)


def test_a_missing_config_named_by_the_environment_is_an_error(invoke, monkeypatch, tmp_path):
    monkeypatch.setenv("COMFYCTL_CONFIG", str(tmp_path / "nonexistent.toml"))
    result = invoke("servers")
    assert result.exit_code == ExitCode.USAGE
    assert "nonexistent.toml" in result.stderr


def test_a_label_given_twice_with_two_values_is_a_usage_error(invoke, emulator, wf, ledger_path):
    result = invoke("submit", wf, "-s", emulator.url, "--label", "k=1", "--label", "k=2")
    assert result.exit_code == ExitCode.USAGE and "twice" in result.stderr
    assert len(Ledger(ledger_path).load()) == 0


def test_two_output_formats_are_a_usage_error(invoke):
    result = invoke("history", "--json", "--csv")
    assert result.exit_code == ExitCode.USAGE
    assert "--json and --csv" in result.stderr


def test_an_unusable_ledger_path_is_named(invoke, emulator, wf, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = invoke("--ledger", str(blocker / "l.json"), "submit", wf, "-s", emulator.url)
    assert result.exit_code != 0
    assert str(blocker) in result.stderr


def test_a_rejection_message_ends_in_one_full_stop(invoke, emulator, tmp_path):
    path = tmp_path / "bad.json"
    graph = slow_graph()
    del graph["2"]["inputs"]["steps"]
    path.write_text(json.dumps(graph))
    result = invoke("submit", str(path), "-s", emulator.url)
    assert result.exit_code == ExitCode.FAILED
    assert "rejected the workflow" in result.stderr and ".." not in result.stderr


def test_a_url_whose_prefix_leads_elsewhere_is_a_server_error_and_leaves_no_record(
    run_comfyctl, emulator, wf, ledger_path
):
    """POST /prompt answered 404: nothing was queued, so the job is not "rejected" (exit 1)
    but a server error (exit 9) naming the status, with a hint at the URL, and the ledger
    keeps no record of it (as after any submit that certainly did not reach ComfyUI)."""
    result = run_comfyctl("submit", wf, "-s", emulator.url + "/wrongprefix")
    assert result.returncode == ExitCode.SERVER_ERROR, result.stderr
    assert result.stdout == ""
    assert "rejected" not in result.stderr and "http 404" in result.stderr
    assert "URL" in result.stderr and ".." not in result.stderr
    assert not ledger_path.exists() or Ledger(ledger_path).load().values() == []


# -- the property: never twice, never lost --------------------------------------------------

FAULTS = {
    "none": {},
    "refused": None,  # the server's name points at a port nobody listens on
    "hang": {"http_hang": True},  # every request hangs before it is read
    "http-500": {"http_status": 500},  # a proxy's error page, before ComfyUI sees it
    "truncated-json": {"malformed_json": True},  # after the handler: the job is queued
    "login-page": {"wrong_content_type": True},
    **{
        f"{mode}-{scope}": {"reply": mode, "reply_routes": routes}
        for mode in ("drop", "garble", "freeze")
        for scope, routes in (("prompt", ("POST /prompt",)), ("all", ()))
    },
}


def server_jobs(emu) -> list[tuple[str, dict]]:
    """(prompt_id, graph) of every job the server has queued, running or in its history."""
    import requests

    queue = requests.get(emu.url + "/queue", timeout=10).json()
    history = requests.get(emu.url + "/history", timeout=10).json()
    items = [
        (item[1], item[2]) for key in ("queue_running", "queue_pending") for item in queue[key]
    ]
    return items + [(pid, entry["prompt"][2]) for pid, entry in history.items()]


@pytest.fixture
def two_servers(emulator_factory):
    return emulator_factory(), emulator_factory()


def test_property_each_job_runs_at_most_once_and_every_printed_id_is_kept(
    two_servers, invoke, tmp_path
):
    """For any faults on one or both servers during `submit -s a -s b --count N`: the
    union of the servers' queues and histories holds each job at most once (copies differ
    by seed), every job a server holds is in the ledger, and every id printed is in it."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    emus = dict(zip("ab", two_servers, strict=True))
    runs = iter(range(10**6))

    @settings(
        max_examples=20,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        faults=st.tuples(st.sampled_from(sorted(FAULTS)), st.sampled_from(sorted(FAULTS))),
        count=st.integers(min_value=1, max_value=3),
    )
    def check(faults: tuple[str, str], count: int) -> None:
        run = next(runs)
        config = tmp_path / f"config{run}.toml"
        ledger = tmp_path / f"ledger{run}.json"
        urls = {}
        for name, fault in zip("ab", faults, strict=True):
            emu = emus[name]
            emu.faults.clear()
            emu.restart()  # an empty queue and history for this example
            urls[name] = "http://127.0.0.1:9" if FAULTS[fault] is None else emu.url
            for field, value in (FAULTS[fault] or {}).items():
                setattr(emu.faults, field, value)
        configure(config, timeout=0.5, **urls)
        result = invoke(
            "--config",
            str(config),
            "--ledger",
            str(ledger),
            "submit",
            str(tmp_path / "wf.json"),
            "-s",
            "a",
            "-s",
            "b",
            "--count",
            str(count),
            "--vary-seed",
        )
        assert "Traceback" not in result.stderr
        for emu in emus.values():
            emu.faults.clear()  # frozen and hanging requests now go through
        for emu in emus.values():
            emu.wait_idle(timeout=20)
        records = Ledger(ledger).load()
        held = [job for emu in emus.values() for job in server_jobs(emu)]
        seeds = [graph["2"]["inputs"]["seed"] for _, graph in held]
        assert len(seeds) == len(set(seeds)), (faults, count, held)  # never twice
        assert {pid for pid, _ in held} <= set(records), (faults, count)  # never lost
        assert set(result.stdout.split()) <= set(records)
        assert result.exit_code in (
            0,
            ExitCode.UNREACHABLE,
            ExitCode.UNCERTAIN,
            ExitCode.SERVER_ERROR,
        ), (faults, result.stderr)

    (tmp_path / "wf.json").write_text(json.dumps(slow_graph(steps=1, seconds=0.01)))
    check()


def test_a_rejection_whose_message_has_a_full_stop_gets_no_second_one():
    from comfyctl.errors import WorkflowRejected

    exc = WorkflowRejected("a", {"type": "x", "message": "Value not in list."}, {}, 400)
    assert str(exc) == "Server a rejected the workflow: Value not in list."


@pytest.mark.parametrize("how, status", [("lost", "http 404"), ("denied", "http 403")])
def test_a_failed_download_is_told_once_in_full_and_summarised_once(
    emulator, invoke, wf, tmp_path, how, status
):
    """The per-file notice gives the reason as it happens; the final error names the file
    without repeating that reason, and no message ends in '..'."""
    pid = invoke("submit", wf, "-s", emulator.url, "--label", "batch=7").stdout.strip()
    emulator.wait_idle(timeout=10)
    assert invoke("watch", pid).exit_code == 0
    if how == "lost":
        for image in emulator.output_dir.rglob("*.png"):
            image.unlink()  # the server lost its output
    else:
        emulator.faults.http_status = 403  # a proxy in front refuses the /view
    result = invoke("history", "--label", "batch=7", "--download", str(tmp_path / "dl"))
    assert result.exit_code == ExitCode.FAILED, result.stderr
    lines = result.stderr.splitlines()
    assert ".." not in result.stderr, result.stderr
    assert sum(status in line for line in lines) == 1, result.stderr
    [final] = [line for line in lines if line.startswith("Error:")]
    assert "1 download(s) failed" in final and pid in final and ".png" in final, final
