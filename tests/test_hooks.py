"""Completion hooks (issue 16): --exec and webhooks, announced once per job's end."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from workflows import slow_graph, submit_jobs

from comfyctl.hooks import claim
from comfyctl.ledger import Ledger
from comfyctl.records import new_record

REPO = Path(__file__).resolve().parents[1]
# Writes one file per run: its environment, then the schema of its stdin record.
RECORDER = (
    'f="$HOOKS/run.$$"; '
    'printf "%s|%s|%s|%s|%s\\n" "$COMFYCTL_PROMPT_ID" "$COMFYCTL_STATUS" '
    '"$COMFYCTL_SERVER" "$COMFYCTL_SERVER_URL" "$COMFYCTL_OUTPUTS" > "$f.tmp"; '
    'cat > "$f.stdin"; mv "$f.tmp" "$f"'
)


def runs(hooks: Path) -> list[dict]:
    found = []
    for path in sorted(hooks.glob("run.*")):
        if path.suffix in (".tmp", ".stdin"):
            continue
        pid, status, server, url, outputs = path.read_text().rstrip("\n").split("|")
        stdin = json.loads(path.with_name(path.name + ".stdin").read_text())
        found.append(
            {
                "prompt_id": pid,
                "status": status,
                "server": server,
                "url": url,
                "outputs": outputs.split("\n") if outputs else [],
                "stdin": stdin,
            }
        )
    return found


def watcher(ids: list[str], hooks: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "comfyctl",
            "watch",
            *ids,
            "--exec",
            RECORDER,
            "--poll-interval",
            "0.3",
            "--timeout",
            "60",
            *extra,
        ],
        cwd=REPO,
        env={**os.environ, "HOOKS": str(hooks)},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_two_watchers_of_four_jobs_on_two_servers_run_the_hook_four_times(
    invoke, emulator_factory, tmp_path, ledger_path
):
    a, b = emulator_factory(), emulator_factory(jobs_api=True)
    ids = submit_jobs(invoke, tmp_path, a.url, slow_graph(steps=8, seconds=0.1), count=2)
    ids += submit_jobs(
        invoke, tmp_path, b.url, slow_graph(steps=8, seconds=0.1, fail_at=4), count=2
    )
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    procs = [watcher(ids, hooks), watcher(ids, hooks)]
    for proc in procs:
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 1, err  # two of the jobs fail: watch says so
    found = runs(hooks)
    assert sorted(r["prompt_id"] for r in found) == sorted(ids)  # 4 runs in all, one each
    ledger = Ledger(ledger_path).load()
    for run in found:
        record = ledger[run["prompt_id"]]
        assert (
            run["status"]
            == record["status"]
            == ("success" if record["server_url"] == a.url else "error")
        )
        assert (run["server"], run["url"]) == (record["server"], record["server_url"])
        assert run["outputs"] == [o["url"] for o in record["outputs"]]
        assert all(u.startswith(record["server_url"] + "/view?") for u in run["outputs"])
        assert run["stdin"]["schema"] == "comfyctl.task"
        assert run["stdin"]["prompt_id"] == run["prompt_id"]
        assert run["stdin"]["status"] == run["status"]
        assert record["notified"]["status"] == record["status"]
    assert sum(1 for r in found if r["outputs"]) == 2


def test_a_hanging_hook_does_not_delay_the_others_and_changes_no_record(
    invoke, emulator_factory, tmp_path, ledger_path, monkeypatch
):
    a, b = emulator_factory(), emulator_factory()
    (first,) = submit_jobs(invoke, tmp_path, a.url, slow_graph(steps=1, seconds=0.01))
    others = submit_jobs(invoke, tmp_path, b.url, slow_graph(steps=6, seconds=0.1), count=2)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    monkeypatch.setenv("HOOKS", str(hooks))
    # The first job's hook waits for the others' hooks to have run, then sleeps 60 s:
    # if hooks ran one after another it would never see them.
    hook = (
        f'if [ "$COMFYCTL_PROMPT_ID" = {first} ]; then '
        'for i in $(seq 100); do [ $(ls "$HOOKS" | grep -c done) -ge 2 ] && break; '
        'sleep 0.1; done; ls "$HOOKS" > "$HOOKS/seen"; sleep 60; touch "$HOOKS/woke"; '
        'else touch "$HOOKS/done.$COMFYCTL_PROMPT_ID"; fi'
    )
    result = invoke(
        "watch",
        first,
        *others,
        "--exec",
        hook,
        "--exec-timeout",
        "6",
        "--poll-interval",
        "0.3",
        "--timeout",
        "60",
    )
    assert result.exit_code == 0, result.stderr
    seen = [n for n in (hooks / "seen").read_text().split() if n != "seen"]
    assert sorted(seen) == sorted(f"done.{pid}" for pid in others)
    assert not (hooks / "woke").exists()
    assert f"hook for {first} was still running after 6s and was killed" in result.stderr
    record = Ledger(ledger_path).get(first)
    assert record["status"] == "success" and record["error"] is None


def test_a_failing_hook_is_reported_and_its_output_kept_off_stdout(
    invoke, emulator, tmp_path, ledger_path
):
    (pid,) = submit_jobs(invoke, tmp_path, emulator.url, slow_graph(steps=2, seconds=0.01))
    result = invoke(
        "watch",
        pid,
        "--exec",
        "echo to-stdout; echo to-stderr >&2; exit 3",
        "--poll-interval",
        "0.3",
    )
    assert result.exit_code == 0, result.stderr
    assert "to-stdout" not in result.stdout and "to-stderr" not in result.stdout
    assert f"comfyctl: hook for {pid}: to-stdout" in result.stderr
    assert f"hook for {pid} (success) exited with status 3" in result.stderr
    assert Ledger(ledger_path).get(pid)["status"] == "success"


def test_recover_announces_what_it_settles_once_and_a_later_watch_stays_quiet(
    invoke, emulator, tmp_path, ledger_path, monkeypatch
):
    ids = submit_jobs(invoke, tmp_path, emulator.url, slow_graph(steps=2, seconds=0.01), count=2)
    emulator.wait_idle(timeout=20)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    monkeypatch.setenv("HOOKS", str(hooks))
    first = invoke("recover", "--exec", RECORDER, "--confirm", "0")
    assert first.exit_code == 0, first.stderr
    assert sorted(r["prompt_id"] for r in runs(hooks)) == sorted(ids)
    again = invoke("recover", "--exec", RECORDER, "--confirm", "0")
    watched = invoke("watch", *ids, "--exec", RECORDER)
    assert again.exit_code == 0 and watched.exit_code == 0, watched.stderr
    assert len(runs(hooks)) == 2
    assert {r["status"] for r in runs(hooks)} == {"success"}


def test_a_watcher_without_hooks_leaves_the_announcement_to_one_with_them(
    invoke, emulator, tmp_path, ledger_path, monkeypatch
):
    (pid,) = submit_jobs(invoke, tmp_path, emulator.url, slow_graph(steps=2, seconds=0.01))
    assert invoke("watch", pid).exit_code == 0
    assert "notified" not in Ledger(ledger_path).get(pid)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    monkeypatch.setenv("HOOKS", str(hooks))
    assert invoke("watch", pid, "--exec", RECORDER).exit_code == 0
    assert [r["prompt_id"] for r in runs(hooks)] == [pid]


# -- the claim --------------------------------------------------------------------------


def test_the_claim_is_won_once_among_concurrent_claimers(ledger_path):
    record = new_record("p1", "gpu1", "http://127.0.0.1:1", "c1", None)
    with Ledger(ledger_path).transaction() as tasks:
        tasks.put({**record, "status": "success"})
    winners: list[object] = []
    # Separate Ledger objects: separate lock descriptors, as separate processes have.
    threads = [
        threading.Thread(target=lambda: winners.append(claim(Ledger(ledger_path), "p1")))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len([w for w in winners if w is not None]) == 1


def test_the_claim_is_per_terminal_state_and_never_for_an_active_job(ledger_path):
    ledger = Ledger(ledger_path)
    record = new_record("p1", "gpu1", "http://127.0.0.1:1", "c1", None)
    with ledger.transaction() as tasks:
        tasks.put({**record, "status": "running"})
    assert claim(ledger, "p1") is None
    assert claim(ledger, "missing") is None
    for status in ("lost", "success"):  # lost, then its server knew it after all
        with ledger.transaction() as tasks:
            tasks.put({**tasks["p1"], "status": status})
        claimed = claim(ledger, "p1")
        assert claimed is not None and claimed["notified"]["status"] == status
        assert claim(ledger, "p1") is None


# -- webhooks ---------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on loopback that fails each delivery's first attempt with 500."""

    def __init__(self) -> None:
        self.attempts: list[tuple[dict[str, str], bytes, int]] = []
        seen: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                delivery = self.headers.get("X-Comfyctl-Delivery", "")
                code = 200 if delivery in seen else 500
                seen.add(delivery)
                outer.attempts.append((dict(self.headers), body, code))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T0K3Nsecretpath"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for h, b, code in self.attempts if code == 200]


