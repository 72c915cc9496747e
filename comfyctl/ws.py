"""A WebSocket client (RFC 6455, client side): what listening to ComfyUI needs, no more.

comfyctl listens on one socket per job (ComfyUI sends a job's events only to its
client_id), so connecting and reading frames is the hot path of ``watch``. This client
reads the handshake reply in one go and, at each read, all that the socket holds, and
parses every complete frame in its buffer at once: a burst of progress frames costs one
system call.
(websocket-client, used before, read the handshake a byte per system call and each frame
in several.) It sends only what a listener must: pongs and the closing frame.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import ssl
import time
from collections import deque
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
READ_SIZE = 65536
MAX_DRAIN = 4 * 1024 * 1024  # read at once before the other sockets get their turn
MAX_MESSAGE = 256 * 1024 * 1024  # a preview image is a few MB; more is not a ComfyUI server
MAX_HEAD = 65536  # the handshake reply's header
TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
WHOLE_TEXT = 0x80 | TEXT  # a frame's first byte: final, no reserved bits, text


class WebSocketError(Exception):
    """The handshake failed or the server broke the protocol; ``reason`` is short."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Closed(WebSocketError):
    """The server closed the connection."""


def connect(
    url: str,
    headers: Mapping[str, str],
    timeout: float,
    tls: ssl.SSLContext | None = None,
    proxy: str | None = None,
) -> WebSocket:
    """Open ``url`` (ws:// or wss://) with ``headers`` on the upgrade request, through the
    HTTP ``proxy`` (CONNECT) when one is given. ``timeout`` bounds connecting (TCP, TLS
    and the handshake, together), then each read. Raises OSError or WebSocketError."""
    deadline = time.monotonic() + timeout
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    host, port = parts.hostname or "", parts.port or (443 if secure else 80)
    if proxy:
        sock = _tunnel(proxy, host, port, timeout, deadline)
    else:
        sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if secure:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock = (tls or ssl.create_default_context()).wrap_socket(sock, server_hostname=host)
        key = base64.b64encode(os.urandom(16)).decode()
        name = f"[{host}]" if ":" in host else host
        lines = [
            f"GET {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
            f"Host: {name}" if parts.port is None else f"Host: {name}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        sock.sendall(_request(lines))
        status, reply, rest = _read_head(sock, deadline)
        if status != 101:
            raise WebSocketError(f"http {status}")
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        if (
            reply.get("upgrade", "").lower() != "websocket"
            or "upgrade" not in reply.get("connection", "").lower()
            or reply.get("sec-websocket-accept") != accept
        ):
            raise WebSocketError("bad handshake")
        sock.settimeout(timeout)
    except BaseException:
        sock.close()
        raise
    return WebSocket(sock, rest)


class WebSocket:
    """One connection. ``read()`` after ``select`` says the socket is readable; ``recv()``
    to wait for the next message."""

    def __init__(self, sock: socket.socket, data: bytes = b"") -> None:
        self.sock = sock
        self._buf = bytearray(data)
        self._parts: list[bytes] = []  # a fragmented message so far
        self._opcode = 0  # the fragmented message's type
        self._ready: deque[str | bytes] = deque()  # read, not yet handed out (recv)
        self._broken: WebSocketError | None = None  # found after good messages (_messages)

    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def read(self) -> list[str | bytes]:
        """Everything the socket holds now (waiting at most the timeout for the first
        bytes; not at all on a non-blocking socket), then every message now complete: text
        as str, binary as bytes; [] when nothing came in time or no message is whole yet.
        Raises Closed when the server closed, WebSocketError or OSError when it broke."""
        if self._ready:  # read by recv(), not yet handed out
            messages = list(self._ready)
            self._ready.clear()
            return messages
        messages = self._messages()  # what came with the handshake reply
        if messages:
            return messages
        try:
            data = self.sock.recv(READ_SIZE)
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
            return []  # nothing yet (over TLS: no whole record yet)
        if not data:
            raise Closed("connection closed")
        self._buf += data
        # A plain socket gives all it holds up to READ_SIZE; a TLS one a record at a time.
        if len(data) == READ_SIZE or isinstance(self.sock, ssl.SSLSocket):
            self._buf += self._drain()
        return self._messages()

    def _drain(self) -> bytes:
        """What else has arrived, read without waiting: a burst bigger than one read (a
        preview image) or spread over TLS records (one record per recv) is taken whole,
        not one piece per wake-up of the reader."""
        pieces, size, timeout = [], 0, self.sock.gettimeout()
        self.sock.settimeout(0.0)
        try:
            while size < MAX_DRAIN:
                piece = self.sock.recv(READ_SIZE)
                if not piece:
                    break  # closed: the next read says so
                pieces.append(piece)
                size += len(piece)
        except (BlockingIOError, ssl.SSLWantReadError, TimeoutError):
            pass  # nothing more for now
        finally:
            self.sock.settimeout(timeout)
        return b"".join(pieces)

    def recv(self) -> str | bytes:
        """The next message, waiting at most about the timeout (then TimeoutError)."""
        timeout = self.sock.gettimeout()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready:
            self._ready.extend(self.read())
            if not self._ready and deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError
        return self._ready.popleft()

    def pending(self) -> bool:
        """Whether a message (or an error) waits that select() will not announce: read
        it first. A partial frame does not count: the rest of it will wake select."""
        try:
            return bool(self._ready or self._broken or _frame_bounds(self._buf, 0))
        except WebSocketError:
            return True  # a broken frame: read() raises it

    def close(self) -> None:
        """Send the closing frame and close. The frame goes only if it can go at once: a
        server that stopped reading (or is gone) does not hold up the caller."""
        with contextlib.suppress(OSError):
            self.sock.settimeout(0.0)
            self.sock.sendall(_frame(CLOSE, b"\x03\xe8"))  # 1000: normal closure
        self.sock.close()

    def _messages(self) -> list[str | bytes]:
        """The complete messages in the buffer. A broken frame after good ones is raised
        at the next read: what came before it is delivered."""
        if self._broken is not None:
            raise self._broken
        buf, at, messages = self._buf, 0, []
        try:
            while bounds := _frame_bounds(buf, at):
                start, end = bounds
                if buf[at] == WHOLE_TEXT and not self._parts:  # nearly every frame: at once
                    message: str | bytes | None = _text(buf[start:end])
                else:
                    message = self._frame_message(buf[at], buf[start:end])
                at = end
                if message is not None:
                    messages.append(message)
        except WebSocketError as exc:
            if not messages:
                raise
            self._broken = exc
        del buf[:at]
        return messages

    def _frame_message(self, first: int, payload: bytearray) -> str | bytes | None:
        """What one frame completes: a message, or None (a control frame, or a fragment)."""
        opcode, final = first & 0x0F, bool(first & 0x80)
        if first & 0x70:
            raise WebSocketError("reserved bits set (no extension was agreed)")
        if opcode >= CLOSE and (not final or len(payload) > 125):
            raise WebSocketError("malformed control frame")
        if opcode == PING:
            with contextlib.suppress(OSError):  # a dead socket shows at the next read
                self.sock.sendall(_frame(PONG, bytes(payload)))
            return None
        if opcode == PONG:
            return None
        if opcode == CLOSE:
            if len(payload) == 1:
                raise WebSocketError("malformed close frame")
            with contextlib.suppress(OSError):
                self.sock.sendall(_frame(CLOSE, bytes(payload[:2])))
            raise Closed("closed by the server")
        if opcode in (TEXT, BINARY):
            if self._parts:
                raise WebSocketError("a new message inside a fragmented one")
            if not final:
                self._opcode, self._parts = opcode, [bytes(payload)]
                return None
        elif opcode == CONTINUATION and self._parts:
            self._parts.append(bytes(payload))
            if sum(len(p) for p in self._parts) > MAX_MESSAGE:
                raise WebSocketError("message too large")
            if not final:
                return None
            opcode, payload, self._parts = self._opcode, bytearray().join(self._parts), []
        else:
            raise WebSocketError(f"unexpected frame (opcode {opcode})")
        return bytes(payload) if opcode == BINARY else _text(payload)


def _text(payload: bytearray) -> str:
    try:
        return payload.decode()
    except UnicodeDecodeError:
        raise WebSocketError("text frame is not UTF-8") from None


def _frame_bounds(buf: bytearray, at: int) -> tuple[int, int] | None:
    """Where the payload of the frame starting at ``at`` begins and ends, once the whole
    frame is in ``buf``; None before that."""
    if len(buf) - at < 2:
        return None
    second = buf[at + 1]
    if second & 0x80:
        raise WebSocketError("masked frame from the server")
    size, start = second & 0x7F, at + 2
    if size >= 126:
        start += 2 if size == 126 else 8
        if len(buf) < start:
            return None
        size = int.from_bytes(buf[at + 2 : start], "big")
    if size > MAX_MESSAGE:
        raise WebSocketError("frame too large")
    return (start, start + size) if start + size <= len(buf) else None


def _frame(opcode: int, payload: bytes) -> bytes:
    """A client frame: final, masked (the protocol requires it of clients), short payload."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def _request(lines: list[str]) -> bytes:
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise WebSocketError("a header is not Latin-1 text") from None


def _read_head(sock: socket.socket, deadline: float) -> tuple[int, dict[str, str], bytes]:
    """An HTTP reply's status and headers (names lower-cased), and what came after them,
    by ``deadline`` (a server sending a byte at a time does not get to take longer)."""
    data = b""
    while b"\r\n\r\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise WebSocketError("handshake timed out")
        sock.settimeout(left)
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            raise WebSocketError("handshake timed out") from None
        if not chunk:
            raise WebSocketError("connection closed during the handshake")
        data += chunk
        if len(data) > MAX_HEAD:
            raise WebSocketError("handshake reply too long")
    # What TLS decrypted beyond these reads is in the SSL object, where select() cannot see it.
    while isinstance(sock, ssl.SSLSocket) and sock.pending():
        data += sock.recv(sock.pending())
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        raise WebSocketError("not an HTTP reply")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(fields[1]), headers, rest


def _tunnel(proxy: str, host: str, port: int, timeout: float, deadline: float) -> socket.socket:
    """A connection to host:port through an HTTP proxy's CONNECT."""
    parts = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    if parts.scheme != "http":
        raise WebSocketError(f"{parts.scheme} proxies are not supported")
    sock = socket.create_connection((parts.hostname or "", parts.port or 80), timeout=timeout)
    try:
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if parts.username is not None:
            secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            lines.append("Proxy-Authorization: Basic " + base64.b64encode(secret.encode()).decode())
        sock.sendall(_request(lines))
        status, _, rest = _read_head(sock, deadline)
        if status != 200 or rest:
            raise WebSocketError(f"proxy answered http {status}")
    except BaseException:
        sock.close()
        raise
    return sock
