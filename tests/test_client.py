"""The HTTP client against recorded ComfyUI replies (``responses``), and the event mapping
against real WebSocket and /history captures."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from responses import matchers

import comfyctl.client
from comfyctl.client import ServerClient
from comfyctl.config import ServerSpec
from comfyctl.errors import (
    AccessDenied,
    BadServerReply,
    ComfyctlError,
    ExitCode,
    ServerFailed,
    ServerTimeout,
    ServerUnreachable,
    SubmitFailed,
    SubmitUncertain,
    WorkflowRejected,
)
from comfyctl.events import from_history_entry, from_ws_message, from_ws_text
from comfyctl.ledger import Ledger
from comfyctl.records import (
    ERROR,
    INTERRUPTED,
    PENDING,
    RUNNING,
    SUCCESS,
    Observation,
    apply,
    new_record,
)
from comfyctl.submission import Submitter

CAPTURES = Path(
    os.environ.get("COMFYUI_PROTOCOL_DIR", Path(__file__).parent / "data" / "comfyui-protocol")
)
needs_captures = pytest.mark.skipif(
    not CAPTURES.is_dir(), reason=f"ComfyUI protocol captures not found in {CAPTURES}"
)

URL = "http://gpu1.test:8188"
TOKEN = "tok-Q8s-do-not-print"
GRAPH = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 3355443},
    },
    "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
}


def refused(text: str = "Connection refused") -> requests.exceptions.ConnectionError:
    """What requests raises when nothing listens: urllib3's NewConnectionError, caused by
    ConnectionRefusedError (the client decides on these types, not on the text)."""
    import urllib3

    cause = ConnectionRefusedError(111, text)
    new = urllib3.exceptions.NewConnectionError(
        None, f"Failed to establish a new connection: {cause}"
    )  # type: ignore[arg-type]
    new.__cause__ = cause
    return requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/", new))  # type: ignore[arg-type]


def capture(name: str) -> Any:
    return json.loads((CAPTURES / name).read_text(encoding="utf-8"))


def make_client(url: str = URL, **spec: Any) -> ServerClient:
    return ServerClient(ServerSpec(name="gpu1", url=url, **spec))


def calls(mock: responses.RequestsMock) -> list[str]:
    return [f"{c.request.method} {urlsplit(c.request.url).path}" for c in mock.calls]


def body_of(call: Any) -> Any:
    return None if call.request.body is None else json.loads(call.request.body)


@pytest.fixture
def mock():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture(autouse=True)
def backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Retry backoff without the waiting; the delays asked for are kept for assertions."""
    delays: list[float] = []
    monkeypatch.setattr(comfyctl.client.time, "sleep", delays.append)
    return delays


# -- submit --------------------------------------------------------------------------------

PROMPT_ID = "022ca141-ec5b-4163-96c1-1c2143376c8f"


def test_submit_posts_graph_client_id_and_prompt_id_once(mock) -> None:
    mock.post(f"{URL}/prompt", json={"prompt_id": PROMPT_ID, "number": 8, "node_errors": {}})
    reply = make_client().submit(GRAPH, "comfyctl-c1", PROMPT_ID)
    assert (reply.prompt_id, reply.number, reply.node_errors) == (PROMPT_ID, 8, {})
    assert calls(mock) == ["POST /prompt"]
    assert body_of(mock.calls[0]) == {
        "prompt": GRAPH,
        "client_id": "comfyctl-c1",
        "prompt_id": PROMPT_ID,
    }


def test_submit_front_flag(mock) -> None:
    mock.post(f"{URL}/prompt", json={"prompt_id": PROMPT_ID, "number": -3, "node_errors": {}})
    assert make_client().submit(GRAPH, "c", PROMPT_ID, front=True).number == -3
    assert body_of(mock.calls[0])["front"] is True


@needs_captures
def test_submit_real_success_reply(mock) -> None:
    real = capture("http_post_prompt_success.json")
    mock.post(f"{URL}/prompt", json=real["response"]["body"], status=200)
    reply = make_client().submit(real["request"]["json"]["prompt"], "c", "whatever")
    assert reply.prompt_id == real["response"]["body"]["prompt_id"]
    assert reply.number == real["response"]["body"]["number"]


def test_submit_200_with_node_errors_returns_them(mock) -> None:
    node_errors = {
        "7": {
            "errors": [{"type": "x", "message": "Value not in list", "details": "ckpt"}],
            "class_type": "CheckpointLoader",
        }
    }
    mock.post(
        f"{URL}/prompt", json={"prompt_id": PROMPT_ID, "number": 1, "node_errors": node_errors}
    )
    reply = make_client().submit(GRAPH, "c", PROMPT_ID)
    assert reply.node_errors == node_errors


@needs_captures
@pytest.mark.parametrize(
    "name, message",
    [
        ("http_post_prompt_error_missing_input.json", "Prompt outputs failed validation"),
        ("http_post_prompt_error_unknown_node.json", "NoSuchNodeClass does not exist"),
    ],
)
def test_submit_400_raises_workflow_rejected(mock, name: str, message: str) -> None:
    real = capture(name)["response"]
    mock.post(f"{URL}/prompt", json=real["body"], status=real["status"])
    with pytest.raises(WorkflowRejected) as info:
        make_client().submit(GRAPH, "c", PROMPT_ID)
    assert info.value.status == 400
    assert info.value.node_errors == real["body"]["node_errors"]
    assert info.value.error["type"] == real["body"]["error"]["type"]
    assert message in str(info.value)
    assert info.value.exit_code == 1
    assert calls(mock) == ["POST /prompt"]


