"""The scripts in examples/ run as documented against emulated ComfyUI servers."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
from workflows import slow_graph

from comfyctl.ledger import Ledger

graph = partial(slow_graph, steps=3, seconds=0.02)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


@pytest.fixture
def run_example(tmp_path: Path):
    """Run an example script with ``comfyctl`` on PATH (this checkout, this Python)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "comfyctl"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m comfyctl "$@"\n')
    shim.chmod(0o755)

    def run(
        script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        full_env = {
            **os.environ,
            "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(REPO),
            **(env or {}),
        }
        return subprocess.run(
            ["bash", str(EXAMPLES / script), *args],
            env=full_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def write_workflow(tmp_path: Path, g: dict, name: str = "wf.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(g))
    return str(path)


def test_scripts_are_strict_and_executable() -> None:
    for script in ("cron-recover.sh", "batch.sh"):
        path = EXAMPLES / script
        assert os.access(path, os.X_OK), f"{script} is not executable"
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


# -- batch.sh ------------------------------------------------------------------------------


def test_batch_over_two_servers_prints_each_jobs_outputs(
    run_example, emulator_factory, tmp_path: Path, ledger_path: Path
):
    a, b = emulator_factory(), emulator_factory()
    proc = run_example(
        "batch.sh",
        write_workflow(tmp_path, graph()),
        a.url,
        b.url,
        env={"COUNT": "4", "BATCH": "nightly-1", "TIMEOUT": "60"},
    )
    assert proc.returncode == 0, proc.stderr
    urls = proc.stdout.split()
    assert len(urls) == 4
    assert {url.split("/view?")[0] for url in urls} == {a.url, b.url}  # both servers used
    batch = [
        r for r in Ledger(ledger_path).load().values() if r["labels"] == {"batch": "nightly-1"}
    ]
    assert len(batch) == 4 and all(r["status"] == "success" for r in batch)
    for record in batch:  # every URL points at the server that ran its job
        assert all(o["url"].startswith(record["server_url"] + "/view?") for o in record["outputs"])
    assert "success" in proc.stderr  # watch's state lines went to stderr


def test_batch_with_a_failing_job_exits_1(run_example, emulator, tmp_path: Path):
    proc = run_example(
        "batch.sh",
        write_workflow(tmp_path, graph(fail_at=2)),
        emulator.url,
        env={"COUNT": "2", "BATCH": "broken", "TIMEOUT": "60"},
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""  # no outputs, but the history step still ran
    assert "did not succeed" in proc.stderr


def test_batch_usage(run_example):
    proc = run_example("batch.sh", "wf.json")
    assert proc.returncode == 2 and "usage:" in proc.stderr


# -- cron-recover.sh -----------------------------------------------------------------------


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def notes(lines: list[str]) -> list[str]:
    """The script's own timestamped lines, without the timestamps."""
    return [
        line.split(" ", 1)[1]
        for line in lines
        if re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", line)
    ]


def test_cron_recovers_finished_unnoticed_and_lost_jobs(
    run_example, emulator_factory, invoke, tmp_path: Path, ledger_path: Path
):
    a, b = emulator_factory(), emulator_factory()
    log = tmp_path / "logs" / "recover.log"
    env = {"RECOVER_LOG": str(log)}

    quiet = run_example("cron-recover.sh", env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert notes(log_lines(log)) == ["ok: nothing stuck"]

    # A job that finished while nobody watched, and one its server lost in a restart.
    done = invoke("submit", write_workflow(tmp_path, graph()), "-s", a.url).stdout.strip()
    lost = invoke(
        "submit", write_workflow(tmp_path, graph(steps=100, seconds=0.05), "long.json"), "-s", b.url
    ).stdout.strip()
    a.wait_idle(timeout=20)
    time.sleep(0.2)
    b.restart()

    proc = run_example("cron-recover.sh", "--stall-after", "600", env=env)
    assert proc.returncode == 0, log.read_text()
    lines = log_lines(log)
    assert notes(lines) == ["ok: nothing stuck", "problems found; recovering", "recovered"]
    logged = [json.loads(line) for line in lines if line.startswith("{")]
    actions = {action["prompt_id"]: action for action in logged}
    assert actions[done]["action"] == "record-success" and actions[done]["resolved"]
    assert actions[lost]["action"] == "resubmit" and actions[lost]["resolved"]
    assert {action["schema"] for action in logged} == {"comfyctl.recovery-action"}
    ledger = Ledger(ledger_path).load()
    assert ledger[done]["status"] == "success"
    child = ledger[ledger[lost]["superseded_by"]]
    assert ledger[lost]["status"] == "lost" and child["server_url"] == b.url

    again = run_example("cron-recover.sh", "--stall-after", "600", env=env)
    assert again.returncode == 0, log.read_text()
    assert notes(log_lines(log))[-1] == "ok: nothing stuck"


def test_cron_exits_3_when_every_server_is_down(
    run_example, emulator_factory, invoke, tmp_path: Path
):
    down = emulator_factory()
    invoke("submit", write_workflow(tmp_path, graph(steps=100, seconds=0.05)), "-s", down.url)
    down.stop()
    log = tmp_path / "recover.log"
    proc = run_example("cron-recover.sh", "--server-timeout", "2", env={"RECOVER_LOG": str(log)})
    assert proc.returncode == 3
    assert notes(log_lines(log)) == [
        "every server with unfinished jobs is unreachable; retrying next run"
    ]
    assert proc.stdout == ""


# -- the examples in --help ------------------------------------------------------------------


def help_example(command: str, needle: str) -> str:
    """The one example line of ``comfyctl COMMAND --help`` that contains ``needle``."""
    from comfyctl import docgen
    from comfyctl.cli import cli

    [doc] = [d for d in docgen.command_docs(cli) if d.path == f"comfyctl {command}"]
    [line] = [line for line in doc.examples if needle in line]
    return line


@pytest.fixture
def shell(run_example, tmp_path: Path):
    """Run one command line through bash, with ``comfyctl`` on PATH, in tmp_path."""

    def run(line: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        script = tmp_path / "line.sh"
        script.write_text(line + "\n")
        return subprocess.run(
            ["bash", str(script)],
            env={
                **os.environ,
                "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
                "PYTHONPATH": str(REPO),
            },
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    run_example("batch.sh")  # writes the comfyctl shim into tmp_path/bin
    return run


needs_jq = pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")


@needs_jq
def test_detect_stuck_help_example_prints_the_ids_it_found(shell, emulator, invoke, tmp_path):
    long = write_workflow(tmp_path, slow_graph(steps=400, seconds=0.05))
    ids = invoke("submit", long, "-s", emulator.url, "--count", "2", "--vary-seed").stdout.split()
    emulator.restart()  # both lost
    proc = shell(help_example("detect-stuck", "| jq"))
    assert sorted(proc.stdout.split()) == sorted(ids), proc.stdout + proc.stderr


@needs_jq
def test_watch_help_example_prints_no_null_for_server_events(
    shell, emulator_factory, invoke, tmp_path
):
    a, b = emulator_factory(), emulator_factory()
    wf = write_workflow(tmp_path, graph())
    (done,) = invoke("submit", wf, "-s", a.url).stdout.split()
    invoke("submit", wf, "-s", b.url)
    b.stop()  # watch says so in a "server" event
    line = help_example("watch", "| jq")
    assert "--timeout 600" in line
    proc = shell(line.replace("--timeout 600", "--timeout 3"))
    assert "success" in proc.stdout.split() or done in proc.stdout, proc.stdout + proc.stderr
    assert "null" not in proc.stdout.split(), proc.stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_history_help_example_saves_each_output_under_its_name(shell, emulator, invoke, tmp_path):
    (pid,) = invoke("submit", write_workflow(tmp_path, graph()), "-s", emulator.url).stdout.split()
    assert invoke("watch", pid).exit_code == 0
    [output] = Ledger(tmp_path / "ledger.json").get(pid)["outputs"]
    proc = shell(help_example("history", "curl").replace("3f2c9a1e-...", pid))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / output["filename"]).is_file(), sorted(p.name for p in tmp_path.iterdir())


def test_the_example_workflow_runs_on_the_bundled_emulator(emulator, invoke):
    """README's quick start points at examples/wf.json for its 'wf.json'."""
    result = invoke(
        "submit", str(EXAMPLES / "wf.json"), "-s", emulator.url, "--vary-seed", "--wait", "--nl"
    )
    assert result.exit_code == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    [end] = [e for e in events if e.get("event") == "state" and e["status"] == "success"]
    assert len(end["outputs"]) == 1
    assert "examples/wf.json" in (REPO / "README.md").read_text()
