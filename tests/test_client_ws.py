"""The WebSocket handshake carries the server's auth exactly like HTTP, and no Origin header."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from comfyctl import ws
from comfyctl.client import ServerClient
from comfyctl.config import ServerSpec
from comfyctl.errors import ServerUnreachable

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


_seen_from_client: dict = {}


def read_request(conn: socket.socket, names: list[str] | None = None) -> tuple[str, dict[str, str]]:
    """An HTTP request's first line and its headers (names lower-cased); ``names``: gets
    every header name as sent, repeats included."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(4096)
    request_line, *lines = data.split(b"\r\n\r\n")[0].decode().split("\r\n")
    if names is not None:
        names += [h.split(":", 1)[0].lower() for h in lines]
    return request_line, {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in lines)}


def handshake_recorder(
    then: bytes = b"",
    later: bytes | list[bytes] = b"",
    reply_to_client: bool = False,
    tls: ssl.SSLContext | None = None,
) -> tuple[str, dict, threading.Thread]:
    """A loopback server that accepts one WebSocket handshake and records it, then sends
    ``then`` (raw frames) with its reply and ``later`` a moment after; ``reply_to_client``:
    records the client's frames (unmasked) in ``_seen_from_client`` until its close;
    ``tls``: over TLS (an https:// URL)."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: dict = {"sent": threading.Event()}

    def serve() -> None:
        conn, _ = listener.accept()
        if tls is not None:
            try:
                conn = tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):  # the client refused the certificate
                conn.close()
                listener.close()
                return
        with conn, listener:
            seen["names"] = []
            request_line, seen["headers"] = read_request(conn, seen["names"])
            seen["path"] = request_line.split()[1]
            key = seen["headers"]["sec-websocket-key"]
            accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
            conn.sendall(
                (
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                ).encode()
                + then
            )
            for piece in later if isinstance(later, list) else [later] if later else []:
                time.sleep(0.2 if not isinstance(later, list) else 0)
                conn.sendall(piece)  # a list: one write (one TLS record) per piece
            if isinstance(later, list):
                seen["sent"].set()
            if reply_to_client:
                _seen_from_client["frames"] = _client_frames(conn)
            else:
                conn.recv(1024)  # until the client closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    scheme = "https" if tls is not None else "http"
    return f"{scheme}://127.0.0.1:{listener.getsockname()[1]}/comfy", seen, thread


def _client_frames(conn: socket.socket) -> list[tuple[int, bytes]]:
    """The client's frames, unmasked, up to and with its close frame (every client frame
    must be masked: an unmasked one fails here)."""
    frames, data = [], b""
    while True:
        while len(data) < 6 or len(data) < 6 + (data[1] & 0x7F):
            chunk = conn.recv(4096)
            if not chunk:
                return frames
            data += chunk
        assert data[1] & 0x80, "a client frame must be masked"
        size = data[1] & 0x7F
        mask, payload = data[2:6], data[6 : 6 + size]
        frames.append((data[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))))
        data = data[6 + size :]
        if frames[-1][0] == 0x8:
            return frames


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
    assert headers["user-agent"] == "comfyctl"  # as on HTTP
    assert headers["sec-websocket-version"] == "13"
    assert "origin" not in headers


def text_frame(payload: bytes, opcode: int = 0x1, final: bool = True) -> bytes:
    """A server's frame (unmasked), with the 7-, 16- or 64-bit length the size needs."""
    first = (0x80 if final else 0) | opcode
    if len(payload) < 126:
        return bytes([first, len(payload)]) + payload
    if len(payload) < 65536:
        return bytes([first, 126]) + len(payload).to_bytes(2, "big") + payload
    return bytes([first, 127]) + len(payload).to_bytes(8, "big") + payload


def connect(then: bytes = b"", **spec: object) -> tuple[ws.WebSocket, threading.Thread]:
    url, _, thread = handshake_recorder(then)
    return ServerClient(ServerSpec(name="gpu1", url=url, **spec)).connect_ws("c", timeout=5), thread


def test_text_frames_decode_and_invalid_utf8_is_an_error_after_what_came_before() -> None:
    frames = text_frame('{"type": "progress", "node": "é"}'.encode()) + text_frame(b"\xff\xfe")
    sock, thread = connect(frames)
    try:
        assert sock.recv() == '{"type": "progress", "node": "é"}'
        with pytest.raises(ws.WebSocketError, match="UTF-8"):
            sock.recv()
    finally:
        sock.close()
    thread.join(5)


def read_all(sock: ws.WebSocket, count: int) -> list[str | bytes]:
    """``count`` messages, read as they come; then nothing may be left pending."""
    got: list[str | bytes] = []
    while len(got) < count:
        got += sock.read()
    assert not sock.pending()
    return got