@pytest.mark.parametrize(
    "status, body",
    [
        (404, "<html>Not Found</html>"),  # a URL whose path prefix leads elsewhere
        (405, "405: Method Not Allowed"),
        (404, json.dumps({"error": {"type": "x", "message": "no route"}})),
        (413, "<html>Request Entity Too Large</html>"),  # a proxy's body limit
        (400, "<html>Bad Request</html>"),  # a proxy's, not ComfyUI's error body
    ],
)
def test_submit_4xx_not_comfyuis_rejection_is_a_server_error(mock, status, body) -> None:
    """Only a 400 with ComfyUI's error body rejects the workflow. Any other 4xx came from
    something that is not ComfyUI's /prompt: nothing was queued, exit 9, the status named."""
    mock.post(f"{URL}/prompt", status=status, body=body)
    with pytest.raises(ServerFailed) as info:
        make_client().submit(GRAPH, "c", PROMPT_ID)
    assert not isinstance(info.value, (WorkflowRejected, SubmitUncertain))
    assert info.value.exit_code == ExitCode.SERVER_ERROR
    assert f"http {status}" in str(info.value) and "POST /prompt" in str(info.value)
    if status in (404, 405):
        assert info.value.hint is not None and "URL" in info.value.hint
    assert calls(mock) == ["POST /prompt"]


def test_submit_refused_is_unreachable_not_uncertain(mock) -> None:
    mock.post(f"{URL}/prompt", body=refused())
    with pytest.raises(ServerUnreachable) as info:
        make_client().submit(GRAPH, "c", PROMPT_ID)
    assert not isinstance(info.value, SubmitUncertain)
    assert info.value.reason == "refused"
    assert info.value.exit_code == 3
    assert calls(mock) == ["POST /prompt"]


@pytest.mark.parametrize(
    "failure",
    [
        requests.exceptions.ReadTimeout("read timed out"),
        requests.exceptions.ConnectionError("('Connection aborted.', RemoteDisconnected())"),
        requests.exceptions.ConnectionError("Connection reset by peer"),
    ],
    ids=["timeout", "aborted", "reset"],
)
def test_submit_lost_reply_is_uncertain_and_never_retried(mock, failure: Exception) -> None:
    mock.post(f"{URL}/prompt", body=failure)
    mock.post(f"{URL}/prompt", json={"prompt_id": PROMPT_ID, "number": 2, "node_errors": {}})
    with pytest.raises(SubmitUncertain):
        make_client().submit(GRAPH, "c", PROMPT_ID)
    assert calls(mock) == ["POST /prompt"]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_submit_5xx_is_uncertain_and_never_retried(mock, status: int) -> None:
    mock.post(f"{URL}/prompt", status=status, body="upstream trouble")
    mock.post(f"{URL}/prompt", json={"prompt_id": PROMPT_ID, "number": 2, "node_errors": {}})
    with pytest.raises(SubmitUncertain) as info:
        make_client().submit(GRAPH, "c", PROMPT_ID)
    assert info.value.reason == f"http {status}"
    assert calls(mock) == ["POST /prompt"]


@pytest.mark.parametrize(
    "reply", ["<html>proxy</html>", json.dumps({"number": 3}), json.dumps(["not", "an", "object"])]
)
def test_submit_200_without_a_prompt_id_is_uncertain(mock, reply: str) -> None:
    """A 200 means ComfyUI queued it (it answers after queueing): never "not sent"."""
    mock.post(f"{URL}/prompt", body=reply, status=200)
    with pytest.raises(SubmitUncertain) as info:
        make_client().submit(GRAPH, "c", PROMPT_ID)
    assert info.value.exit_code == ExitCode.UNCERTAIN


def test_server_choosing_its_own_prompt_id_is_adopted(mock) -> None:
    mock.post(f"{URL}/prompt", json={"prompt_id": "server-chosen", "number": 4, "node_errors": {}})
    assert make_client().submit(GRAPH, "c", PROMPT_ID).prompt_id == "server-chosen"


def test_submitter_rekeys_the_record_when_the_server_adopts_another_id(
    mock, ledger_path: Path
) -> None:
    mock.post(f"{URL}/prompt", json={"prompt_id": "server-chosen", "number": 4, "node_errors": {}})
    client = make_client()
    ledger = Ledger(ledger_path)
    done = Submitter(ledger, lambda spec: client).submit(GRAPH, client.spec)
    sent = body_of(mock.calls[0])
    assert sent["prompt_id"] != "server-chosen"
    records = ledger.load()
    assert list(records) == ["server-chosen"]
    stored = records["server-chosen"]
    assert stored == done.record
    assert (stored["prompt_id"], stored["status"], stored["number"]) == (
        "server-chosen",
        PENDING,
        4,
    )
    assert stored["client_id"] == sent["client_id"]
    assert stored["server_url"] == URL


def test_submitter_asks_instead_of_resending_after_a_lost_reply(mock, ledger_path: Path) -> None:
    mock.post(f"{URL}/prompt", body=requests.exceptions.ReadTimeout("read timed out"))
    mock.get(f"{URL}/api/jobs", status=404)
    client = make_client()
    ledger = Ledger(ledger_path)

    def queue_knows_it(request: Any) -> tuple[int, dict, str]:
        pid = body_of(mock.calls[0])["prompt_id"]
        return (
            200,
            {},
            json.dumps(
                {"queue_running": [], "queue_pending": [[9, pid, {}, {"client_id": "c"}, []]]}
            ),
        )

    mock.add_callback(responses.GET, f"{URL}/queue", callback=queue_knows_it)
    done = Submitter(ledger, lambda spec: client).submit(GRAPH, client.spec)
    assert calls(mock).count("POST /prompt") == 1
    assert done.record["status"] == PENDING and done.record["number"] == 9
    assert ledger.load()[done.record["prompt_id"]]["status"] == PENDING


def test_submitter_settles_a_job_the_server_never_got_as_rejected(mock, ledger_path: Path) -> None:
    """Asked by id and by client_id, the server knows nothing: the record is settled as
    rejected (final), so neither recover nor a retry elsewhere can send it twice."""
    mock.post(f"{URL}/prompt", body=requests.exceptions.ReadTimeout("read timed out"))
    mock.get(f"{URL}/api/jobs", status=404)
    mock.get(f"{URL}/queue", json={"queue_running": [], "queue_pending": []})
    mock.get(re.compile(rf"{re.escape(URL)}/history/[0-9a-f-]+"), json={})
    mock.get(f"{URL}/history", json={})
    client = make_client()
    ledger = Ledger(ledger_path)
    with pytest.raises(SubmitFailed):
        Submitter(ledger, lambda spec: client).submit(GRAPH, client.spec)
    assert calls(mock).count("POST /prompt") == 1
    [stored] = ledger.load().values()
    assert stored["status"] == "rejected" and "timeout" in stored["error"]["message"]


