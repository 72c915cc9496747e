"""``jobs_api=True``: the newest ComfyUI's /api/jobs routes and related behaviour."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import requests
from emulator_helpers import HTTP_TIMEOUT, WSRecorder, get_json, post_prompt, workflow

from comfyctl.emulator import Emulator

WSFactory = Callable[..., WSRecorder]
JOB_LIST_KEYS = {
    "id",
    "status",
    "priority",
    "create_time",
    "outputs_count",
    "previewable_outputs_count",
}


@pytest.fixture
def jobs_emulator(emulator_factory: Callable[..., Emulator]) -> Emulator:
    emu = emulator_factory(jobs_api=True)
    emu.faults.seconds_per_step = 0.01
    return emu


def _seeded(name: str = "quick", **inputs: Any) -> dict[str, Any]:
    return workflow(name, **{"2": {"seed": uuid.uuid4().int % 10**9, **inputs}})


def _job(emu: Emulator, job_id: str) -> dict[str, Any]:
    return get_json(emu, f"/api/jobs/{job_id}")


def test_without_flag_the_routes_do_not_exist(emulator: Emulator) -> None:
    for method, path in [
        ("GET", "/api/jobs"),
        ("GET", "/jobs"),
        ("GET", f"/api/jobs/{uuid.uuid4()}"),
        ("POST", f"/api/jobs/{uuid.uuid4()}/cancel"),
        ("POST", "/api/jobs/cancel"),
    ]:
        response = requests.request(method, emulator.url + path, timeout=HTTP_TIMEOUT)
        assert response.status_code == 404 and response.content == b""


def test_job_status_transitions(jobs_emulator: Emulator, ws_factory: WSFactory) -> None:
    emu = jobs_emulator
    socket = ws_factory(emu, "client-J")
    assert get_json(emu, "/api/jobs") == {
        "jobs": [],
        "pagination": {"offset": 0, "limit": None, "total": 0, "has_more": False},
    }
    stalled = post_prompt(emu, _seeded("stall"), client_id="client-J")["prompt_id"]
    waiting = post_prompt(emu, _seeded(), client_id="client-J")["prompt_id"]
    failing = post_prompt(emu, workflow("fail_midway"), client_id="client-J")["prompt_id"]
    socket.wait_progress(stalled, 2)

    running = _job(emu, stalled)
    assert running["status"] == "in_progress"
    assert set(running) == JOB_LIST_KEYS | {"workflow"}
    assert running["workflow"]["extra_data"]["client_id"] == "client-J"
    assert isinstance(running["create_time"], int)
    pending = _job(emu, waiting)
    assert pending["status"] == "pending" and pending["priority"] == 1
    queue = get_json(emu, "/queue")
    assert "create_time" in queue["queue_running"][0][3]  # the newest server adds it

    listed = get_json(emu, "/api/jobs", status="pending,in_progress")
    assert {j["id"]: j["status"] for j in listed["jobs"]} == {
        stalled: "in_progress",
        waiting: "pending",
        failing: "pending",
    }
    assert all(set(j) == JOB_LIST_KEYS for j in listed["jobs"])

    cancel = requests.post(emu.url + f"/api/jobs/{stalled}/cancel", timeout=HTTP_TIMEOUT)
    assert cancel.json() == {"cancelled": True}
    socket.wait_done(stalled)
    socket.wait_done(waiting)
    socket.wait_done(failing)
    emu.wait_idle()

    cancelled = _job(emu, stalled)
    assert cancelled["status"] == "cancelled"
    assert {
        "execution_start_time",
        "execution_end_time",
        "outputs",
        "execution_status",
        "workflow",
    } <= set(cancelled)
    assert cancelled["outputs_count"] == 0 and "preview_output" not in cancelled

    completed = _job(emu, waiting)
    assert completed["status"] == "completed"
    assert completed["outputs_count"] == 1 and completed["previewable_outputs_count"] == 1
    preview = completed["preview_output"]
    assert preview["nodeId"] == "3" and preview["mediaType"] == "images"
    assert preview["type"] == "output" and preview["filename"].startswith("comfyctl_quick_")
    assert completed["execution_end_time"] >= completed["execution_start_time"]

    failed = _job(emu, failing)
    assert failed["status"] == "failed"
    assert failed["execution_error"]["exception_type"] == "RuntimeError"

    # Cancelling a finished job is a no-op; an unknown job is 404 on lookup.
    again = requests.post(emu.url + f"/api/jobs/{waiting}/cancel", timeout=HTTP_TIMEOUT)
    assert again.json() == {"cancelled": False}
    missing = requests.get(emu.url + f"/api/jobs/{uuid.uuid4()}", timeout=HTTP_TIMEOUT)
    assert missing.status_code == 404 and missing.json() == {"error": "Job not found"}


def test_cancel_pending_and_batch(jobs_emulator: Emulator, ws_factory: WSFactory) -> None:
    emu = jobs_emulator
    socket = ws_factory(emu, "client-K")
    stalled = post_prompt(emu, _seeded("stall"), client_id="client-K")["prompt_id"]
    waiting = post_prompt(emu, _seeded(), client_id="client-K")["prompt_id"]
    socket.wait_progress(stalled, 1)
    single = requests.post(emu.url + f"/api/jobs/{waiting}/cancel", timeout=HTTP_TIMEOUT)
    assert single.json() == {"cancelled": True}
    # A dequeued job is simply gone: it never reaches history.
    assert requests.get(emu.url + f"/api/jobs/{waiting}", timeout=10).status_code == 404

    bad = requests.post(emu.url + "/api/jobs/cancel", json={"job_ids": ["nope", 3]}, timeout=10)
    assert bad.status_code == 400
    assert bad.json() == {"error": "job_ids contains invalid id(s)", "invalid_ids": ["nope", "3"]}
    not_list = requests.post(emu.url + "/api/jobs/cancel", json={"job_ids": "x"}, timeout=10)
    assert not_list.json() == {"error": "job_ids must be a list"}
    not_json = requests.post(emu.url + "/api/jobs/cancel", data="{", timeout=10)
    assert not_json.status_code == 400
    batch = requests.post(
        emu.url + "/api/jobs/cancel", json={"job_ids": [stalled, str(uuid.uuid4())]}, timeout=10
    )
    assert batch.json() == {"cancelled": True}
    socket.wait_done(stalled)
    assert _job(emu, stalled)["status"] == "cancelled"
    nothing = requests.post(emu.url + "/api/jobs/cancel", json={"job_ids": [stalled]}, timeout=10)
    assert nothing.json() == {"cancelled": False}


def test_listing_sorting_pagination_and_filters(jobs_emulator: Emulator) -> None:
    emu = jobs_emulator
    ids = []
    for index in range(3):
        pnginfo = {"workflow": {"id": "wf-odd" if index % 2 else "wf-even"}}
        ids.append(post_prompt(emu, _seeded(), extra_data={"extra_pnginfo": pnginfo})["prompt_id"])
        emu.wait_idle()
    page = get_json(emu, "/api/jobs")
    assert [j["id"] for j in page["jobs"]] == ids[::-1]  # newest first by default
    assert page["jobs"][0]["workflow_id"] == "wf-even"
    ascending = get_json(emu, "/api/jobs", sort_order="asc", limit=2)
    assert [j["id"] for j in ascending["jobs"]] == ids[:2]
    assert ascending["pagination"] == {"offset": 0, "limit": 2, "total": 3, "has_more": True}
    last = get_json(emu, "/api/jobs", sort_order="asc", limit=2, offset=2)
    assert [j["id"] for j in last["jobs"]] == ids[2:]
    assert last["pagination"]["has_more"] is False
    odd = get_json(emu, "/api/jobs", workflow_id="wf-odd")
    assert [j["id"] for j in odd["jobs"]] == [ids[1]]
    durations = get_json(emu, "/api/jobs", sort_by="execution_duration")
    assert sorted(j["id"] for j in durations["jobs"]) == sorted(ids)
    assert get_json(emu, "/api/jobs", status="failed")["jobs"] == []
    assert get_json(emu, "/api/api/jobs")["pagination"]["total"] == 3  # ComfyUI's /api doubling

    for params, message in [
        (
            {"status": "done"},
            "Invalid status value(s): done. Valid values: pending, "
            "in_progress, completed, failed, cancelled",
        ),
        ({"sort_by": "name"}, "sort_by must be 'created_at' or 'execution_duration'"),
        ({"sort_order": "up"}, "sort_order must be 'asc' or 'desc'"),
        ({"limit": "0"}, "limit must be a positive integer"),
        ({"limit": "x"}, "limit must be an integer"),
        ({"offset": "x"}, "offset must be an integer"),
    ]:
        response = requests.get(emu.url + "/api/jobs", params=params, timeout=HTTP_TIMEOUT)
        assert response.status_code == 400 and response.json() == {"error": message}
    assert get_json(emu, "/api/jobs", offset="-5")["pagination"]["offset"] == 0


def test_newest_prompt_rules(jobs_emulator: Emulator) -> None:
    emu = jobs_emulator
    rejected = requests.post(
        emu.url + "/prompt",
        json={"prompt": _seeded(), "prompt_id": "not-a-uuid-123"},
        timeout=HTTP_TIMEOUT,
    )
    assert rejected.status_code == 400
    assert rejected.json()["error"]["type"] == "invalid_prompt_id"
    assert rejected.json()["node_errors"] == {}
    chosen = str(uuid.uuid4())
    assert post_prompt(emu, _seeded(), prompt_id=chosen)["prompt_id"] == chosen
    unknown = requests.post(
        emu.url + "/prompt", json={"prompt": workflow("unknown_node")}, timeout=HTTP_TIMEOUT
    )
    assert unknown.status_code == 400
    assert unknown.json()["error"] == {
        "type": "missing_node_type",
        "message": "Node 'SlowProgress' not found. The custom node may not be installed.",
        "details": "Node ID '#2'",
        "extra_info": {
            "node_id": "2",
            "class_type": "NoSuchNodeClass",
            "node_title": "SlowProgress",
        },
    }
    emu.wait_idle()