def test_a_burst_of_frames_comes_out_of_one_read() -> None:
    # Frames that came with the handshake reply sit in comfyctl's buffer, where select()
    # cannot see them: pending() says so, and one read() hands out every one.
    frames = [f'{{"type": "progress", "data": {{"value": {i}}}}}'.encode() for i in range(50)]
    sock, thread = connect(b"".join(text_frame(f) for f in frames))
    try:
        assert sock.pending()
        assert read_all(sock, 50) == [f.decode() for f in frames]
    finally:
        sock.close()
    thread.join(5)


def test_long_frames_fragments_and_pings() -> None:
    big = bytes(range(256)) * 300  # 76,800 bytes: a 64-bit length
    medium = ("x" * 1000).encode()  # a 16-bit length
    frames = (
        text_frame(b"part one, ", final=False)
        + text_frame(b"ping!", opcode=0x9)  # a control frame between fragments
        + text_frame(b"part two", opcode=0x0)
        + text_frame(big, opcode=0x2)
        + text_frame(medium)
    )
    url, _, thread = handshake_recorder(frames, reply_to_client=True)
    sock = ServerClient(ServerSpec(name="gpu1", url=url)).connect_ws("c", timeout=5)
    try:
        got: list[str | bytes] = []
        while len(got) < 3:
            got += sock.read()
        assert got == ["part one, part two", big, medium.decode()]
    finally:
        sock.close()
    thread.join(5)
    assert _seen_from_client["frames"][0] == (0xA, b"ping!")  # the pong, unmasked here
    assert _seen_from_client["frames"][-1][0] == 0x8  # then the close


def test_a_frame_split_across_packets_waits_for_its_end() -> None:
    frame = text_frame(b'{"type": "executing"}')
    url, _, thread = handshake_recorder(frame[:3], later=frame[3:])
    sock = ServerClient(ServerSpec(name="gpu1", url=url)).connect_ws("c", timeout=5)
    try:
        got: list[str | bytes] = []
        while not got:
            got = sock.read()
        assert got == ['{"type": "executing"}']
    finally:
        sock.close()
    thread.join(5)


@pytest.mark.parametrize(
    ("frames", "error"),
    [
        (text_frame(b"\x03\xe8", opcode=0x8), ws.Closed),
        (bytes([0x81, 0x80 | 2]) + b"\x00\x00\x00\x00hi", ws.WebSocketError),  # masked
        (text_frame(b"x", opcode=0x0), ws.WebSocketError),  # a continuation of nothing
        (text_frame(b"x", opcode=0x3), ws.WebSocketError),  # a reserved opcode
    ],
)
def test_a_closing_or_broken_server_ends_the_read(frames: bytes, error: type) -> None:
    sock, thread = connect(frames)
    try:
        with pytest.raises(error):
            sock.read()
    finally:
        sock.close()
    thread.join(5)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", "websocket: http 403"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: wrong\r\n\r\n",
            "websocket: bad handshake",
        ),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "websocket: not an HTTP reply"),
        (b"", "websocket: connection closed during the handshake"),
    ],
)
def test_a_refused_handshake_is_unreachable_with_its_reason(reply: bytes, reason: str) -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            conn.recv(4096)
            conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    with pytest.raises(ServerUnreachable) as caught:
        ServerClient(ServerSpec(name="gpu1", url=url)).connect_ws("c", timeout=5)
    assert caught.value.reason == reason
    thread.join(5)


def test_the_websocket_goes_through_the_proxy_http_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen, thread = handshake_recorder()
    target = urlsplit(url)
    proxy = socket.create_server(("127.0.0.1", 0))
    asked: dict[str, str] = {}

    def tunnel() -> None:
        conn, _ = proxy.accept()
        with conn, proxy:
            asked["request"], headers = read_request(conn)
            asked.update(headers)
            upstream = socket.create_connection((target.hostname, target.port))
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            with upstream:
                pipe = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
                pipe.start()
                _pump(conn, upstream)

    threading.Thread(target=tunnel, daemon=True).start()
    monkeypatch.setenv("HTTP_PROXY", f"http://bob:pr%40xy@127.0.0.1:{proxy.getsockname()[1]}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    sock = ServerClient(ServerSpec(name="gpu1", url=url)).connect_ws("c", timeout=5)
    sock.close()
    thread.join(5)
    assert asked["request"] == f"CONNECT 127.0.0.1:{target.port} HTTP/1.1"
    assert asked["proxy-authorization"] == "Basic " + base64.b64encode(b"bob:pr@xy").decode()
    assert urlsplit(seen["path"]).path == "/comfy/ws"  # the handshake went through it
    assert "proxy-authorization" not in seen["headers"]  # the server never sees it


def test_no_proxy_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    sock, thread = connect()
    sock.close()
    thread.join(5)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)