def test_submitter_adopts_the_id_an_old_server_gave_after_a_lost_reply(
    mock, ledger_path: Path
) -> None:
    """Servers older than client-chosen ids ignore ours; the job is found by its client_id."""
    mock.post(f"{URL}/prompt", body=requests.exceptions.ChunkedEncodingError("cut off"))
    mock.get(f"{URL}/api/jobs", status=404)
    mock.get(re.compile(rf"{re.escape(URL)}/history/[0-9a-f-]+"), json={})
    client = make_client()
    ledger = Ledger(ledger_path)
    submitter = Submitter(ledger, lambda spec: client)
    record = submitter.prepare(GRAPH, client.spec)
    with ledger.transaction() as tasks:
        tasks.put(record)
    mock.get(
        f"{URL}/queue",
        json={
            "queue_running": [],
            "queue_pending": [[7, "server-chosen", {}, {"client_id": record["client_id"]}, ["3"]]],
        },
    )
    result = submitter.send(record, GRAPH, client.spec)
    assert calls(mock).count("POST /prompt") == 1
    assert result.record["prompt_id"] == "server-chosen"
    assert set(ledger.load()) == {"server-chosen"}
    assert ledger.load()["server-chosen"]["status"] == "pending"


# -- queue, history, snapshot --------------------------------------------------------------


@pytest.fixture
def real_queue() -> dict[str, Any]:
    if not CAPTURES.is_dir():
        pytest.skip(f"ComfyUI protocol captures not found in {CAPTURES}")
    return capture("http_queue_running_and_pending.json")


def test_queue_parsing_sorts_pending_by_number(mock, real_queue: dict[str, Any]) -> None:
    mock.get(f"{URL}/queue", json=real_queue["GET /queue"]["response"]["body"])
    snap = make_client().queue()
    assert [i.prompt_id for i in snap.running] == [real_queue["running_prompt_id"]]
    assert snap.running[0].number == 12
    assert snap.running[0].client_id == "client-A-07673825"
    # The server sends a heap copy: [-15, 14, 13]. front:true gave the negative number.
    assert [i.number for i in snap.pending] == [-15, 13, 14]
    front = real_queue["pending_prompt_ids"][2]
    assert [i.prompt_id for i in snap.pending] == [front, *real_queue["pending_prompt_ids"][:2]]


def test_queue_tolerates_odd_items(mock) -> None:
    mock.get(
        f"{URL}/queue",
        json={
            "queue_running": [["x"], None],
            "queue_pending": [[5, "b"], [2.0, "a", {}, "no-extra"]],
        },
    )
    snap = make_client().queue()
    assert snap.running == []
    assert [(i.number, i.prompt_id, i.client_id) for i in snap.pending] == [
        (2, "a", None),
        (5, "b", None),
    ]


@needs_captures
def test_history_entry_finished_and_unknown(mock) -> None:
    finished = capture("http_get_history_finished.json")
    pid = next(iter(finished["response"]["body"]))
    mock.get(f"{URL}/history/{pid}", json=finished["response"]["body"])
    mock.get(f"{URL}/history/unknown-id", json={})
    client = make_client()
    entry = client.history_entry(pid)
    assert entry is not None and entry["status"]["status_str"] == "success"
    assert client.history_entry("unknown-id") is None


def test_history_entry_quotes_the_id(mock) -> None:
    mock.get(f"{URL}/history/a%2Fb%3Fc", json={})
    assert make_client().history_entry("a/b?c") is None
    assert urlsplit(mock.calls[0].request.url).path == "/history/a%2Fb%3Fc"


@needs_captures
def test_snapshot_reads_queue_before_history(mock, real_queue: dict[str, Any]) -> None:
    finished = capture("http_get_history_finished.json")["response"]["body"]
    done_id = next(iter(finished))
    running, front = real_queue["running_prompt_id"], real_queue["pending_prompt_ids"][2]
    mock.get(f"{URL}/api/jobs", status=404)
    mock.get(f"{URL}/queue", json=real_queue["GET /queue"]["response"]["body"])
    mock.get(f"{URL}/history/{done_id}", json=finished)
    mock.get(f"{URL}/history/gone", json={})

    found = make_client().snapshot([done_id, running, front, "gone", running])

    made = calls(mock)
    assert made[:2] == ["GET /api/jobs", "GET /queue"]
    # The per-id reads run side by side (client._each): in either order.
    assert sorted(made[2:]) == sorted([f"GET /history/{done_id}", "GET /history/gone"])
    assert found[running].kind == "running" and found[running].number == 12
    assert (found[front].kind, found[front].number, found[front].position) == ("queued", -15, 0)
    assert found[done_id].kind == "finished" and found[done_id].outcome == SUCCESS
    assert found[done_id].outputs == finished[done_id]["outputs"]
    assert found["gone"].kind == "unknown"
    assert all(obs.server_url == URL for obs in found.values())


def test_snapshot_of_many_ids_reads_recent_history_then_only_the_rest(mock) -> None:
    """One bounded read of the recent history (never all 10,000 entries of a busy server),
    then /history/{id} only for the ids it did not hold when that window was full."""
    mock.get(f"{URL}/api/jobs", status=404)
    mock.get(f"{URL}/queue", json={"queue_running": [], "queue_pending": []})
    entry = {"outputs": {}, "status": {"status_str": "success", "completed": True, "messages": []}}
    window = 2 * 4 + 64
    full = {f"other-{i}": entry for i in range(window - 2)} | {"a": entry, "c": entry}
    mock.get(
        f"{URL}/history",
        json=full,
        match=[matchers.query_param_matcher({"max_items": str(window)})],
    )
    mock.get(f"{URL}/history/b", json={"b": entry})
    mock.get(f"{URL}/history/d", json={})
    found = make_client().snapshot(["a", "b", "c", "d"])
    assert calls(mock)[:3] == ["GET /api/jobs", "GET /queue", "GET /history"]
    assert sorted(calls(mock)[3:]) == ["GET /history/b", "GET /history/d"]
    assert {pid: obs.kind for pid, obs in found.items()} == {
        "a": "finished",
        "b": "finished",
        "c": "finished",
        "d": "unknown",
    }


