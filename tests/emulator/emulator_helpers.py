"""Helpers for the emulator tests: capture loading, shape comparison, a WebSocket recorder."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import select
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket

from comfyctl.emulator import Emulator

HTTP_TIMEOUT = 10.0
_ID_KEY = re.compile(
    r"\d+|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|not-a-uuid-\d+"
)
_PROGRESS_KINDS = frozenset({"progress", "progress_state"})


# --------------------------------------------------------------------------- captures


def protocol_dir() -> Path:
    override = os.environ.get("COMFYUI_PROTOCOL_DIR")
    if override:
        return Path(override)
    # A committed copy of the real captures (shared/comfyui-protocol), so CI always has them.
    return Path(__file__).resolve().parents[1] / "data" / "comfyui-protocol"


def capture(name: str) -> Any:
    path = protocol_dir() / name
    if not path.is_file():
        pytest.skip(f"protocol capture {path} not available")
    return json.loads(path.read_text())


def workflow(name: str, **node_inputs: dict[str, Any]) -> dict[str, Any]:
    """A captured workflow, with ``node_id={input: value}`` overrides."""
    graph = copy.deepcopy(capture(f"workflows/{name}.json"))
    for node_id, inputs in node_inputs.items():
        graph[node_id]["inputs"].update(inputs)
    return graph


# --------------------------------------------------------------------------- shapes


def shape(value: Any) -> Any:
    """Recursive type shape: dict keys kept (id-like keys folded into ``<id>``), list
    elements compared by position, every number just ``number``."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = "<id>" if _ID_KEY.fullmatch(str(key)) else key
            out.setdefault(name, shape(item))
        return {"{}": out}
    if isinstance(value, list):
        return ["[]", *[shape(item) for item in value]]
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


