"""Every fault switch: the emulator produces the fault, and recovers once it is cleared."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket
from emulator_helpers import (
    HTTP_TIMEOUT,
    WSRecorder,
    get_json,
    post_prompt,
    warm_cache,
    workflow,
)

from comfyctl.emulator import Emulator

pytestmark = pytest.mark.faults
WSFactory = Callable[..., WSRecorder]


def _seeded(name: str = "quick", **inputs: Any) -> dict[str, Any]:
    return workflow(name, **{"2": {"seed": uuid.uuid4().int % 10**9, **inputs}})


def _run(emu: Emulator, **inputs: Any) -> str:
    prompt_id = post_prompt(emu, _seeded(**inputs), client_id="fault-test")["prompt_id"]
    emu.wait_idle()
    return prompt_id


def test_http_hang_then_recovery(fast_emulator: Emulator, ws_factory: WSFactory) -> None:
    emu = fast_emulator
    emu.faults.http_hang = True
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(emu.url + "/queue", timeout=0.3)
    socket = ws_factory(emu, "hang")  # the WebSocket upgrade is not affected
    assert socket.texts()[0]["type"] == "status"

    answers: list[int] = []
    waiting = threading.Thread(
        target=lambda: answers.append(requests.get(emu.url + "/prompt", timeout=10).status_code)
    )
    waiting.start()
    time.sleep(0.2)
    assert answers == []
    emu.faults.http_hang = False
    waiting.join(5)
    assert answers == [200]
    assert get_json(emu, "/queue") == {"queue_running": [], "queue_pending": []}


def test_stop_releases_a_hanging_request(emulator_factory: Callable[..., Emulator]) -> None:
    emu = emulator_factory()
    emu.faults.http_hang = True
    errors: list[BaseException] = []

    def call() -> None:
        try:
            requests.get(emu.url + "/queue", timeout=10)
        except requests.RequestException as err:
            errors.append(err)

    waiting = threading.Thread(target=call)
    waiting.start()
    time.sleep(0.1)
    started = time.monotonic()
    emu.stop()
    waiting.join(5)
    assert time.monotonic() - started < 3
    assert len(errors) == 1
    emu.stop()  # idempotent


@pytest.mark.parametrize("status", [500, 502])
def test_http_status_like_a_proxy_then_recovery(fast_emulator: Emulator, status: int) -> None:
    emu = fast_emulator
    emu.faults.http_status = status
    response = requests.get(emu.url + "/queue", timeout=HTTP_TIMEOUT)
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("text/html")
    assert f"<h1>{status} " in response.text
    rejected = requests.post(emu.url + "/prompt", json={"prompt": _seeded()}, timeout=10)
    assert rejected.status_code == status
    emu.faults.http_status = None
    assert get_json(emu, "/queue") == {"queue_running": [], "queue_pending": []}
    assert get_json(emu, "/history") == {}  # the rejected POST never reached the queue


def test_malformed_json_then_recovery(fast_emulator: Emulator) -> None:
    emu = fast_emulator
    prompt_id = _run(emu)
    emu.faults.malformed_json = True
    for path in ("/queue", f"/history/{prompt_id}", "/system_stats", "/api/object_info"):
        response = requests.get(emu.url + path, timeout=HTTP_TIMEOUT)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("application/json")
        with pytest.raises(ValueError):
            response.json()
    # Routes without a JSON body are unchanged.
    assert requests.post(emu.url + "/interrupt", timeout=10).content == b""
    emu.faults.malformed_json = False
    assert prompt_id in get_json(emu, f"/history/{prompt_id}")


def test_refused_websocket_then_recovery(fast_emulator: Emulator, ws_factory: WSFactory) -> None:
    emu = fast_emulator
    emu.faults.refuse_websocket = True
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(emu.ws_url + "?clientId=x", timeout=5)
    assert refused.value.status_code == 403
    assert get_json(emu, "/prompt") == {"exec_info": {"queue_remaining": 0}}
    emu.faults.refuse_websocket = False
    assert ws_factory(emu, "x").texts()[0]["data"]["sid"] == "x"


def test_dropped_websocket_mid_run(emulator: Emulator, ws_factory: WSFactory) -> None:
    emu = emulator
    emu.faults.seconds_per_step = 0.02
    socket = ws_factory(emu, "client-D")
    bystander = ws_factory(emu, "client-E")
    prompt_id = post_prompt(emu, _seeded(steps=20), client_id="client-D")["prompt_id"]
    socket.wait_progress(prompt_id, 3)
    emu.drop_websockets()
    assert socket.closed.wait(5) and bystander.closed.wait(5)
    # The job keeps running without any socket.
    running = get_json(emu, "/queue")["queue_running"]
    assert [item[1] for item in running] == [prompt_id]
    again = ws_factory(emu, "client-D")
    again.wait_for(lambda m: m["type"] == "executing")
    assert again.texts()[0]["data"]["sid"] == "client-D"
    assert again.texts()[1] == {"type": "executing", "data": {"node": "2"}}
    again.wait_done(prompt_id)
    history = get_json(emu, f"/history/{prompt_id}")[prompt_id]
    assert history["status"]["status_str"] == "success"


def test_stall_at_percent_then_interrupt_and_recovery(
    fast_emulator: Emulator, ws_factory: WSFactory
) -> None:
    emu = fast_emulator
    emu.faults.seconds_per_step = 0.0005
    emu.faults.stall_at_percent = 52.25
    socket = ws_factory(emu, "client-S")
    prompt_id = post_prompt(emu, _seeded(steps=400), client_id="client-S")["prompt_id"]
    socket.wait_progress(prompt_id, 209)
    time.sleep(0.3)

    def last_progress() -> dict[str, Any]:
        return [m for m in socket.texts() if m["type"] == "progress"][-1]["data"]

    assert (last_progress()["value"], last_progress()["max"]) == (209, 400)
    assert [item[1] for item in get_json(emu, "/queue")["queue_running"]] == [prompt_id]
    state = [m for m in socket.texts() if m["type"] == "progress_state"][-1]["data"]
    assert state["nodes"]["2"]["value"] == 209 and state["nodes"]["2"]["state"] == "running"

    requests.post(emu.url + "/interrupt", json={"prompt_id": prompt_id}, timeout=10)
    socket.wait_done(prompt_id)
    assert last_progress()["value"] == 209
    interrupted = socket.wait_for(lambda m: m["type"] == "execution_interrupted")
    assert interrupted["data"]["node_id"] == "2"

    # A job stalled by the fault resumes when the fault is cleared.
    second = post_prompt(emu, _seeded(steps=400), client_id="client-S")["prompt_id"]
    socket.wait_progress(second, 209)
    emu.faults.stall_at_percent = None
    socket.wait_done(second)
    assert get_json(emu, f"/history/{second}")[second]["status"]["status_str"] == "success"


def test_error_at_node_then_recovery(fast_emulator: Emulator, ws_factory: WSFactory) -> None:
    emu = fast_emulator
    warm_cache(emu)
    socket = ws_factory(emu, "client-X")
    emu.faults.error_at_node = "2"
    failed = post_prompt(emu, _seeded(), client_id="client-X")["prompt_id"]
    socket.wait_done(failed)
    error = socket.wait_for(lambda m: m["type"] == "execution_error")["data"]
    assert (error["node_id"], error["node_type"]) == ("2", "SlowProgress")
    assert error["exception_type"] == "RuntimeError"
    assert error["exception_message"].endswith("\n")
    assert error["executed"] == []
    assert set(error["current_inputs"]) == {"image", "steps", "seconds_per_step", "seed"}
    assert isinstance(error["traceback"], list) and error["traceback"]
    entry = get_json(emu, f"/history/{failed}")[failed]
    assert entry["status"]["status_str"] == "error" and entry["outputs"] == {}

    emu.faults.error_at_node = "3"
    failed_save = post_prompt(emu, _seeded(), client_id="client-X")["prompt_id"]
    socket.wait_done(failed_save)
    error = [m for m in socket.texts() if m["type"] == "execution_error"][-1]["data"]
    assert (error["node_id"], error["node_type"], error["executed"]) == ("3", "SaveImage", ["2"])

    emu.faults.error_at_node = None
    ok = post_prompt(emu, _seeded(), client_id="client-X")["prompt_id"]
    socket.wait_done(ok)
    assert get_json(emu, f"/history/{ok}")[ok]["status"]["status_str"] == "success"


def test_restart_forgets_everything_but_files(
    fast_emulator: Emulator, ws_factory: WSFactory
) -> None:
    emu = fast_emulator
    done = _run(emu)
    filename = get_json(emu, f"/history/{done}")[done]["outputs"]["3"]["images"][0]["filename"]
    socket = ws_factory(emu, "client-R")
    stalled = post_prompt(emu, _seeded("stall"), client_id="client-R")["prompt_id"]
    post_prompt(emu, _seeded())
    socket.wait_progress(stalled, 2)
    port = emu.port

    emu.restart()
    assert emu.port == port
    assert socket.closed.wait(5)
    assert get_json(emu, "/queue") == {"queue_running": [], "queue_pending": []}
    assert get_json(emu, "/history") == {}
    assert get_json(emu, "/prompt") == {"exec_info": {"queue_remaining": 0}}
    view = requests.get(
        emu.url + "/view", params={"filename": filename, "type": "output"}, timeout=10
    )
    assert view.status_code == 200 and view.content.startswith(b"\x89PNG")

    fresh = ws_factory(emu, "client-R")
    reply = post_prompt(emu, _seeded(), client_id="client-R")
    assert reply["number"] == 0
    fresh.wait_done(reply["prompt_id"])
    cached = fresh.wait_for(lambda m: m["type"] == "execution_cached")
    assert cached["data"]["nodes"] == []
    new_name = get_json(emu, f"/history/{reply['prompt_id']}")[reply["prompt_id"]]["outputs"]
    assert new_name["3"]["images"][0]["filename"] != filename  # counter continues on disk
    assert get_json(emu, f"/history/{stalled}") == {}


@pytest.mark.parametrize("hostile", ["../../evil.png", "/etc/x.png", "a\\b.png"])
def test_hostile_output_names_then_recovery(
    fast_emulator: Emulator, ws_factory: WSFactory, hostile: str
) -> None:
    emu = fast_emulator
    socket = ws_factory(emu, "client-H")
    emu.faults.output_filename = hostile
    emu.faults.output_subfolder = "../../outside"
    prompt_id = post_prompt(emu, _seeded(), client_id="client-H")["prompt_id"]
    socket.wait_done(prompt_id)
    executed = socket.wait_for(lambda m: m["type"] == "executed")["data"]["output"]
    reported = {"filename": hostile, "subfolder": "../../outside", "type": "output"}
    assert executed == {"images": [reported]}
    history = get_json(emu, f"/history/{prompt_id}")[prompt_id]
    assert history["outputs"]["3"]["images"] == [reported]
    # Nothing was written outside the output folder.
    written = [p.name for p in Path(emu.output_dir).iterdir()]
    assert len(written) == 1 and written[0].startswith("comfyctl_quick_")
    assert not (Path(emu.output_dir).parent / "outside").exists()
    view = requests.get(emu.url + "/view", params=reported, timeout=10)
    assert view.status_code in (400, 403, 404)

    emu.faults.output_filename = None
    emu.faults.output_subfolder = None
    clean = _run(emu)
    image = get_json(emu, f"/history/{clean}")[clean]["outputs"]["3"]["images"][0]
    assert image["subfolder"] == "" and image["filename"].startswith("comfyctl_quick_")
    view = requests.get(emu.url + "/view", params=image, timeout=10)
    assert view.status_code == 200


def test_faults_clear_and_speed_overrides(fast_emulator: Emulator) -> None:
    emu = fast_emulator
    emu.faults.steps = 3
    prompt_id = _run(emu)
    messages = get_json(emu, f"/history/{prompt_id}")[prompt_id]["status"]["messages"]
    assert messages[-1][0] == "execution_success"
    emu.faults.http_status = 502
    emu.faults.clear()
    assert emu.faults.http_status is None and emu.faults.seconds_per_step is None
    assert requests.get(emu.url + "/queue", timeout=10).status_code == 200


def test_console_log_like_app_logger(fast_emulator: Emulator) -> None:
    """/internal/logs/raw: start-up lines first, "got prompt" per POST /prompt, "Prompt
    executed" per run, at most 300 entries; a restart starts a new buffer with new
    start-up lines; no /api twin (ComfyUI mounts /internal as a sub-app)."""
    emu = fast_emulator
    first = get_json(emu, "/internal/logs/raw")
    assert first["size"] == {"cols": 80, "rows": 24}
    messages = [e["m"] for e in first["entries"]]
    assert "Starting server\n\n" in messages and "ComfyUI version: 0.3.64\n" in messages
    assert messages[-1] == f"To see the GUI go to: http://127.0.0.1:{emu.port}\n"
    booted = next(e["t"] for e in first["entries"] if e["m"].startswith("Starting server"))
    _run(emu)
    after = [e["m"] for e in get_json(emu, "/internal/logs/raw")["entries"]]
    assert after[-2] == "got prompt\n" and after[-1].startswith("Prompt executed in ")
    assert requests.get(emu.url + "/api/internal/logs/raw", timeout=HTTP_TIMEOUT).status_code == 404
    for _ in range(300):
        requests.post(emu.url + "/prompt", json={}, timeout=HTTP_TIMEOUT)  # 400, still logged
    full = get_json(emu, "/internal/logs/raw")["entries"]
    assert len(full) == 300 and not any(e["m"].startswith("Starting server") for e in full)
    emu.restart()
    fresh = get_json(emu, "/internal/logs/raw")["entries"]
    rebooted = next(e["t"] for e in fresh if e["m"].startswith("Starting server"))
    assert rebooted > booted and len(fresh) == 10
    assert "got prompt" not in get_json(emu, "/internal/logs")
