"""``python -m comfyctl.emulator`` as a real process, and emulators side by side."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests
from emulator_helpers import get_json, post_prompt, workflow

from comfyctl.emulator import Emulator

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_module_serves_and_exits_cleanly_on_sigint(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "comfyctl.emulator",
            "--port",
            str(port),
            "--output-dir",
            str(tmp_path / "out"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip() == f"ComfyUI emulator listening on http://127.0.0.1:{port}"
        response = requests.get(f"http://127.0.0.1:{port}/queue", timeout=5)
        assert response.json() == {"queue_running": [], "queue_pending": []}
        jobs = requests.get(f"http://127.0.0.1:{port}/api/jobs", timeout=5)
        assert jobs.status_code == 404
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert "Traceback" not in stderr and "Traceback" not in stdout
    assert (tmp_path / "out").is_dir()  # a given output folder is kept


def test_module_jobs_api_flag_and_busy_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        result = subprocess.run(
            [sys.executable, "-m", "comfyctl.emulator", "--port", str(port), "--jobs-api"],
            capture_output=True,
            text=True,
            env=env,
            timeout=20,
        )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr and "Traceback" not in result.stderr


def test_two_emulators_are_independent(emulator_factory: Callable[..., Emulator]) -> None:
    one, two = emulator_factory(), emulator_factory(jobs_api=True)
    assert one.port != two.port and one.output_dir != two.output_dir
    one.faults.seconds_per_step = 0.01
    two.faults.http_status = 502
    submitted = post_prompt(one, workflow("quick"))
    one.wait_idle()
    assert requests.get(two.url + "/queue", timeout=5).status_code == 502
    two.faults.http_status = None
    assert get_json(two, "/history") == {}
    assert list(get_json(one, "/history")) == [submitted["prompt_id"]]
    assert get_json(two, "/api/jobs")["jobs"] == []
    assert requests.get(one.url + "/api/jobs", timeout=5).status_code == 404
    two.faults.seconds_per_step = 0.01
    assert post_prompt(two, workflow("quick"))["number"] == 0
    two.wait_idle()
    assert len(list(Path(one.output_dir).iterdir())) == 1
    assert len(list(Path(two.output_dir).iterdir())) == 1


def test_context_manager_and_stop_cleanup() -> None:
    with Emulator() as emu:
        url = emu.url
        own_dir = Path(emu.output_dir)
        assert requests.get(url + "/prompt", timeout=5).status_code == 200
    assert not own_dir.exists()  # the private temp folder is removed
    started = time.monotonic()
    try:
        requests.get(url + "/prompt", timeout=2)
        raise AssertionError("the emulator still answers after stop()")
    except requests.ConnectionError:
        pass
    assert time.monotonic() - started < 2