def shape_diff(expected: Any, actual: Any, path: str = "$") -> list[str]:
    """Differences between two shapes; lists compare the positions both have."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        exp, act = expected["{}"], actual["{}"]
        diffs = [f"{path}: missing key {k!r}" for k in exp if k not in act]
        diffs += [f"{path}: unexpected key {k!r}" for k in act if k not in exp]
        for key in exp:
            if key in act:
                diffs += shape_diff(exp[key], act[key], f"{path}.{key}")
        return diffs
    if isinstance(expected, list) and isinstance(actual, list):
        diffs = []
        for index, (exp, act) in enumerate(zip(expected[1:], actual[1:], strict=False)):
            diffs += shape_diff(exp, act, f"{path}[{index}]")
        return diffs
    if expected != actual:
        return [f"{path}: expected {expected}, got {actual}"]
    return []


def assert_same_shape(expected: Any, actual: Any) -> None:
    diffs = shape_diff(shape(expected), shape(actual))
    assert not diffs, "shape mismatch:\n" + "\n".join(diffs)


# --------------------------------------------------------------------------- http


def mime(headers: Any) -> str | None:
    value = headers.get("Content-Type")
    return value.split(";")[0].strip() if value else None


def check_http(record: dict[str, Any], response: requests.Response, exact: bool = False) -> None:
    """Status, content type and body shape (or exact body) of a replayed request."""
    expected = record["response"]
    assert response.status_code == expected["status"], response.text
    assert mime(response.headers) == mime(expected["headers"])
    body = expected["body"]
    if isinstance(body, dict) and body.get("_binary_body"):
        assert len(response.content) == body["length"] or body["length"] > 0
        assert response.content[:4].hex() == body["first_16_bytes_hex"][:8]
    elif isinstance(body, str):
        assert response.text == body
    elif exact:
        assert response.json() == body
    else:
        assert_same_shape(body, response.json())


def replay(emu: Emulator, record: dict[str, Any], **overrides: Any) -> requests.Response:
    request = record["request"]
    path = overrides.pop("path", request["path"])
    kwargs: dict[str, Any] = {"timeout": HTTP_TIMEOUT}
    if "json" in request or "json" in overrides:
        kwargs["json"] = overrides.pop("json", request.get("json"))
    elif "raw_body" in request:
        kwargs["data"] = request["raw_body"]
        kwargs["headers"] = request.get("headers", {})
    return requests.request(request["method"], emu.url + path, **kwargs)


def post_prompt(emu: Emulator, prompt: dict[str, Any], **body: Any) -> dict[str, Any]:
    response = requests.post(
        emu.url + "/prompt", json={"prompt": prompt, **body}, timeout=HTTP_TIMEOUT
    )
    assert response.status_code == 200, response.text
    return response.json()


def get_json(emu: Emulator, path: str, **params: Any) -> Any:
    response = requests.get(emu.url + path, params=params or None, timeout=HTTP_TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.01)


def warm_cache(emu: Emulator) -> None:
    """Run one quick job so EmptyImage (node 1) is cached, as on the captured server."""
    post_prompt(emu, workflow("quick", **{"2": {"seed": uuid.uuid4().int % 10**9}}))
    emu.wait_idle()


# --------------------------------------------------------------------------- websocket


class WSRecorder:
    """A WebSocket client that records every frame in the capture format
    (``{"kind": "text", "msg": ...}`` / ``{"kind": "binary", "event_type", "data"}``)."""

    def __init__(
        self, emu: Emulator, client_id: str | None = None, first: dict[str, Any] | None = None
    ) -> None:
        url = emu.ws_url + (f"?clientId={client_id}" if client_id else "")
        self.client_id = client_id
        self.ws = websocket.create_connection(url, timeout=HTTP_TIMEOUT)
        if first is not None:
            self.ws.send(json.dumps(first))
        self.frames: list[dict[str, Any]] = []
        self.closed = threading.Event()
        self._stop = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        sock = self.ws.sock
        try:
            while not self._stop:
                readable, _, _ = select.select([sock], [], [], 0.05)
                if not readable:
                    continue
                opcode, data = self.ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    frame: dict[str, Any] = {"kind": "text", "msg": json.loads(data)}
                elif opcode == websocket.ABNF.OPCODE_BINARY:
                    (event,) = struct.unpack(">I", data[:4])
                    frame = {"kind": "binary", "event_type": event, "data": bytes(data)}
                else:
                    break
                with self._cond:
                    self.frames.append(frame)
                    self._cond.notify_all()
        except (websocket.WebSocketException, OSError, ValueError):
            pass
        finally:
            self.closed.set()
            with self._cond:
                self._cond.notify_all()

    def texts(self) -> list[dict[str, Any]]:
        with self._cond:
            return [f["msg"] for f in self.frames if f["kind"] == "text"]

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for frame in self.frames:
                    if frame["kind"] == "text" and predicate(frame["msg"]):
                        return frame["msg"]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed.is_set():
                    raise AssertionError(
                        f"{self.client_id}: message not received; got {types(self.frames)}"
                    )
                self._cond.wait(min(remaining, 0.1))

    def wait_done(self, prompt_id: str, timeout: float = 10.0) -> dict[str, Any]:
        return self.wait_for(
            lambda m: (
                m["type"] == "executing"
                and m["data"].get("node") is None
                and m["data"].get("prompt_id") == prompt_id
            ),
            timeout,
        )

    def wait_progress(self, prompt_id: str, value: int, timeout: float = 10.0) -> None:
        self.wait_for(
            lambda m: (
                m["type"] == "progress"
                and m["data"]["prompt_id"] == prompt_id
                and m["data"]["value"] >= value
            ),
            timeout,
        )

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        with contextlib.suppress(websocket.WebSocketException, OSError):
            self.ws.close(timeout=1)


def types(frames: Iterable[dict[str, Any]]) -> list[str]:
    return [
        f["msg"]["type"] if f["kind"] == "text" else f"<binary:{f['event_type']}>"
        for f in frames
        if f["kind"] in ("text", "binary")
    ]


def tokens(frames: Iterable[dict[str, Any]]) -> list[str]:
    """Message sequence with every run of progress/progress_state/preview frames folded
    into one ``P{...}`` token (kinds in the run, sorted)."""
    out: list[str] = []
    run: set[str] = set()
    for frame in frames:
        if frame["kind"] == "binary":
            run.add(f"binary:{frame['event_type']}")
            continue
        if frame["kind"] != "text":
            continue
        msg = frame["msg"]
        kind = msg["type"]
        if kind in _PROGRESS_KINDS:
            run.add(kind)
            continue
        if run:
            out.append("P{" + ",".join(sorted(run)) + "}")
            run = set()
        data = msg["data"]
        if kind == "status":
            extra = ",sid" if "sid" in data else ""
            out.append(f"status({data['status']['exec_info']['queue_remaining']}{extra})")
        elif kind == "executing":
            out.append(f"executing({data.get('node')})")
        else:
            out.append(kind)
    if run:
        out.append("P{" + ",".join(sorted(run)) + "}")
    return out


def message_shapes(frames: Iterable[dict[str, Any]]) -> dict[tuple[str, ...], Any]:
    """Shape of the first message of every (type, data keys) group."""
    groups: dict[tuple[str, ...], Any] = {}
    for frame in frames:
        if frame["kind"] != "text":
            continue
        msg = frame["msg"]
        key = (msg["type"], *sorted(msg["data"]))
        groups.setdefault(key, msg)
    return groups


def assert_same_messages(
    expected_frames: list[dict[str, Any]], actual: WSRecorder, timeout: float = 5.0
) -> None:
    """Same folded sequence, and the same shape for every kind of message."""
    expected_tokens = tokens(expected_frames)
    deadline = time.monotonic() + timeout
    while True:
        with actual._cond:
            frames = list(actual.frames)
        if tokens(frames) == expected_tokens or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert tokens(frames) == expected_tokens
    expected_groups = message_shapes(expected_frames)
    actual_groups = message_shapes(frames)
    assert sorted(actual_groups) == sorted(expected_groups)
    for key, message in expected_groups.items():
        diffs = shape_diff(shape(message), shape(actual_groups[key]))
        assert not diffs, f"{key}: " + "; ".join(diffs)
