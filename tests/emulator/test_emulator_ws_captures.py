"""Replay the WebSocket captures: message order per socket (progress runs folded), who
gets what, and the shape of every kind of message."""

from __future__ import annotations

import json
import re
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import requests
from emulator_helpers import (
    HTTP_TIMEOUT,
    WSRecorder,
    assert_same_messages,
    assert_same_shape,
    capture,
    check_http,
    get_json,
    post_prompt,
    replay,
    types,
    wait_until,
    warm_cache,
    workflow,
)

from comfyctl.emulator import Emulator

WSFactory = Callable[..., WSRecorder]


def _seeded(name: str, **inputs: Any) -> dict[str, Any]:
    return workflow(name, **{"2": {"seed": uuid.uuid4().int % 10**9, **inputs}})


def test_full_run_cached_rerun_and_cold_restart(
    fast_emulator: Emulator, ws_factory: WSFactory
) -> None:
    emu = fast_emulator
    submitter, observer = ws_factory(emu, "client-A"), ws_factory(emu, "client-B")
    graph = _seeded("quick")
    first = post_prompt(emu, graph, client_id="client-A")["prompt_id"]
    submitter.wait_done(first)
    assert_same_messages(capture("ws_full_run_submitter.json")["received"], submitter)
    assert_same_messages(capture("ws_full_run_observer.json")["received"], observer)
    progress = [m["data"] for m in submitter.texts() if m["type"] == "progress"]
    assert [p["value"] for p in progress] == list(range(1, 11))
    assert {p["max"] for p in progress} == {10}

    # The identical prompt again: everything cached, executed re-sent from the cache.
    rerun_capture = capture("ws_cached_rerun_submitter.json")
    rerun_socket = ws_factory(emu, "client-A")
    second = post_prompt(emu, graph, client_id="client-A")["prompt_id"]
    rerun_socket.wait_done(second)
    assert_same_messages(rerun_capture["received"], rerun_socket)
    cached = rerun_socket.wait_for(lambda m: m["type"] == "execution_cached")
    assert cached["data"]["nodes"] == ["1", "2", "3"]
    history = get_json(emu, f"/history/{second}")
    assert_same_shape(rerun_capture["history"]["response"]["body"], history)
    outputs = [get_json(emu, f"/history/{pid}")[pid]["outputs"] for pid in (first, second)]
    assert outputs[0] == outputs[1]  # the cached run reports the first run's file

    # After a restart nothing is cached any more.
    emu.restart()
    assert submitter.closed.wait(5) and observer.closed.wait(5)
    cold = ws_factory(emu, "client-cold")
    third = post_prompt(emu, graph, client_id="client-cold")
    assert third["number"] == 0
    cold.wait_done(third["prompt_id"])
    assert_same_messages(capture("ws_cold_run_after_restart.json")["received"], cold)


def test_execution_error(fast_emulator: Emulator, ws_factory: WSFactory) -> None:
    emu = fast_emulator
    warm_cache(emu)
    recorded = capture("ws_execution_error.json")
    submitter, observer = ws_factory(emu, "client-A"), ws_factory(emu, "client-B")
    prompt_id = post_prompt(emu, workflow("fail_midway"), client_id="client-A")["prompt_id"]
    submitter.wait_done(prompt_id)
    assert_same_messages(recorded["submitter"]["received"], submitter)
    assert_same_messages(recorded["observer"]["received"], observer)
    error = submitter.wait_for(lambda m: m["type"] == "execution_error")["data"]
    expected = next(
        r["msg"]["data"]
        for r in recorded["submitter"]["received"]
        if r["kind"] == "text" and r["msg"]["type"] == "execution_error"
    )
    assert list(error) == list(expected)
    assert error["exception_message"] == expected["exception_message"]
    assert error["exception_type"] == "RuntimeError"
    assert (error["node_id"], error["node_type"], error["executed"]) == ("2", "FailAtStep", [])
    assert sorted(error["current_inputs"]) == sorted(expected["current_inputs"])
    progress = [m["data"]["value"] for m in submitter.texts() if m["type"] == "progress"]
    assert progress == [1, 2]
    history = get_json(emu, f"/history/{prompt_id}")
    assert_same_shape(recorded["history"]["response"]["body"], history)
    assert history[prompt_id]["status"]["status_str"] == "error"
    assert history[prompt_id]["outputs"] == {}