@pytest.fixture
def receiver():
    made = Receiver()
    yield made
    made.server.shutdown()


def test_a_webhook_failing_first_with_500_gets_one_good_signed_delivery_per_job(
    invoke, emulator, tmp_path, config_path, receiver, ledger_path
):
    config_path.write_text(
        f'webhook_secret = "s3cret-hook-key"\n[servers.gpu1]\nurl = "{emulator.url}"\n'
    )
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(slow_graph(steps=2, seconds=0.01)))
    result = invoke(
        "-vv",
        "submit",
        str(wf),
        "-s",
        "gpu1",
        "--count",
        "2",
        "--wait",
        "--webhook",
        receiver.url,
        "--poll-interval",
        "0.3",
    )
    assert result.exit_code == 0, result.stderr
    ids = result.stdout.split()[:2]
    delivered = receiver.delivered()
    assert sorted(json.loads(body)["prompt_id"] for _, body in delivered) == sorted(ids)
    assert len(receiver.attempts) == 4  # each: a 500, then one success
    for headers, body in delivered:
        expected = hmac.new(b"s3cret-hook-key", body, hashlib.sha256).hexdigest()
        assert headers["X-Comfyctl-Signature"] == f"sha256={expected}"
        record = json.loads(body)
        assert record["schema"] == "comfyctl.task" and record["status"] == "success"
    for secret in ("s3cret-hook-key", "T0K3Nsecretpath"):
        assert secret not in result.stderr and secret not in result.stdout


