"""Replay the HTTP captures of a real ComfyUI 0.3.64 against the emulator."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping

import requests
from emulator_helpers import (
    HTTP_TIMEOUT,
    assert_same_shape,
    capture,
    check_http,
    get_json,
    mime,
    post_prompt,
    replay,
    workflow,
)

from comfyctl.emulator import Emulator

CAPTURED_OUTPUT = "comfyctl_quick_00007_.png"


def _header_names(headers: Mapping[str, str]) -> set[str]:
    return {k.lower() for k in headers if k.lower() not in ("date", "server")}


def _run_quick(emu: Emulator, **body: object) -> str:
    prompt_id = post_prompt(
        emu, workflow("quick", **{"2": {"seed": uuid.uuid4().int % 10**9}}), **body
    )["prompt_id"]
    emu.wait_idle()
    return prompt_id


def test_static_routes_match_capture(emulator: Emulator) -> None:
    for name, exact in [
        ("http_get_features.json", True),
        ("http_get_prompt_idle.json", True),
        ("http_get_queue_idle.json", True),
        ("http_get_api_prefixed_queue.json", True),
        ("http_get_system_stats.json", False),
    ]:
        record = capture(name)
        check_http(record, replay(emulator, record), exact=exact)


def test_unknown_routes_and_absent_jobs_api(emulator: Emulator) -> None:
    for key, record in capture("http_jobs_api_absent.json").items():
        if key == "note":
            continue
        response = replay(emulator, record)
        check_http(record, response)
        assert response.content == b""
        assert response.headers.get("Transfer-Encoding") == "chunked"


def test_object_info_is_identical(emulator: Emulator) -> None:
    for record in capture("http_get_object_info_selected.json").values():
        check_http(record, replay(emulator, record), exact=True)
    everything = get_json(emulator, "/api/object_info")
    for name in (
        "EmptyImage",
        "SlowProgress",
        "FailAtStep",
        "SaveImage",
        "PreviewImage",
        "CheckpointLoaderSimple",
        "CLIPTextEncode",
        "EmptyLatentImage",
        "KSampler",
        "VAEDecode",
        "LoadImage",
    ):
        assert everything[name]["name"] == name


def test_post_prompt_success_shape(fast_emulator: Emulator) -> None:
    record = capture("http_post_prompt_success.json")
    response = replay(fast_emulator, record)
    check_http(record, response)
    assert response.json()["number"] == 0
    assert response.json()["node_errors"] == {}
    fast_emulator.wait_idle()


def test_post_prompt_errors_are_identical(emulator: Emulator) -> None:
    for name in (
        "http_post_prompt_error_missing_input.json",
        "http_post_prompt_error_unknown_node.json",
    ):
        record = capture(name)
        check_http(record, replay(emulator, record), exact=True)

    cases = capture("http_post_prompt_error_other_cases.json")
    parsed = 2  # the two requests above got a number too
    for key, record in cases.items():
        response = replay(emulator, record)
        if key == "link_to_missing_node":
            check_http(record, response)
            expected, actual = record["response"]["body"], response.json()
            for body in (expected, actual):
                body["node_errors"]["3"]["errors"][0]["extra_info"].pop("traceback")
            assert actual == expected
        else:
            check_http(record, response, exact=True)
        if key != "malformed_json_body":
            parsed += 1
    # Like ComfyUI, every request whose JSON parsed consumed a queue number.
    number = post_prompt(emulator, workflow("quick"))["number"]
    assert number == parsed
    assert requests.post(emulator.url + "/interrupt", timeout=HTTP_TIMEOUT).status_code == 200


def test_history_finished_entry(fast_emulator: Emulator) -> None:
    record = capture("http_get_history_finished.json")
    prompt_id = _run_quick(fast_emulator, client_id="client-A")
    response = requests.get(fast_emulator.url + f"/history/{prompt_id}", timeout=HTTP_TIMEOUT)
    check_http(record, response)
    entry = response.json()[prompt_id]
    expected = next(iter(record["response"]["body"].values()))
    assert list(entry) == list(expected)  # prompt, outputs, status, meta
    assert [m[0] for m in entry["status"]["messages"]] == [
        m[0] for m in expected["status"]["messages"]
    ]
    assert entry["prompt"][1] == prompt_id
    assert entry["prompt"][3] == {"client_id": "client-A"}
    assert entry["prompt"][4] == ["3"]
    image = entry["outputs"]["3"]["images"][0]
    assert re.fullmatch(r"comfyctl_quick_\d{5}_\.png", image["filename"])
    assert entry["meta"] == expected["meta"]


def test_history_listing_max_items_offset(fast_emulator: Emulator) -> None:
    # Same client_id pattern as the captured server's last three jobs.
    ids = [
        _run_quick(fast_emulator, client_id="client-A"),
        _run_quick(fast_emulator),
        _run_quick(fast_emulator, client_id="client-A"),
    ]
    single = capture("http_get_history_max_items_2.json")
    response = replay(fast_emulator, single)
    check_http(single, response)
    assert list(response.json()) == ids[-2:]  # the 2 most recent, oldest first

    expected_ids = {
        "GET /history?max_items=2": ids[-2:],
        "GET /history?max_items=1&offset=0": ids[:1],
        "GET /api/history?max_items=1": ids[-1:],
        "GET /history/{unknown_id}": [],
    }
    for key, record in capture("http_get_history_list_and_unknown.json").items():
        response = replay(fast_emulator, record)
        check_http(record, response)
        assert list(response.json()) == expected_ids[key]


def test_history_clear_delete_and_unknown(fast_emulator: Emulator) -> None:
    first, second = _run_quick(fast_emulator), _run_quick(fast_emulator)
    record = capture("http_post_history_delete.json")["POST /history delete"]
    response = replay(fast_emulator, record, json={"delete": [first]})
    check_http(record, response)
    assert "Content-Type" not in response.headers
    assert list(get_json(fast_emulator, "/history")) == [second]
    after = capture("http_post_history_delete.json")["GET /history/{deleted} after"]
    check_http(after, replay(fast_emulator, after, path=f"/history/{first}"), exact=True)

    check_http(
        capture("http_post_history_clear.json"),
        replay(fast_emulator, capture("http_post_history_clear.json")),
    )
    empty = capture("http_get_history_empty.json")
    check_http(empty, replay(fast_emulator, empty), exact=True)
    unknown = capture("http_get_history_unknown_id.json")
    check_http(unknown, replay(fast_emulator, unknown), exact=True)


def test_view_routes(fast_emulator: Emulator) -> None:
    prompt_id = _run_quick(fast_emulator)
    history = get_json(fast_emulator, f"/history/{prompt_id}")
    filename = history[prompt_id]["outputs"]["3"]["images"][0]["filename"]
    for key, record in capture("http_get_view.json").items():
        path = record["request"]["path"].replace(CAPTURED_OUTPUT, filename)
        method = record["request"]["method"]
        response = requests.request(method, fast_emulator.url + path, timeout=HTTP_TIMEOUT)
        expected = record["response"]
        assert response.status_code == expected["status"], key
        assert mime(response.headers) == mime(expected["headers"]), key
        assert _header_names(response.headers) == _header_names(expected["headers"]), key
        if expected["status"] == 200:
            assert response.headers["Content-Disposition"] == f'filename="{filename}"'
            if method == "GET":
                magic = expected["body"]["first_16_bytes_hex"][:8]
                assert response.content[:4].hex() == magic, key
        else:
            assert response.content == b"", key
    png = requests.get(
        fast_emulator.url + "/view", params={"filename": filename}, timeout=HTTP_TIMEOUT
    )
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert int(png.headers["Content-Length"]) == len(png.content)


def test_client_chosen_prompt_ids(emulator: Emulator) -> None:
    emulator.faults.seconds_per_step = 0.03
    cases = capture("http_post_prompt_client_prompt_id.json")
    chosen = str(uuid.uuid4())
    graph = workflow("quick", **{"2": {"seed": 11}})
    first = post_prompt(emulator, graph, client_id="custom-id-client", prompt_id=chosen)
    assert_same_shape(cases["first"]["response"]["body"], first)
    assert first["prompt_id"] == chosen
    duplicate = post_prompt(
        emulator,
        workflow("quick", **{"2": {"seed": 12}}),
        client_id="custom-id-client",
        prompt_id=chosen,
    )
    assert duplicate["prompt_id"] == chosen
    assert duplicate["number"] == first["number"] + 1
    queue = get_json(emulator, "/queue")
    assert_same_shape(cases["GET /queue after duplicate"]["response"]["body"], queue)
    assert [item[1] for item in queue["queue_running"] + queue["queue_pending"]] == [chosen] * 2
    emulator.wait_idle()
    history = get_json(emulator, f"/history/{chosen}")
    assert list(history) == [chosen]
    assert history[chosen]["prompt"][0] == duplicate["number"]  # the later run wins
    assert_same_shape(cases["GET /history/{id} after both ran"]["response"]["body"], history)

    odd = post_prompt(
        emulator, workflow("quick", **{"2": {"seed": 13}}), prompt_id="not-a-uuid-123"
    )
    assert odd["prompt_id"] == "not-a-uuid-123"
    emulator.wait_idle()
    assert get_json(emulator, "/history/not-a-uuid-123")["not-a-uuid-123"]["status"]["completed"]


def test_history_forgotten_after_restart_but_files_survive(fast_emulator: Emulator) -> None:
    cases = capture("http_history_across_restart.json")
    prompt_id = post_prompt(fast_emulator, workflow("quick"), client_id="restart-test")
    assert prompt_id["number"] == 0
    fast_emulator.wait_idle()
    before = get_json(fast_emulator, f"/history/{prompt_id['prompt_id']}")
    assert_same_shape(cases["GET /history/{id} before restart"]["response"]["body"], before)
    filename = before[prompt_id["prompt_id"]]["outputs"]["3"]["images"][0]["filename"]

    fast_emulator.restart()
    record = cases["GET /history/{id} after restart"]
    check_http(
        record, replay(fast_emulator, record, path=f"/history/{prompt_id['prompt_id']}"), exact=True
    )
    check_http(
        cases["GET /history after restart"],
        replay(fast_emulator, cases["GET /history after restart"]),
        exact=True,
    )
    view = cases["GET /view of the old output after restart"]
    response = replay(fast_emulator, view, path=f"/view?filename={filename}&subfolder=&type=output")
    check_http(view, response)
    again = post_prompt(fast_emulator, workflow("quick"), client_id="client-cold")
    assert_same_shape(cases["first POST /prompt after restart"]["response"]["body"], again)
    assert again["number"] == 0
    fast_emulator.wait_idle()