def test_a_handshake_reply_dripping_a_byte_at_a_time_is_given_up_at_the_timeout() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        with conn, listener, contextlib.suppress(OSError):
            conn.recv(4096)
            while not done.wait(0.05):
                conn.sendall(b"X")  # every read gets something: no single read times out

    threading.Thread(target=drip, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    started = time.monotonic()
    with pytest.raises(ServerUnreachable) as caught:
        ServerClient(ServerSpec(name="gpu1", url=url)).connect_ws("c", timeout=0.5)
    done.set()
    assert caught.value.reason == "websocket: handshake timed out"
    assert time.monotonic() - started < 2


def test_a_header_that_is_not_latin_1_is_an_error_not_a_crash() -> None:
    url, _, _ = handshake_recorder()
    spec = ServerSpec(name="gpu1", url=url, headers={"X-Team": "Ré ☃"})
    with pytest.raises(ServerUnreachable) as caught:
        ServerClient(spec).connect_ws("c", timeout=5)
    assert caught.value.reason == "websocket: a header is not Latin-1 text"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (cert, key), made by the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    command = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1"
    command += " -addext subjectAltName=IP:127.0.0.1"
    subprocess.run(
        [*command.split(), "-keyout", key, "-out", cert], check=True, capture_output=True
    )
    return cert, key


def tls_server(certificate: tuple[str, str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


@pytest.mark.parametrize("verify", ["the CA bundle", False])
def test_wss_with_the_configured_verify_reads_a_burst_through_tls(
    certificate: tuple[str, str], verify: object
) -> None:
    # 2,000 frames: several TLS records, some frames split across two of them.
    frames = [f'{{"type": "progress", "data": {{"value": {i}}}}}'.encode() for i in range(2000)]
    url, seen, thread = handshake_recorder(
        b"".join(text_frame(f) for f in frames), tls=tls_server(certificate)
    )
    spec = ServerSpec(name="gpu1", url=url, verify=certificate[0] if verify else False)
    sock = ServerClient(spec).connect_ws("c", timeout=5)
    try:
        assert read_all(sock, 2000) == [f.decode() for f in frames]
    finally:
        sock.close()
    thread.join(5)
    assert urlsplit(seen["path"]).path == "/comfy/ws"


def test_wss_to_a_certificate_nobody_vouches_for_is_unreachable_tls(
    certificate: tuple[str, str],
) -> None:
    url, _, thread = handshake_recorder(tls=tls_server(certificate))
    with pytest.raises(ServerUnreachable) as caught:
        ServerClient(ServerSpec(name="gpu1", url=url)).connect_ws("c", timeout=5)
    assert caught.value.reason == "tls"
    thread.join(5)


def test_one_read_takes_every_frame_that_has_arrived_however_it_was_written(
    certificate: tuple[str, str],
) -> None:
    # Over TLS one recv returns one record (asyncio writes one per message); over TCP one
    # recv returns 64 KiB. Either way one read() must take all that is there: the reader
    # waits 50 ms between reads.
    small = [
        text_frame(f'{{"type": "progress", "data": {{"value": {i}}}}}'.encode()) for i in range(100)
    ]
    big = [text_frame(bytes(100_000), opcode=0x2) for _ in range(3)]
    for later, tls in ((small, tls_server(certificate)), (big, None)):
        url, seen, thread = handshake_recorder(later=later, tls=tls)
        verify = certificate[0] if tls else True
        sock = ServerClient(ServerSpec(name="gpu1", url=url, verify=verify)).connect_ws(
            "c", timeout=5
        )
        try:
            assert seen["sent"].wait(5)
            time.sleep(0.2)  # all of it is in the kernel's buffer now
            assert len(sock.read()) == len(later)
        finally:
            sock.close()
        thread.join(5)


def test_frames_in_the_tls_record_of_the_handshake_reply_are_not_left_behind(
    certificate: tuple[str, str],
) -> None:
    frames = text_frame(b'{"type": "status"}') + text_frame(("x" * 6000).encode())
    url, _, thread = handshake_recorder(frames, tls=tls_server(certificate))  # one write
    sock = ServerClient(ServerSpec(name="gpu1", url=url, verify=certificate[0])).connect_ws(
        "c", timeout=5
    )
    try:
        assert sock.pending()  # select() would not say so: it is decrypted already
        sock.settimeout(0.001)
        assert len(sock.read()) + len(sock.read()) == 2
    finally:
        sock.close()
    thread.join(5)


def test_a_partial_frame_is_not_pending() -> None:
    sock, thread = connect(text_frame(b"0123456789")[:5])
    try:
        assert not sock.pending()  # the rest will wake select()
    finally:
        sock.close()
    thread.join(5)


@pytest.mark.parametrize(
    "frame",
    [
        bytes([0x89, 126]) + (200).to_bytes(2, "big") + bytes(200),  # a ping over 125 bytes
        bytes([0x09, 1]) + b"x",  # a fragmented ping
        bytes([0xC1, 1]) + b"x",  # RSV1 (compression) never agreed
        bytes([0x88, 1]) + b"x",  # a close with a 1-byte code
    ],
    ids=["long-ping", "fragmented-ping", "rsv-bit", "short-close"],
)
def test_malformed_frames_end_the_connection_after_what_came_before(frame: bytes) -> None:
    # The server stays (it only records what the client sends): the error is the client's.
    url, _, thread = handshake_recorder(text_frame(b"before") + frame, reply_to_client=True)
    sock = ServerClient(ServerSpec(name="gpu1", url=url)).connect_ws("c", timeout=5)
    sock.settimeout(0.5)
    try:
        assert sock.read() == ["before"]
        with pytest.raises(ws.WebSocketError) as caught:
            sock.read()
        assert not isinstance(caught.value, ws.Closed)  # a protocol error, not a close
    finally:
        sock.close()
    thread.join(5)


def test_websocket_headers_merge_as_http_ones_do() -> None:
    url, seen, thread = handshake_recorder()
    spec = ServerSpec(
        name="gpu1",
        url=url,
        headers={"user-agent": "render-farm/2", "authorization": "Bearer x"},
        username="alice",
        password="pw",
    )
    ServerClient(spec).connect_ws("c", timeout=5).close()
    thread.join(5)
    assert seen["names"].count("user-agent") == 1 and seen["names"].count("authorization") == 1
    assert seen["headers"]["user-agent"] == "render-farm/2"  # the configured one wins
    assert seen["headers"]["authorization"].startswith("Basic ")  # basic auth wins, as in requests


def test_a_broken_frame_in_the_handshake_reply_is_pending_and_raised_by_read() -> None:
    sock, thread = connect(bytes([0x81, 0x80 | 2]) + b"\x00\x00\x00\x00hi")  # masked
    try:
        assert sock.pending()  # not raised here: the listen loop reads, and read() raises
        with pytest.raises(ws.WebSocketError, match="masked"):
            sock.read()
    finally:
        sock.close()
    thread.join(5)


# -- what the environment says (proxies, CA bundle, netrc): read once, for HTTP and WS alike


def test_a_ca_bundle_named_by_the_environment_is_trusted_by_websockets_too(
    certificate: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # requests trusts REQUESTS_CA_BUNDLE for HTTP; a WebSocket to the same server must too.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certificate[0])
    url, seen, thread = handshake_recorder(b"", tls=tls_server(certificate))
    ServerClient(ServerSpec(name="gpu1", url=url)).connect_ws("c", timeout=5).close()
    thread.join(5)
    assert urlsplit(seen["path"]).path == "/comfy/ws"


def test_verify_false_in_the_config_is_not_undone_by_a_ca_bundle_in_the_environment(
    certificate: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certificate[0])
    session = ServerClient(ServerSpec(name="gpu1", url="https://127.0.0.1:9", verify=False)).session
    # What requests itself decides for a request made with this session.
    settings = session.merge_environment_settings("https://127.0.0.1:9/", {}, None, None, None)
    assert settings["verify"] is False


def test_http_goes_through_the_environments_proxy_unless_no_proxy_names_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from comfyctl.emulator import Emulator

    emulator = Emulator().start()
    try:
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with pytest.raises(ServerUnreachable):
            ServerClient(ServerSpec(name="gpu1", url=emulator.url)).queue()
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert ServerClient(ServerSpec(name="gpu1", url=emulator.url)).queue().running == []
    finally:
        emulator.stop()


def test_a_netrc_login_is_used_when_the_config_gives_none(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login ann password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert ServerClient(ServerSpec(name="a", url="http://127.0.0.1:9")).session.auth == (
        "ann",
        "s3cret",
    )
    spec = ServerSpec(name="b", url="http://127.0.0.1:9", username="bob", password="pw")
    assert ServerClient(spec).session.auth == ("bob", "pw")


def test_the_environment_is_read_once_per_server_not_per_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from comfyctl.emulator import Emulator

    calls = []
    real = requests.utils.get_environ_proxies
    for module in (requests.utils, requests.sessions):  # sessions has its own name for it
        monkeypatch.setattr(
            module, "get_environ_proxies", lambda *a, **k: calls.append(a) or real(*a, **k)
        )
    emulator = Emulator().start()
    try:
        client = ServerClient(ServerSpec(name="gpu1", url=emulator.url))
        for _ in range(3):
            client.queue()
        client.connect_ws("c", timeout=5).close()
    finally:
        emulator.stop()
    assert len(calls) == 1