def test_the_configured_webhook_per_server_or_global_and_never_shown(
    invoke, emulator_factory, tmp_path, config_path, receiver
):
    a, b = emulator_factory(), emulator_factory()
    other = Receiver()
    try:
        config_path.write_text(
            f'webhook = "{receiver.url}"\nwebhook_secret = "global-secret"\n'
            f'[servers.a]\nurl = "{a.url}"\n'
            f'[servers.b]\nurl = "{b.url}"\nwebhook = "{other.url}"\n'
            'webhook_secret = "b-secret"\n'
        )
        pa = submit_jobs(invoke, tmp_path, "a", slow_graph(steps=2, seconds=0.01))
        pb = submit_jobs(invoke, tmp_path, "b", slow_graph(steps=2, seconds=0.01))
        result = invoke("watch", *pa, *pb, "--poll-interval", "0.3")
        assert result.exit_code == 0, result.stderr
        assert [json.loads(b)["prompt_id"] for _, b in receiver.delivered()] == pa
        ((headers, body),) = other.delivered()
        assert json.loads(body)["prompt_id"] == pb[0]
        assert (
            headers["X-Comfyctl-Signature"]
            == "sha256=" + hmac.new(b"b-secret", body, hashlib.sha256).hexdigest()
        )
        shown = invoke("servers", "--json").stdout + invoke("-vv", "servers").stderr
        assert json.loads(invoke("servers", "--json").stdout)["servers"][1]["webhook"] == "set"
        for secret in ("global-secret", "b-secret", "T0K3Nsecretpath"):
            assert secret not in shown
    finally:
        other.server.shutdown()


def test_a_webhook_that_keeps_failing_is_given_up_and_reported_by_host_only(
    invoke, emulator, tmp_path, ledger_path
):
    (pid,) = submit_jobs(invoke, tmp_path, emulator.url, slow_graph(steps=2, seconds=0.01))
    result = invoke(
        "watch", pid, "--webhook", "http://127.0.0.1:9/x/TOKENPATH", "--exec-timeout", "2"
    )
    # Port 9 refuses at once; the retry budget bounds the wait.
    assert result.exit_code == 0
    assert "webhook to 127.0.0.1 failed for" in result.stderr
    assert "TOKENPATH" not in result.stderr
    assert Ledger(ledger_path).get(pid)["status"] == "success"


def test_a_webhook_that_is_not_a_url_is_a_usage_error(invoke, emulator, tmp_path):
    (pid,) = submit_jobs(invoke, tmp_path, emulator.url, slow_graph(steps=2, seconds=0.01))
    result = invoke("watch", pid, "--webhook", "ftp://x")
    assert result.exit_code == 2
    assert "--webhook needs an http(s) URL" in result.stderr


def test_servers_json_shows_the_global_webhook_only_as_set(invoke, config_path):
    config_path.write_text(
        'webhook = "https://hooks.example.com/T0K3N"\nwebhook_secret = "global-secret"\n'
    )
    result = invoke("servers", "--json")
    assert json.loads(result.stdout)["webhook"] == "set"
    assert "T0K3N" not in result.stdout and "global-secret" not in result.stdout


def test_ctrl_c_does_not_wait_out_a_hanging_hook(invoke, emulator_factory, tmp_path):
    import signal
    import time

    a, b = emulator_factory(), emulator_factory()
    (quick,) = submit_jobs(invoke, tmp_path, a.url, slow_graph(steps=1, seconds=0.01))
    (slow,) = submit_jobs(invoke, tmp_path, b.url, slow_graph(steps=600, seconds=0.05))
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "comfyctl",
            "watch",
            quick,
            slow,
            "--exec",
            'touch "$HOOKS/started"; sleep 60',
            "--exec-timeout",
            "120",
            "--poll-interval",
            "0.3",
        ],
        cwd=REPO,
        env={**os.environ, "HOOKS": str(hooks)},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        end = time.monotonic() + 30
        while not (hooks / "started").exists() and time.monotonic() < end:
            time.sleep(0.1)
        assert (hooks / "started").exists()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)  # far less than the hook's 60 s
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert f"running: {slow}" in err
