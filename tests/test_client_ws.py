"""The WebSocket handshake carries the server's auth exactly like HTTP, and no Origin header."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
from urllib.parse import parse_qs, urlsplit

import pytest

from comfyctl.client import ServerClient
from comfyctl.config import ServerSpec

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def handshake_recorder(then: bytes = b"") -> tuple[str, dict, threading.Thread]:
    """A loopback server that accepts one WebSocket handshake and records it, then sends
    ``then`` (raw frames)."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: dict = {}

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            head = data.split(b"\r\n\r\n")[0].decode()
            request_line, *lines = head.split("\r\n")
            seen["path"] = request_line.split()[1]
            seen["headers"] = {
                k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)
            }
            key = seen["headers"]["sec-websocket-key"]
            accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
            conn.sendall(
                (
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                ).encode()
                + then
            )
            conn.recv(1024)  # until the client closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/comfy", seen, thread


def test_websocket_carries_headers_basic_auth_and_token_but_no_origin() -> None:
    url, seen, thread = handshake_recorder()
    spec = ServerSpec(
        name="gpu1",
        url=url,
        headers={"X-Api-Key": "k-123456"},
        username="alice",
        password="pw-secret",
        token="tok-987654",
    )
    sock = ServerClient(spec).connect_ws("comfyctl-abc", timeout=5)
    sock.close()
    thread.join(5)
    path = urlsplit(seen["path"])
    assert path.path == "/comfy/ws"  # the reverse-proxy prefix is kept
    assert parse_qs(path.query) == {"clientId": ["comfyctl-abc"], "token": ["tok-987654"]}
    headers = seen["headers"]
    assert headers["x-api-key"] == "k-123456"
    expected = base64.b64encode(b"alice:pw-secret").decode()
    assert headers["authorization"] == f"Basic {expected}"
    assert "origin" not in headers


def text_frame(payload: bytes) -> bytes:
    return bytes([0x81, len(payload)]) + payload  # FIN + text; a server's frames are unmasked


def test_text_frames_decode_and_invalid_utf8_is_a_websocket_error() -> None:
    import websocket

    frames = text_frame('{"type": "progress", "node": "é"}'.encode()) + text_frame(b"\xff\xfe")
    url, _, thread = handshake_recorder(frames)
    sock = ServerClient(ServerSpec(name="gpu1", url=url)).connect_ws("c", timeout=5)
    try:
        assert sock.recv() == '{"type": "progress", "node": "é"}'
        # As websocket-client's own UTF-8 check (skipped: too slow) would have said.
        with pytest.raises(websocket.WebSocketPayloadException):
            sock.recv()
    finally:
        sock.close()
    thread.join(5)


def test_a_burst_of_frames_is_read_ahead_and_said_to_be_pending() -> None:
    # Frames that came in one packet sit read ahead in comfyctl's buffer, where select()
    # cannot see them: pending() must say so, frame after frame, until the last.
    frames = [f'{{"type": "progress", "data": {{"value": {i}}}}}'.encode() for i in range(50)]
    url, _, thread = handshake_recorder(b"".join(text_frame(f) for f in frames))
    sock = ServerClient(ServerSpec(name="gpu1", url=url)).connect_ws("c", timeout=5)
    try:
        first = sock.recv()
        assert first == frames[0].decode()
        pendings = []
        for frame in frames[1:]:
            pendings.append(sock.sock.pending())
            assert sock.recv() == frame.decode()
        assert all(pendings) and sock.sock.pending() == 0
    finally:
        sock.close()
    thread.join(5)