def test_jobs_api_absent_falls_back_and_is_detected_once(mock) -> None:
    mock.get(f"{URL}/api/jobs", status=404, body=b"")
    mock.get(f"{URL}/queue", json={"queue_running": [[1, "r", {}, {}, []]], "queue_pending": []})
    client = make_client()
    assert client.has_jobs_api() is False
    client.snapshot(["r"])
    client.snapshot(["r"])
    assert calls(mock) == ["GET /api/jobs", "GET /queue", "GET /queue"]
    assert parse_qs(urlsplit(mock.calls[0].request.url).query)["limit"] == ["1"]


def test_jobs_api_present_is_used_instead_of_queue_and_history(mock) -> None:
    mock.get(
        f"{URL}/api/jobs",
        json={"jobs": [], "pagination": {"offset": 0, "limit": 1}},
        match=[matchers.query_param_matcher({"limit": "1"})],
    )
    # One listing without a status filter: the first jobs-API release rejects "cancelled".
    mock.get(
        f"{URL}/api/jobs",
        json={
            "jobs": [
                {"id": "run-1", "status": "in_progress", "priority": 3},
                {"id": "pend-1", "status": "pending", "priority": 4},
                {"id": "someone-elses", "status": "pending", "priority": 5},
                {"id": "done-1", "status": "completed", "priority": 1, "outputs_count": 1},
                {
                    "id": "bad-1",
                    "status": "failed",
                    "priority": 2,
                    "execution_error": {
                        "exception_type": "RuntimeError",
                        "exception_message": "boom",
                        "node_id": "2",
                        "node_type": "FailAtStep",
                    },
                },
            ]
        },
        match=[matchers.query_param_matcher({"limit": "100000"})],
    )
    mock.get(
        f"{URL}/api/jobs/done-1",
        json={
            "id": "done-1",
            "status": "completed",
            "outputs": {
                "3": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}
            },
        },
    )

    found = make_client().snapshot(["run-1", "pend-1", "done-1", "bad-1", "gone-1"])

    assert not any(c.endswith(("/queue", "/history")) or "/history/" in c for c in calls(mock))
    # The single-job route only for the completed job (it alone carries the outputs).
    assert calls(mock) == ["GET /api/jobs", "GET /api/jobs", "GET /api/jobs/done-1"]
    assert found["run-1"].kind == "running"
    assert (found["pend-1"].kind, found["pend-1"].number) == ("queued", 4)
    assert (found["done-1"].kind, found["done-1"].outcome) == ("finished", SUCCESS)
    assert found["done-1"].outputs["3"]["images"][0]["filename"] == "a.png"
    assert (found["bad-1"].outcome, found["bad-1"].error["type"]) == (ERROR, "RuntimeError")
    assert found["gone-1"].kind == "unknown"
    assert "someone-elses" not in found


def test_jobs_api_detection_401_is_access_denied(mock) -> None:
    mock.get(f"{URL}/api/jobs", status=401)
    with pytest.raises(AccessDenied, match="http 401") as info:
        make_client().has_jobs_api()
    assert info.value.exit_code == ExitCode.ACCESS_DENIED


# -- cancel --------------------------------------------------------------------------------


def _interrupts_always_name_a_prompt(mock: responses.RequestsMock) -> None:
    for call in mock.calls:
        if urlsplit(call.request.url).path.endswith("/interrupt"):
            body = body_of(call)
            assert isinstance(body, dict) and body.get("prompt_id"), "a global interrupt!"


def _no_jobs_api(mock: responses.RequestsMock, version: str = "0.3.64") -> None:
    mock.get(f"{URL}/api/jobs", status=404)
    mock.get(f"{URL}/system_stats", json={"system": {"comfyui_version": version}})


def test_cancel_with_jobs_api(mock) -> None:
    mock.get(f"{URL}/api/jobs", json={"jobs": []})
    mock.post(f"{URL}/api/jobs/p-1/cancel", json={})
    assert make_client().cancel("p-1") == "jobs-api"
    assert calls(mock) == ["GET /api/jobs", "POST /api/jobs/p-1/cancel"]


def test_cancel_pending_job_dequeues_it(mock) -> None:
    _no_jobs_api(mock)
    mock.get(
        f"{URL}/queue",
        json={
            "queue_running": [[1, "other", {}, {}, []]],
            "queue_pending": [[2, "p-1", {}, {}, []]],
        },
    )
    mock.post(f"{URL}/queue", body="")
    assert make_client().cancel("p-1") == "dequeued"
    # Read again after the delete: a job that started meanwhile would not have been removed.
    assert calls(mock) == ["GET /api/jobs", "GET /queue", "POST /queue", "GET /queue"]
    assert body_of(mock.calls[-2]) == {"delete": ["p-1"]}


def test_cancel_running_job_interrupts_it_by_prompt_id(mock) -> None:
    _no_jobs_api(mock)
    mock.get(
        f"{URL}/queue",
        json={
            "queue_running": [[1, "p-1", {}, {}, []]],
            "queue_pending": [[2, "other", {}, {}, []]],
        },
    )
    mock.post(
        f"{URL}/interrupt", body="", match=[matchers.json_params_matcher({"prompt_id": "p-1"})]
    )
    assert make_client().cancel("p-1") == "interrupted"
    assert calls(mock) == ["GET /api/jobs", "GET /queue", "GET /system_stats", "POST /interrupt"]
    assert body_of(mock.calls[-1]) == {"prompt_id": "p-1"}
    _interrupts_always_name_a_prompt(mock)