def test_run_without_client_id(fast_emulator: Emulator, ws_factory: WSFactory) -> None:
    emu = fast_emulator
    warm_cache(emu)
    recorded = capture("ws_run_without_client_id.json")
    b, c = ws_factory(emu, "client-B"), ws_factory(emu, "client-C")
    prompt_id = post_prompt(emu, _seeded("quick"))["prompt_id"]
    emu.wait_idle()
    assert_same_messages(recorded["B"]["received"], b)
    assert_same_messages(recorded["C"]["received"], c)
    for socket in (b, c):
        kinds = {m["type"] for m in socket.texts()}
        assert kinds == {"status", "progress", "progress_state"}
        assert all(
            m["data"]["prompt_id"] == prompt_id for m in socket.texts() if m["type"] != "status"
        )
    entry = get_json(emu, f"/history/{prompt_id}")[prompt_id]
    assert entry["prompt"][3] == {}


def test_reconnect_mid_run_and_anonymous_sid(emulator: Emulator, ws_factory: WSFactory) -> None:
    emu = emulator
    emu.faults.seconds_per_step = 0.01
    warm_cache(emu)
    emu.faults.seconds_per_step = 0.05
    recorded = capture("ws_reconnect_mid_run.json")
    first = ws_factory(emu, "client-A")
    prompt_id = post_prompt(emu, _seeded("quick", steps=12), client_id="client-A")["prompt_id"]
    first.wait_progress(prompt_id, 3)
    first.close()
    again = ws_factory(emu, "client-A")
    again.wait_done(prompt_id)
    assert_same_messages(recorded["first"]["received"], first)
    assert_same_messages(recorded["reconnected"]["received"], again)
    assert again.texts()[1] == {"type": "executing", "data": {"node": "2"}}
    assert again.texts()[0]["data"]["sid"] == "client-A"

    anonymous = ws_factory(emu)
    assert_same_messages(recorded["anonymous"]["received"], anonymous)
    assert re.fullmatch(r"[0-9a-f]{32}", anonymous.texts()[0]["data"]["sid"])


def test_binary_previews_with_and_without_feature_flags(
    fast_emulator: Emulator, ws_factory: WSFactory
) -> None:
    emu = fast_emulator
    warm_cache(emu)
    recorded = capture("ws_previews_binary_frames.json")
    flags = recorded["F"]["sent"][0]["msg"]
    f = ws_factory(emu, "client-F", first=flags)
    reply = f.wait_for(lambda m: m["type"] == "feature_flags")
    assert reply["data"] == next(
        r["msg"]["data"]
        for r in recorded["F"]["received"]
        if r["kind"] == "text" and r["msg"]["type"] == "feature_flags"
    )
    a = ws_factory(emu, "client-A")
    pid_a = post_prompt(emu, _seeded("quick_with_previews"), client_id="client-A")["prompt_id"]
    a.wait_done(pid_a)
    pid_f = post_prompt(emu, _seeded("quick_with_previews"), client_id="client-F")["prompt_id"]
    f.wait_done(pid_f)
    emu.wait_idle()
    assert_same_messages(recorded["A"]["received"], a)
    assert_same_messages(recorded["F"]["received"], f)

    def first_step(recorder: WSRecorder) -> list[str]:
        kinds = types(recorder.frames)
        start = kinds.index("executing") + 1
        return kinds[start : start + 3]

    assert first_step(a) == ["progress_state", "progress", "<binary:1>"]
    assert first_step(f) == ["progress_state", "<binary:4>", "progress"]

    old = [fr["data"] for fr in a.frames if fr["kind"] == "binary"]
    assert len(old) == 5
    for data in old:
        assert struct.unpack(">II", data[:8]) == (1, 1)  # PREVIEW_IMAGE, JPEG
        assert data[8:12].hex() == "ffd8ffe0"
    new = [fr["data"] for fr in f.frames if fr["kind"] == "binary"]
    expected_meta = next(r for r in recorded["F"]["received"] if r["kind"] == "binary")
    for data in new:
        (event, length) = struct.unpack(">II", data[:8])
        metadata = json.loads(data[8 : 8 + length])
        assert event == 4
        assert length == expected_meta["metadata_length"]
        assert list(metadata) == list(expected_meta["metadata"])
        assert metadata["prompt_id"] == pid_f and metadata["node_id"] == "2"
        assert data[8 + length : 12 + length].hex() == "ffd8ffe0"


