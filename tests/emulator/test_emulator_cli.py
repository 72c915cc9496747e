"""``python -m comfyctl.emulator --fault ...``: fault modes from the command line, as a process."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import websocket
from emulator_helpers import get_json, post_prompt, wait_until, workflow

from comfyctl.emulator import Faults
from comfyctl.emulator.__main__ import apply_faults, fault_switches

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
}
EMULATOR = [sys.executable, "-m", "comfyctl.emulator"]


class Served(SimpleNamespace):
    url: str
    process: subprocess.Popen[str]

    def stderr_line(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.readline().strip()


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """``serve(*args)``: the emulator as a process on a free port, stopped at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> Served:
        process = subprocess.Popen(
            [*EMULATOR, "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("ComfyUI emulator listening on http://127.0.0.1:"), line
        return Served(url=line.rsplit(" ", 1)[1], process=process)

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


def test_fault_switches_change_what_the_server_does(serve: Callable[..., Served]) -> None:
    server = serve("--fault", "http-status=502", "--fault", "refuse-websocket")
    assert server.stderr_line().startswith("output directory: ")
    assert server.stderr_line() == "faults: http-status=502, refuse-websocket"
    answer = requests.get(server.url + "/queue", timeout=5)
    assert answer.status_code == 502
    assert answer.headers["Content-Type"].startswith("text/html")
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(server.url.replace("http", "ws") + "/ws?clientId=x", timeout=5)
    assert refused.value.status_code == 403


def test_a_short_word_names_a_fault_and_hang_hangs(serve: Callable[..., Served]) -> None:
    server = serve("--fault", "hang")
    server.stderr_line()
    assert server.stderr_line() == "faults: http-hang"
    with pytest.raises(requests.ReadTimeout):
        requests.get(server.url + "/queue", timeout=(5, 0.5))


def test_speed_overrides_run_a_job_from_the_command_line(serve: Callable[..., Served]) -> None:
    server = serve("--fault", "seconds-per-step=0.01", "--fault", "steps=2")
    sock = websocket.create_connection(
        server.url.replace("http", "ws") + "/ws?clientId=c1", timeout=10
    )
    try:
        prompt_id = post_prompt(SimpleNamespace(url=server.url), workflow("quick"), client_id="c1")[
            "prompt_id"
        ]
        progress = []
        while True:
            msg = json.loads(sock.recv())
            data = msg.get("data", {})
            if msg["type"] == "progress":
                progress.append((data["value"], data["max"]))
            if msg["type"] == "executing" and data.get("node") is None:
                break
    finally:
        sock.close()
    assert data["prompt_id"] == prompt_id
    assert progress == [(1, 2), (2, 2)]  # the workflow asks for 10 steps


def test_sighup_restarts_and_sigusr1_drops_websockets(serve: Callable[..., Served]) -> None:
    server = serve("--fault", "seconds-per-step=0.01")
    server.stderr_line()
    server.stderr_line()
    emu = SimpleNamespace(url=server.url)
    prompt_id = post_prompt(emu, workflow("quick"))["prompt_id"]
    wait_until(lambda: prompt_id in get_json(emu, "/history"), what="the job to finish")

    sock = websocket.create_connection(
        server.url.replace("http", "ws") + "/ws?clientId=c1", timeout=5
    )
    sock.recv()  # the status greeting
    server.process.send_signal(signal.SIGUSR1)
    assert server.stderr_line() == "dropped every WebSocket"
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        while True:
            if not sock.recv():
                raise websocket.WebSocketConnectionClosedException("closed")

    server.process.send_signal(signal.SIGHUP)
    assert server.stderr_line().startswith("restarted: ")
    assert get_json(emu, "/history") == {}
    assert post_prompt(emu, workflow("quick"))["number"] == 0


@pytest.mark.parametrize(
    ("switch", "message"),
    [
        ("hnag", "unknown fault 'hnag'; did you mean"),
        ("output", "did you mean output-filename or output-subfolder?"),
        ("http-status", "needs a value: --fault http-status=INT"),
        ("http-status=bad", "'bad' is not a valid value"),
        ("http-hang=maybe", "takes no value, or one of on/off"),
        ("foreign-history=[1]", "expected a JSON object"),
    ],
)
def test_a_bad_switch_is_a_usage_error(switch: str, message: str) -> None:
    result = subprocess.run(
        [*EMULATOR, "--port", "0", "--fault", switch],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_help_lists_every_fault_mode_the_emulator_has() -> None:
    result = subprocess.run(
        [*EMULATOR, "--help"], capture_output=True, text=True, env=ENV, timeout=30
    )
    assert result.returncode == 0
    for spec in dataclasses.fields(Faults):
        assert f"\n  {spec.name.replace('_', '-')}" in result.stdout, spec.name
    assert "Every HTTP request (not the WebSocket upgrade) hangs" in result.stdout


def test_every_kind_of_value_parses_into_the_fault_field() -> None:
    faults = Faults()
    applied = apply_faults(
        faults,
        [
            "http_hang=off",
            "malformed-json",
            "http-status=500",
            "stall-at-percent=52.25",
            "error-at-node=7",
            'foreign-history={"p": {}}',
            "reply-routes=POST /prompt, GET /queue",
        ],
    )
    assert applied[1] == "malformed-json" and applied[2] == "http-status=500"
    expected: dict[str, Any] = {
        "http_hang": False,
        "malformed_json": True,
        "http_status": 500,
        "stall_at_percent": 52.25,
        "error_at_node": "7",
        "foreign_history": {"p": {}},
        "reply_routes": ("POST /prompt", "GET /queue"),
    }
    assert {name: getattr(faults, name) for name in expected} == expected
    apply_faults(faults, ['reply-routes=["POST /prompt"]'])
    assert faults.reply_routes == ("POST /prompt",)


def test_every_fault_field_has_a_switch_with_help() -> None:
    switches = fault_switches()
    assert sorted(s.field for s in switches.values()) == sorted(
        f.name for f in dataclasses.fields(Faults)
    )
    assert all(s.help for s in switches.values()), [s.name for s in switches.values() if not s.help]


def test_the_pytest_plugin_imports_without_pytest() -> None:
    probe = (
        "import sys; sys.modules['pytest'] = None; "
        "import comfyctl.emulator.pytest_plugin as plugin; "
        "assert '_pytest' not in sys.modules; print(plugin.EmulatorFactory)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "Emulator" in result.stdout