def test_cancel_inactive_job_sends_nothing(mock) -> None:
    _no_jobs_api(mock)
    mock.get(
        f"{URL}/queue",
        json={
            "queue_running": [[1, "other", {}, {}, []]],
            "queue_pending": [[2, "other2", {}, {}, []]],
        },
    )
    assert make_client().cancel("p-1") == "not-active"
    assert [c for c in calls(mock) if c.startswith("POST")] == []


def test_cancel_without_allow_interrupt_leaves_a_running_job_alone(mock) -> None:
    _no_jobs_api(mock)
    mock.get(f"{URL}/queue", json={"queue_running": [[1, "p-1", {}, {}, []]], "queue_pending": []})
    assert make_client().cancel("p-1", allow_interrupt=False) == "running"
    assert [c for c in calls(mock) if c.startswith("POST")] == []


def test_cancel_without_allow_interrupt_still_dequeues_a_pending_job(mock) -> None:
    _no_jobs_api(mock)
    mock.get(f"{URL}/queue", json={"queue_running": [], "queue_pending": [[2, "p-1", {}, {}, []]]})
    mock.post(f"{URL}/queue", body="", match=[matchers.json_params_matcher({"delete": ["p-1"]})])
    assert make_client().cancel("p-1", allow_interrupt=False) == "dequeued"
    assert "POST /interrupt" not in calls(mock)


def test_cancel_does_not_claim_dequeued_for_a_job_that_started_meanwhile(mock) -> None:
    _no_jobs_api(mock)
    mock.get(
        f"{URL}/queue",
        json={
            "queue_running": [[1, "other", {}, {}, []]],
            "queue_pending": [[2, "p-1", {}, {}, []]],
        },
    )
    mock.get(f"{URL}/queue", json={"queue_running": [[2, "p-1", {}, {}, []]], "queue_pending": []})
    mock.post(f"{URL}/queue", body="")  # 200 and a no-op, as the real server does
    mock.post(f"{URL}/interrupt", body="")
    how = make_client().cancel("p-1")
    assert how != "dequeued" or "POST /interrupt" in calls(mock)
    _interrupts_always_name_a_prompt(mock)


def test_cancel_failed_interrupt_is_reported(mock) -> None:
    _no_jobs_api(mock)
    mock.get(f"{URL}/queue", json={"queue_running": [[1, "p-1", {}, {}, []]], "queue_pending": []})
    mock.post(f"{URL}/interrupt", status=500)
    with pytest.raises(ServerFailed):
        make_client().cancel("p-1")
    assert calls(mock).count("POST /interrupt") == 1
    _interrupts_always_name_a_prompt(mock)


# -- auth, URLs, retries, secrets ----------------------------------------------------------

AUTH = {
    "headers": {"X-Team": "render", "X-Api-Key": "key-Hh2-secret"},
    "username": "alice",
    "password": "pw-Jj5-secret",
    "token": TOKEN,
}


def test_auth_headers_basic_auth_and_token_on_every_request(mock) -> None:
    mock.get(f"{URL}/api/jobs", status=404)
    mock.get(f"{URL}/queue", json={"queue_running": [], "queue_pending": [[1, "p", {}, {}, []]]})
    mock.post(f"{URL}/queue", body="")
    mock.post(f"{URL}/prompt", json={"prompt_id": "p", "number": 1, "node_errors": {}})
    mock.get(f"{URL}/history/q", json={})
    mock.get(f"{URL}/view", body=b"\x89PNG")
    client = make_client(**AUTH)
    client.submit(GRAPH, "c", "p")
    client.snapshot(["q"])
    client.cancel("p")
    client.view({"filename": "a.png", "subfolder": "", "type": "output"}).close()

    expected_basic = "Basic " + base64.b64encode(b"alice:pw-Jj5-secret").decode()
    assert len(mock.calls) == 8  # cancel reads the queue again after its delete
    for call in mock.calls:
        headers = call.request.headers
        assert headers["X-Team"] == "render"
        assert headers["X-Api-Key"] == "key-Hh2-secret"
        assert headers["Authorization"] == expected_basic
        assert parse_qs(urlsplit(call.request.url).query)["token"] == [TOKEN]


def test_custom_token_param_and_no_auth_when_unconfigured(mock) -> None:
    mock.get(f"{URL}/queue", json={"queue_running": [], "queue_pending": []})
    make_client(token=TOKEN, token_param="api_key").queue()
    make_client().queue()
    with_token, without = (urlsplit(c.request.url) for c in mock.calls)
    assert parse_qs(with_token.query) == {"api_key": [TOKEN]}
    assert without.query == ""
    assert "Authorization" not in mock.calls[1].request.headers


def test_view_params_and_prefix(mock) -> None:
    base = "https://gpu2.test/comfy"
    mock.get(f"{base}/view", body=b"data")
    resp = make_client(url=base).view({"filename": "a b&c.png", "subfolder": "x/y", "type": "temp"})
    assert resp.content == b"data"
    query = parse_qs(urlsplit(mock.calls[0].request.url).query)
    assert query == {"filename": ["a b&c.png"], "subfolder": ["x/y"], "type": ["temp"]}


@pytest.mark.parametrize(
    "url, scheme_and_base",
    [
        ("http://gpu1.test:8188", "ws://gpu1.test:8188/ws"),
        ("https://gpu1.test/comfy", "wss://gpu1.test/comfy/ws"),
        ("https://gpu1.test:8443", "wss://gpu1.test:8443/ws"),
    ],
)
def test_ws_url_follows_the_scheme_and_carries_client_id_and_token(
    url: str, scheme_and_base: str
) -> None:
    token = "t/k n&=?"  # must survive URL encoding
    ws = make_client(url=url, token=token).ws_url("comfyctl-abc")
    parts = urlsplit(ws)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == scheme_and_base
    assert parse_qs(parts.query) == {"clientId": ["comfyctl-abc"], "token": [token]}
    assert parse_qs(urlsplit(make_client(url=url).ws_url("c")).query) == {"clientId": ["c"]}