def test_global_interrupt_waits_for_next_progress_report(
    fast_emulator: Emulator, ws_factory: WSFactory
) -> None:
    emu = fast_emulator
    warm_cache(emu)
    recorded = capture("ws_interrupt_uninterruptible_stall.json")
    socket = ws_factory(emu, "client-A")
    graph = _seeded("stall_uninterruptible", stall_seconds=0.6)
    prompt_id = post_prompt(emu, graph, client_id="client-A")["prompt_id"]
    socket.wait_progress(prompt_id, 2)
    started = time.monotonic()
    response = requests.post(emu.url + "/interrupt", timeout=HTTP_TIMEOUT)
    check_http(recorded["POST /interrupt"], response)
    socket.wait_done(prompt_id)
    assert time.monotonic() - started >= 0.4  # only noticed when the sleep ended
    assert_same_messages(recorded["received"], socket)
    progress = [m["data"]["value"] for m in socket.texts() if m["type"] == "progress"]
    assert progress == [1, 2]
    history = get_json(emu, f"/history/{prompt_id}")
    assert_same_shape(recorded["history"]["response"]["body"], history)
    assert history[prompt_id]["status"]["messages"][-1][0] == "execution_interrupted"


def test_queue_delete_and_interrupt_scenario(
    fast_emulator: Emulator, ws_factory: WSFactory
) -> None:
    """The queue/delete/interrupt scenario of ws_queue_interrupt_* and the HTTP captures
    http_queue_running_and_pending, http_queue_delete_pending, http_interrupt_running."""
    emu = fast_emulator
    warm_cache(emu)
    running_capture = capture("http_queue_running_and_pending.json")
    delete_capture = capture("http_queue_delete_pending.json")
    interrupt_capture = capture("http_interrupt_running.json")
    submitter, observer = ws_factory(emu, "client-A"), ws_factory(emu, "client-B")

    stall = post_prompt(emu, _seeded("stall"), client_id="client-A")["prompt_id"]
    submitter.wait_progress(stall, 2)
    p1 = post_prompt(emu, _seeded("quick"), client_id="client-A")
    p2 = post_prompt(emu, _seeded("quick"), client_id="client-A")
    p3 = post_prompt(emu, _seeded("quick"), client_id="client-A", front=True)
    assert p3["number"] < 0 < p1["number"] < p2["number"]

    queue = get_json(emu, "/queue")
    check_http(running_capture["GET /queue"], requests.get(emu.url + "/queue", timeout=10))
    assert [item[1] for item in queue["queue_running"]] == [stall]
    pending = sorted(queue["queue_pending"], key=lambda item: item[0])
    assert [item[1] for item in pending] == [p3["prompt_id"], p1["prompt_id"], p2["prompt_id"]]
    assert queue["queue_running"][0][3] == {"client_id": "client-A"}
    assert queue["queue_running"][0][4] == ["3"]
    check_http(
        running_capture["GET /prompt"], replay(emu, running_capture["GET /prompt"]), exact=True
    )
    history_running = running_capture["GET /history/{running_id}"]
    check_http(history_running, replay(emu, history_running, path=f"/history/{stall}"), exact=True)

    record = delete_capture["POST /queue delete"]
    check_http(record, replay(emu, record, json={"delete": [p2["prompt_id"]]}))
    after = get_json(emu, "/queue")
    assert_same_shape(delete_capture["GET /queue after"]["response"]["body"], after)
    assert {item[1] for item in after["queue_pending"]} == {p1["prompt_id"], p3["prompt_id"]}
    assert get_json(emu, f"/history/{p2['prompt_id']}") == {}
    for key, target in (
        ("POST /queue delete unknown id", str(uuid.uuid4())),
        ("POST /queue delete running id", stall),
    ):
        record = delete_capture[key]
        check_http(record, replay(emu, record, json={"delete": [target]}))
    assert [item[1] for item in get_json(emu, "/queue")["queue_running"]] == [stall]

    record = interrupt_capture["POST /interrupt {prompt_id: pending}"]
    check_http(record, replay(emu, record, json={"prompt_id": p1["prompt_id"]}))
    time.sleep(0.2)
    assert [item[1] for item in get_json(emu, "/queue")["queue_running"]] == [stall]

    record = interrupt_capture["POST /interrupt {prompt_id: running}"]
    started = time.monotonic()
    check_http(record, replay(emu, record, json={"prompt_id": stall}))
    submitter.wait_done(stall)
    assert time.monotonic() - started < 1.0  # an interruptible stall stops at once
    history = get_json(emu, f"/history/{stall}")
    assert_same_shape(
        interrupt_capture["GET /history/{interrupted_id}"]["response"]["body"], history
    )
    entry = history[stall]
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    assert entry["outputs"] == {} and entry["meta"] == {}

    emu.wait_idle()
    starts = [m["data"]["prompt_id"] for m in submitter.texts() if m["type"] == "execution_start"]
    assert starts == [stall, p3["prompt_id"], p1["prompt_id"]]
    assert_same_messages(capture("ws_queue_interrupt_submitter.json")["received"], submitter)
    assert_same_messages(capture("ws_queue_interrupt_observer.json")["received"], observer)