@pytest.mark.parametrize("status", [502, 503])
def test_gets_retry_502_and_503(mock, backoff: list[float], status: int) -> None:
    mock.get(f"{URL}/queue", status=status)
    mock.get(f"{URL}/queue", status=status)
    mock.get(f"{URL}/queue", json={"queue_running": [], "queue_pending": []})
    assert make_client().queue().pending == []
    assert calls(mock) == ["GET /queue"] * 3
    assert len(backoff) == 2 and backoff[0] < backoff[1]


def test_gets_give_up_after_the_retries(mock) -> None:
    mock.get(f"{URL}/history/x", status=503)
    with pytest.raises(ServerFailed) as info:
        make_client().history_entry("x")
    assert info.value.reason == "http 503"
    assert len(mock.calls) == 3


def test_gets_retry_refused_connections(mock) -> None:
    mock.get(f"{URL}/queue", body=refused())
    mock.get(f"{URL}/queue", json={"queue_running": [], "queue_pending": []})
    make_client().queue()
    assert len(mock.calls) == 2


def test_get_timeout_is_not_retried(mock) -> None:
    mock.get(f"{URL}/queue", body=requests.exceptions.ReadTimeout("slow"))
    with pytest.raises(ServerTimeout, match="timeout"):
        make_client().queue()
    assert len(mock.calls) == 1


def test_post_prompt_502_is_never_retried(mock) -> None:
    mock.post(f"{URL}/prompt", status=502)
    with pytest.raises(SubmitUncertain):
        make_client().submit(GRAPH, "c", PROMPT_ID)
    assert len(mock.calls) == 1


def test_malformed_json_is_a_bad_reply(mock) -> None:
    mock.get(f"{URL}/queue", body="<html>Gateway</html>", status=200)
    with pytest.raises(BadServerReply):
        make_client().queue()


FAILURES = {
    "refused": lambda m: m.get(
        f"{URL}/queue",
        body=refused(f"HTTPConnectionPool: /queue?token={TOKEN} (Connection refused)"),
    ),
    "timeout": lambda m: m.get(
        f"{URL}/queue",
        body=requests.exceptions.ReadTimeout(f"Read timed out for {URL}/queue?token={TOKEN}"),
    ),
    "tls": lambda m: m.get(
        f"{URL}/queue",
        body=requests.exceptions.SSLError(f"certificate verify failed for /queue?token={TOKEN}"),
    ),
    "http-502": lambda m: m.get(f"{URL}/queue", status=502, body=f"bad gateway {TOKEN}"),
    "http-401": lambda m: m.get(f"{URL}/queue", status=401, body=f"bad token {TOKEN}"),
    "bad-json": lambda m: m.get(f"{URL}/queue", status=200, body=f"<p>{TOKEN}</p>"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_error_messages_never_contain_the_token(mock, failure: str) -> None:
    FAILURES[failure](mock)
    with pytest.raises(ComfyctlError) as info:
        make_client(**AUTH).queue()
    text = f"{info.value} {info.value!r}"
    for secret in (TOKEN, "key-Hh2-secret", "pw-Jj5-secret"):
        assert secret not in text


def test_submit_errors_never_contain_the_token(mock) -> None:
    mock.post(f"{URL}/prompt", body=requests.exceptions.ReadTimeout(f"/prompt?token={TOKEN}"))
    with pytest.raises(SubmitUncertain) as info:
        make_client(**AUTH).submit(GRAPH, "c", PROMPT_ID)
    assert TOKEN not in str(info.value)


def test_submit_rejection_message_never_echoes_the_token(mock) -> None:
    mock.post(f"{URL}/prompt", status=401, body=f"401 Unauthorized: invalid token {TOKEN}")
    with pytest.raises(ComfyctlError) as info:
        make_client(**AUTH).submit(GRAPH, "c", PROMPT_ID)
    assert TOKEN not in str(info.value)


# -- events from real captures -------------------------------------------------------------


def ws_messages(socket: dict[str, Any]) -> list[dict[str, Any]]:
    return [frame["msg"] for frame in socket["received"] if frame["kind"] == "text"]


def fold(record: dict[str, Any], observations: list[Observation | None]) -> dict[str, Any]:
    for obs in observations:
        if obs is not None:
            apply(record, obs)
    return record


def fresh_record(prompt_id: str, url: str = URL) -> dict[str, Any]:
    rec = new_record(prompt_id, "gpu1", url, "client-A", None)
    apply(rec, Observation("queued", prompt_id, url, number=1))
    return rec


@needs_captures
@pytest.mark.parametrize("name", sorted(p.name for p in CAPTURES.glob("ws_*.json")))
def test_a_frame_as_received_says_what_its_message_says(name: str) -> None:
    # from_ws_text skips parsing frames whose type (read off the text's start) says nothing
    # about a job: on every real capture it must agree with parsing every frame.
    sockets = capture(name)
    for socket in sockets.values() if "received" not in sockets else [sockets]:
        if not isinstance(socket, dict) or "received" not in socket:
            continue
        pid = socket.get("prompt_id") or "?"
        for msg in ws_messages(socket):
            as_text = from_ws_text(json.dumps(msg), URL, pid)
            parsed = from_ws_message(msg, URL, pid)
            assert (as_text is None) == (parsed is None), msg
            if parsed is not None:
                assert replace(as_text, at="") == replace(parsed, at="")  # type: ignore[arg-type]
    # Another serializer's layout is parsed as usual.
    msg = {"data": {"value": 1, "max": 4, "prompt_id": "p", "node": "3"}, "type": "progress"}
    assert from_ws_text(json.dumps(msg), URL, "p").kind == "progress"  # type: ignore[union-attr]
    assert from_ws_text('{"type": "status", "data": {}}', URL, "p") is None
    assert from_ws_text("not json", URL, "p") is None


@needs_captures
def test_full_run_over_the_websocket_then_history() -> None:
    socket = capture("ws_full_run_submitter.json")
    pid = socket["prompt_id"]
    observations = [from_ws_message(msg, URL, pid) for msg in ws_messages(socket)]
    kinds = [obs.kind for obs in observations if obs is not None]
    assert kinds[0] == "running" and kinds[-1] == "done"
    assert {"executing", "progress", "output"} <= set(kinds)
    assert all(
        obs.prompt_id == pid and obs.server_url == URL and obs.source == "ws"
        for obs in observations
        if obs is not None
    )
    for msg, obs in zip(ws_messages(socket), observations, strict=True):
        if msg["type"] in ("status", "progress_state", "execution_cached"):
            assert obs is None, msg
    # execution_success is an outcome only to the tracker, which knows whether its socket
    # heard the run from execution_start; folded as it comes, it changes nothing.
    (success,) = [o for o in observations if o is not None and o.kind == "succeeded"]
    assert success.timing and success.timing["finished_at"]

    record = fold(fresh_record(pid), observations)
    assert record["status"] == RUNNING  # neither "succeeded" nor "done" is an outcome
    assert record["progress"]["percent"] == 100.0
    assert [o["filename"] for o in record["outputs"]] == ["comfyctl_quick_00007_.png"]
    from_ws = fold(
        copy.deepcopy(record),
        [Observation("finished", pid, URL, outcome=SUCCESS, timing=success.timing)],
    )

    entry = capture("http_get_history_finished.json")["response"]["body"][pid]
    finished = from_history_entry(entry, URL, pid)
    assert (finished.kind, finished.outcome, finished.error) == ("finished", SUCCESS, None)
    apply(record, finished)
    assert record["status"] == SUCCESS
    assert len(record["outputs"]) == 1  # the same file from WS and /history, once
    # The socket alone (start to success) gives what /history gives: outcome, outputs and
    # the server's start and end times.
    assert from_ws["status"] == SUCCESS and from_ws["outputs"] == record["outputs"]
    assert from_ws["server_timing"]["finished_at"] == record["server_timing"]["finished_at"]
    assert (
        record["outputs"][0]["url"]
        == f"{URL}/view?filename=comfyctl_quick_00007_.png&subfolder=&type=output"
    )


@needs_captures
def test_observer_socket_tells_nothing_about_the_job() -> None:
    socket = capture("ws_full_run_observer.json")
    assert all(
        from_ws_message(msg, URL, socket["prompt_id"]) is None for msg in ws_messages(socket)
    )


@needs_captures
def test_execution_error_from_websocket_and_history() -> None:
    real = capture("ws_execution_error.json")
    pid = real["prompt_id"]
    observations = [from_ws_message(m, URL, pid) for m in ws_messages(real["submitter"])]
    finals = [o for o in observations if o is not None and o.kind == "finished"]
    assert len(finals) == 1 and finals[0].outcome == ERROR
    assert finals[0].error == {
        "type": "RuntimeError",
        "node_id": "2",
        "node_type": "FailAtStep",
        "message": "FailAtStep: deliberate failure at step 3",
    }
    record = fold(fresh_record(pid), observations)
    assert record["status"] == ERROR
    assert record["progress"]["value"] == 2 and record["progress"]["max"] == 5

    history = from_history_entry(real["history"]["response"]["body"][pid], URL, pid)
    assert history.outcome == ERROR and history.error["node_id"] == "2"
    assert history.error["type"] == "RuntimeError"
    assert all(from_ws_message(m, URL, pid) is None for m in ws_messages(real["observer"]))


@needs_captures
def test_interrupt_from_websocket_and_history_ignores_other_jobs_on_the_socket() -> None:
    socket = capture("ws_queue_interrupt_submitter.json")
    interrupted = capture("http_interrupt_running.json")
    pid = interrupted["interrupted_prompt_id"]
    messages = ws_messages(socket)
    others = {m["data"].get("prompt_id") for m in messages if m["type"] != "status"} - {pid}
    assert len(others) == 2  # two more jobs ran on this client_id afterwards

    observations = [from_ws_message(m, URL, pid) for m in messages]
    record = fold(fresh_record(pid), observations)
    assert record["status"] == INTERRUPTED
    assert record["error"]["type"] == "interrupted" and record["error"]["node_id"] == "2"
    assert record["outputs"] == []  # the later jobs' images are not this job's
    for msg, obs in zip(messages, observations, strict=True):
        if msg["data"].get("prompt_id") in others:
            assert obs is None, msg

    entry = interrupted["GET /history/{interrupted_id}"]["response"]["body"][pid]
    history = from_history_entry(entry, URL, pid)
    assert (history.kind, history.outcome) == ("finished", INTERRUPTED)
    assert history.outputs == {}

    for other in others:  # the same stream, read for another job: its own outcome only
        rec = fold(fresh_record(other), [from_ws_message(m, URL, other) for m in messages])
        assert rec["status"] == RUNNING and rec["error"] is None
        assert len(rec["outputs"]) == 1


@needs_captures
def test_reconnect_executing_without_prompt_id_is_the_sockets_own_job() -> None:
    real = capture("ws_reconnect_mid_run.json")
    pid = real["prompt_id"]
    messages = ws_messages(real["reconnected"])
    first_exec = next(m for m in messages if m["type"] == "executing")
    assert "prompt_id" not in first_exec["data"]
    obs = from_ws_message(first_exec, URL, pid)
    assert obs is not None and (obs.kind, obs.node, obs.prompt_id) == ("executing", "2", pid)

    record = new_record(pid, "gpu1", URL, real["reconnected"]["client_id"], None)
    fold(record, [from_ws_message(m, URL, pid) for m in messages])
    assert record["status"] == RUNNING
    assert record["progress"]["value"] == 12 and record["progress"]["max"] == 12
    assert [o["filename"] for o in record["outputs"]] == ["comfyctl_quick_00011_.png"]


def test_messages_without_attribution_are_ignored() -> None:
    assert from_ws_message({"type": "executing", "data": {"node": None}}, URL, "p") is None
    assert from_ws_message({"type": "progress", "data": {"value": 1, "max": 2}}, URL, "p") is None
    assert from_ws_message({"type": "status", "data": {"status": {}, "sid": "p"}}, URL, "p") is None
    assert from_ws_message({"type": "executing", "data": "junk"}, URL, "p") is None
    other = {"type": "execution_error", "data": {"prompt_id": "q", "node_id": "1"}}
    assert from_ws_message(other, URL, "p") is None


def test_observations_carry_the_given_server() -> None:
    msg = {"type": "progress", "data": {"value": 209, "max": 400, "prompt_id": "p", "node": 5}}
    obs = from_ws_message(copy.deepcopy(msg), "http://gpu2.test:8188", "p")
    assert obs is not None
    assert (obs.kind, obs.value, obs.max, obs.node) == ("progress", 209, 400, "5")
    assert obs.server_url == "http://gpu2.test:8188"


def test_cancel_falls_back_to_the_queue_where_the_jobs_api_has_no_cancel_route(mock) -> None:
    """Some builds list jobs but have no cancel route (a static handler answers 405)."""
    mock.get(f"{URL}/api/jobs", json={"jobs": []})
    mock.post(f"{URL}/api/jobs/p-1/cancel", status=405)
    mock.get(f"{URL}/api/jobs/p-1", json={"id": "p-1", "status": "pending"})
    mock.get(
        f"{URL}/queue",
        json={
            "queue_running": [[1, "other", {}, {}, []]],
            "queue_pending": [[2, "p-1", {}, {}, []]],
        },
    )
    mock.post(f"{URL}/queue", body="")
    assert make_client().cancel("p-1") == "dequeued"
    assert "POST /queue" in calls(mock) and "POST /interrupt" not in calls(mock)


def test_cancel_of_an_unknown_job_on_a_jobs_api_server(mock) -> None:
    mock.get(f"{URL}/api/jobs", json={"jobs": []})
    mock.post(f"{URL}/api/jobs/p-1/cancel", status=404)
    mock.get(f"{URL}/api/jobs/p-1", status=404)
    assert make_client().cancel("p-1") == "not-found"


def test_pending_only_cancel_never_uses_the_interrupting_jobs_api_route(mock) -> None:
    """The jobs-API cancel interrupts a job that started meanwhile; the queue delete never
    does, so cancel --all-pending goes through the queue even where the jobs API exists."""
    mock.get(f"{URL}/api/jobs", json={"jobs": []})
    mock.get(f"{URL}/queue", json={"queue_running": [[2, "p-1", {}, {}, []]], "queue_pending": []})
    assert make_client().cancel("p-1", allow_interrupt=False) == "running"
    assert not any(c.startswith("POST") for c in calls(mock))


def test_a_short_history_window_is_the_whole_history(mock) -> None:
    """Fewer entries than asked for means there are no more: no per-id reads (the typical
    case after a restart, when many jobs are lost at once)."""
    mock.get(f"{URL}/api/jobs", status=404)
    mock.get(f"{URL}/queue", json={"queue_running": [], "queue_pending": []})
    mock.get(f"{URL}/history", json={})
    found = make_client().snapshot([f"lost-{i}" for i in range(50)])
    assert calls(mock) == ["GET /api/jobs", "GET /queue", "GET /history"]
    assert {obs.kind for obs in found.values()} == {"unknown"}


@pytest.mark.parametrize("version", ["0.3.50", "", "unknown"])
def test_no_interrupt_where_the_server_would_ignore_the_prompt_id(mock, version: str) -> None:
    """Before ComfyUI honoured /interrupt's prompt_id, it interrupted whatever ran at that
    instant: comfyctl does not interrupt such a server (or one whose version it cannot tell)."""
    _no_jobs_api(mock, version)
    mock.get(f"{URL}/queue", json={"queue_running": [[1, "p-1", {}, {}, []]], "queue_pending": []})
    assert make_client().cancel("p-1") == "unsafe-interrupt"
    assert "POST /interrupt" not in calls(mock)


# -- the error taxonomy: decided on types, never on message text ---------------------------


@pytest.mark.parametrize(
    "status, kind, code",
    [
        (401, AccessDenied, ExitCode.ACCESS_DENIED),
        (403, AccessDenied, ExitCode.ACCESS_DENIED),
        (407, AccessDenied, ExitCode.ACCESS_DENIED),
        (500, ServerFailed, ExitCode.SERVER_ERROR),
        (404, ServerFailed, ExitCode.SERVER_ERROR),
    ],
)
def test_http_errors_have_their_own_types_and_exit_codes(mock, status, kind, code) -> None:
    mock.get(f"{URL}/queue", status=status, body="<html>nope</html>")
    with pytest.raises(kind) as info:
        make_client().queue()
    assert not isinstance(info.value, ServerUnreachable)
    assert info.value.exit_code == code


def test_a_malformed_reply_is_a_bad_reply_not_unreachable(mock) -> None:
    mock.get(f"{URL}/queue", body="<html>Gateway</html>", status=200)
    with pytest.raises(BadServerReply) as info:
        make_client().queue()
    assert not isinstance(info.value, ServerUnreachable)
    assert info.value.exit_code == ExitCode.BAD_REPLY


def test_never_sent_is_decided_on_the_exception_type_not_its_text(mock) -> None:
    """A failure whose text says "refused" but that is not a failure to connect may have
    sent the request: uncertain. Only urllib3's NewConnectionError proves nothing left."""
    mock.post(
        f"{URL}/prompt",
        body=requests.exceptions.ConnectionError(
            "Connection refused (but after the request went out)"
        ),
    )
    with pytest.raises(SubmitUncertain):
        make_client().submit(GRAPH, "c", PROMPT_ID)


def test_a_real_refused_connection_is_unreachable() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ServerClient(ServerSpec(name="gone", url=f"http://127.0.0.1:{port}"))
    with pytest.raises(ServerUnreachable) as info:
        client.submit(GRAPH, "c", PROMPT_ID)
    assert info.value.reason == "refused" and info.value.exit_code == ExitCode.UNREACHABLE


def test_submit_access_denied_is_certain_not_uncertain(mock) -> None:
    mock.post(f"{URL}/prompt", status=403, body="forbidden")
    with pytest.raises(AccessDenied) as info:
        make_client().submit(GRAPH, "c", PROMPT_ID)
    assert info.value.exit_code == ExitCode.ACCESS_DENIED