def test_same_client_id_twice_follows_server_py(
    fast_emulator: Emulator, ws_factory: WSFactory
) -> None:
    """The sockets dict is keyed by sid: a second socket with the same clientId replaces the
    first, and when the first one closes the entry is removed for both."""
    emu = fast_emulator
    old = ws_factory(emu, "twin")
    new = ws_factory(emu, "twin")
    first = post_prompt(emu, _seeded("quick"), client_id="twin")["prompt_id"]
    new.wait_done(first)
    assert [m["type"] for m in old.texts()] == ["status"]
    old.close()
    wait_until(lambda: old.closed.is_set())
    time.sleep(0.1)
    count = len(new.texts())
    second = post_prompt(emu, _seeded("quick"), client_id="twin")["prompt_id"]
    emu.wait_idle()
    assert len(new.texts()) == count  # dropped from the dict along with the old socket
    assert get_json(emu, f"/history/{second}")[second]["status"]["completed"] is True


@pytest.mark.parametrize(
    ("summary", "sockets"),
    [
        (
            "ws_full_run_summary.json",
            {"submitter": "ws_full_run_submitter.json", "observer": "ws_full_run_observer.json"},
        ),
        (
            "ws_queue_interrupt_summary.json",
            {
                "submitter": "ws_queue_interrupt_submitter.json",
                "observer": "ws_queue_interrupt_observer.json",
            },
        ),
    ],
)
def test_summary_captures_agree_with_the_replayed_socket_captures(
    summary: str, sockets: dict[str, str]
) -> None:
    """The summary files are compact views of the per-socket captures replayed above (same
    messages, same order, same timestamps), so replaying those covers them too; and in the
    interleaved timeline each socket's frames keep that order."""
    data = capture(summary)
    for role, name in sockets.items():
        frames = [f for f in capture(name)["received"] if f["kind"] == "text"]
        compact = [c for c in data[role] if not c["type"].startswith("<")]  # e.g. <close_frame>
        assert [c["type"] for c in compact] == [f["msg"]["type"] for f in frames]
        assert [c["t"] for c in compact] == [f["t"] for f in frames]
        src = next(
            s
            for s in {e.get("src") for e in data["interleaved_timeline"]}
            if s and s.startswith("ws:") and s.endswith(role)
        )
        timeline = [
            e["msg"]["type"]
            for e in data["interleaved_timeline"]
            if e.get("src") == src and e.get("kind") == "text"
        ]
        assert timeline == [f["msg"]["type"] for f in frames]
