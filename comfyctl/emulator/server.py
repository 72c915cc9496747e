"""HTTP and WebSocket protocol of the emulator: routes, message fan-out, the worker task.

Matches ComfyUI 0.3.64 (``server.py``) as recorded in the protocol captures: every route
is served both bare and under ``/api``; unknown routes answer 404 with an empty
``application/octet-stream`` body; ``status`` is broadcast, execution messages go to the
prompt's ``client_id`` only; a socket reconnecting with the ``clientId`` of the running
prompt gets ``status`` (with ``sid``) then ``executing {"node": X}``. Sockets live in a
dict keyed by sid, so a second socket with the same ``clientId`` replaces the first, and
when either closes the sid is removed (ComfyUI's behaviour, kept on purpose).

Like ComfyUI's ``app/logger.py``, the server keeps its last 300 console writes, each
``{"t": <local time, ISO, no zone>, "m": <text>}``, served at ``/internal/logs/raw`` (not
under ``/api``); a start (and a restart) writes the start-up lines first, then each
``POST /prompt`` writes "got prompt" and each finished prompt "Prompt executed in ...".

With ``jobs_api=True`` the newest server's additions are served too: ``/api/jobs``,
``/api/jobs/{id}``, ``POST /api/jobs/{id}/cancel``, ``POST /api/jobs/cancel``; queued
prompts get ``extra_data.create_time``; a client-chosen ``prompt_id`` must be a canonical
UUID (``invalid_prompt_id``); unknown classes answer ``missing_node_type``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import mimetypes
import os
import socket
import struct
import sys
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from comfyctl.emulator import jobs
from comfyctl.emulator.engine import (
    PREVIEW_IMAGE,
    PREVIEW_IMAGE_WITH_METADATA,
    Executor,
    PromptQueue,
)
from comfyctl.emulator.faults import Faults
from comfyctl.emulator.images import (
    encode_jpeg,
    encode_png,
    encode_webp,
    read_png_info,
)
from comfyctl.emulator.nodes import CATALOGUE, Directories, object_info
from comfyctl.emulator.validation import validate_prompt

log = logging.getLogger("comfyctl.emulator")

COMFYUI_VERSION = "0.3.64"
MAX_UPLOAD_SIZE = 100 * 1024 * 1024
SERVER_FEATURES: dict[str, Any] = {
    "supports_preview_metadata": True,
    "max_upload_size": MAX_UPLOAD_SIZE,
}
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
WS_PATHS = frozenset({"/ws", "/api/ws"})
LOG_CAPACITY = 300  # app.logger.setup_logger's default

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_LOGIN_PAGE = "<!doctype html><html><body><form action=/login>Sign in</form></body></html>"


async def _drip(request: web.Request, response: web.Response, delay: float) -> web.StreamResponse:
    """Send a JSON answer a few bytes at a time (a slow, congested link)."""
    body = bytes(response.body)  # type: ignore[arg-type]
    stream = web.StreamResponse(status=response.status)
    stream.content_type = "application/json"
    stream.content_length = len(body)
    await stream.prepare(request)
    for start in range(0, len(body), 8):
        await stream.write(body[start : start + 8])
        await asyncio.sleep(delay)
    await stream.write_eof()
    return stream


def _route_matches(request: web.Request, routes: tuple[str, ...]) -> bool:
    path = request.path[4:] if request.path.startswith("/api/") else request.path
    return not routes or f"{request.method} {path}" in routes


def _is_prompt(prompt_id: Any) -> Callable[[Any], bool]:
    return lambda item: bool(item[1] == prompt_id)


def _proxy_error_page(status: int) -> str:
    reason = {
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
        504: "Gateway Time-out",
    }.get(status, "Error")
    return (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )


def _ram() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * 1024**3, 8 * 1024**3


class _State:
    """Everything a server restart forgets."""

    def __init__(self, server: ComfyServer) -> None:
        self.number = 0
        self.logs: deque[dict[str, str]] = deque(maxlen=LOG_CAPACITY)
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.sockets_metadata: dict[str, dict[str, Any]] = {}
        self.messages: asyncio.Queue[tuple[Any, Any, str | None]] = asyncio.Queue()
        self.publishing = False
        self.queue = PromptQueue(server.queue_updated)
        self.executor = Executor(
            send=server.send_sync,
            faults=server.faults,
            dirs=server.dirs,
            supports_preview_metadata=self.supports_preview_metadata,
        )

    def supports_preview_metadata(self, sid: str | None) -> bool:
        metadata = self.sockets_metadata.get(sid) if sid is not None else None
        if metadata is None:
            return False
        return metadata.get("feature_flags", {}).get("supports_preview_metadata") is True


class ComfyServer:
    """One emulated ComfyUI server on an already-bound listening socket."""

    def __init__(
        self,
        *,
        faults: Faults,
        jobs_api: bool,
        dirs: Directories,
        host: str,
        max_upload_size: int = MAX_UPLOAD_SIZE,
    ) -> None:
        self.faults = faults
        self.max_upload_size = max_upload_size  # --max-upload-size (MB) * 1024 * 1024
        self.feature_flags = {**SERVER_FEATURES, "max_upload_size": max_upload_size}
        self.jobs_api = jobs_api
        self.dirs = dirs
        self.host = host
        self.port = 0
        self.state = _State(self)
        #: Every HTTP request answered, as "METHOD /path" (no /api prefix, no query): what
        #: a client asked, for tests of how much it asks.
        self.requests: collections.Counter[str] = collections.Counter()
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._open_ws: dict[web.WebSocketResponse, web.Request] = {}
        self._generation = 0
        self._closing = False
        self._frozen = False  # a "freeze" reply fault fired: no HTTP request is answered

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, sock: socket.socket) -> None:
        self._closing = False
        self._frozen = False
        self.port = sock.getsockname()[1]
        self.state = _State(self)
        state = self.state
        self._log_startup()
        self._tasks = [
            asyncio.create_task(self._publish_loop(state)),
            asyncio.create_task(self._worker(state)),
        ]
        runner = web.AppRunner(
            self._make_app(), handle_signals=False, shutdown_timeout=1.0, access_log=None
        )
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._runner = runner

    async def shutdown(self) -> None:
        """Close every connection and forget the running job (the process "dies")."""
        self._closing = True
        self._generation += 1
        self.drop_websockets()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def log(self, message: str) -> None:
        """One console write, as ComfyUI's LogInterceptor records it (logging's
        StreamHandler writes message and newline at once)."""
        self.state.logs.append({"t": datetime.now().isoformat(), "m": message})

    def _log_startup(self) -> None:
        """What ComfyUI 0.3.64 prints while starting (main.py, server.py), in order."""
        for line in (
            "Checkpoint files will always be loaded safely.\n",
            "Total VRAM 16384 MB, total RAM 16384 MB\n",
            "pytorch version: 2.13.0+cpu\n",
            "Set vram state to: DISABLED\n",
            "Device: cpu\n",
            f"Python version: {sys.version}\n",
            f"ComfyUI version: {COMFYUI_VERSION}\n",
            "[Prompt Server] web root: <emulated>\n",
            "Starting server\n\n",
            f"To see the GUI go to: http://{self.host}:{self.port}\n",
        ):
            self.log(line)

    def drop_websockets(self) -> None:
        """Abort every open WebSocket's connection (no close frame: a dropped link)."""
        for request in list(self._open_ws.values()):
            transport = request.transport
            if transport is not None:
                transport.abort()

    def is_idle(self) -> bool:
        state = self.state
        return state.queue.is_empty() and state.messages.empty() and not state.publishing

    # -- messages ------------------------------------------------------------------------

    def send_sync(self, event: Any, data: Any, sid: str | None = None) -> None:
        self.state.messages.put_nowait((event, data, sid))

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.state.queue.remaining()}}

    def queue_updated(self) -> None:
        self.send_sync("status", {"status": self.queue_info()})

    async def _publish_loop(self, state: _State) -> None:
        while True:
            event, data, sid = await state.messages.get()
            state.publishing = True
            try:
                await self._send(state, event, data, sid)
            except Exception:  # a broken message must not stop the fan-out
                log.exception("emulator: failed to send %r", event)
            finally:
                state.publishing = False

    async def _send(self, state: _State, event: Any, data: Any, sid: str | None) -> None:
        if event == PREVIEW_IMAGE_WITH_METADATA:
            image, metadata = data
            meta = json.dumps({**metadata, "image_type": "image/jpeg"}).encode()
            await self._send_bytes(state, event, struct.pack(">I", len(meta)) + meta + image, sid)
        elif event == PREVIEW_IMAGE:
            await self._send_bytes(state, event, struct.pack(">I", 1) + data, sid)
        elif isinstance(data, (bytes, bytearray)):
            await self._send_bytes(state, event, bytes(data), sid)
        else:
            message = {"type": event, "data": data}
            for ws in self._targets(state, sid):
                await self._safe(ws.send_json(message))

    async def _send_bytes(self, state: _State, event: int, data: bytes, sid: str | None) -> None:
        message = struct.pack(">I", event) + data
        for ws in self._targets(state, sid):
            await self._safe(ws.send_bytes(message))

    @staticmethod
    def _targets(state: _State, sid: str | None) -> list[web.WebSocketResponse]:
        if sid is None:
            return list(state.sockets.values())
        ws = state.sockets.get(sid)
        return [ws] if ws is not None else []

    @staticmethod
    async def _safe(sending: Awaitable[None]) -> None:
        try:
            await sending
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as err:
            log.debug("emulator: send error: %s", err)

    # -- worker --------------------------------------------------------------------------

    async def _worker(self, state: _State) -> None:
        executor = state.executor
        while True:
            item, task_id = await state.queue.get()
            started = time.perf_counter()
            prompt_id = item[1]
            executor.last_prompt_id = prompt_id
            try:
                await executor.execute(item[2], prompt_id, dict(item[3]), list(item[4]))
            except Exception:
                log.exception("emulator: prompt %s crashed the executor", prompt_id)
                executor.success = False
                executor.history_result = {"outputs": {}, "meta": {}}
            state.queue.task_done(
                task_id,
                executor.history_result,
                {
                    "status_str": "success" if executor.success else "error",
                    "completed": executor.success,
                    "messages": executor.status_messages,
                },
            )
            if executor.client_id is not None:
                self.send_sync(
                    "executing", {"node": None, "prompt_id": prompt_id}, executor.client_id
                )
            self.log(f"Prompt executed in {time.perf_counter() - started:.2f} seconds\n")

    # -- app -----------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._fault_middleware], client_max_size=self.max_upload_size
        )
        gets: list[tuple[str, Handler]] = [
            ("/ws", self.websocket),
            ("/", self.root),
            ("/system_stats", self.system_stats),
            ("/features", self.features),
            ("/prompt", self.get_prompt),
            ("/object_info", self.object_info_all),
            ("/object_info/{node_class}", self.object_info_one),
            ("/history", self.get_history),
            ("/history/{prompt_id}", self.get_history_item),
            ("/queue", self.get_queue),
            ("/view", self.view),
            ("/embeddings", self.empty_list),
            ("/extensions", self.empty_list),
        ]
        posts: list[tuple[str, Handler]] = [
            ("/prompt", self.post_prompt),
            ("/history", self.post_history),
            ("/queue", self.post_queue),
            ("/interrupt", self.interrupt),
            ("/free", self.free),
            ("/upload/image", self.upload_image),
        ]
        if self.jobs_api:
            # Registered as "/api/jobs..." in ComfyUI, so the /api prefix doubles them.
            gets += [("/api/jobs", self.list_jobs), ("/api/jobs/{job_id}", self.get_job)]
            posts += [
                ("/api/jobs/{job_id}/cancel", self.cancel_job),
                ("/api/jobs/cancel", self.cancel_jobs),
            ]
        for prefix in ("/api", ""):
            for path, handler in gets:
                app.router.add_get(prefix + path, handler)
            for path, handler in posts:
                app.router.add_post(prefix + path, handler)
        # ComfyUI mounts /internal as a sub-app: it has no /api twin.
        app.router.add_get("/internal/logs/raw", self.logs_raw)
        app.router.add_get("/internal/logs", self.logs_text)
        app.router.add_route("*", "/{tail:.*}", self.not_found)
        return app

    @web.middleware
    async def _fault_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        faults = self.faults
        if request.path not in WS_PATHS:
            path = request.path[4:] if request.path.startswith("/api/") else request.path
            self.requests[f"{request.method} {path}"] += 1
            if self._frozen and not await self._thawed():
                if request.transport is not None:
                    request.transport.abort()
                raise web.HTTPServiceUnavailable()
            generation = self._generation
            while faults.http_hang:
                if self._closing or generation != self._generation:
                    if request.transport is not None:
                        request.transport.abort()
                    raise web.HTTPServiceUnavailable()
                await asyncio.sleep(0.02)
            status = faults.http_status
            if status is not None:
                return web.Response(
                    status=status, text=_proxy_error_page(status), content_type="text/html"
                )
        response = await handler(request)
        if (
            faults.reply is not None
            and request.path not in WS_PATHS
            and _route_matches(request, faults.reply_routes)
        ):
            return await self._spoil_reply(request, response, faults.reply)
        is_json = isinstance(response, web.Response) and response.content_type == "application/json"
        if faults.wrong_content_type and is_json:
            return web.Response(status=200, text=_LOGIN_PAGE, content_type="text/html")
        if (
            faults.slow_drip
            and is_json
            and isinstance(response, web.Response)
            and isinstance(response.body, (bytes, bytearray))
        ):
            return await _drip(request, response, faults.slow_drip)
        if (
            faults.malformed_json
            and isinstance(response, web.Response)
            and response.content_type == "application/json"
            and isinstance(response.body, (bytes, bytearray))
        ):
            body = bytes(response.body)
            return web.Response(
                status=200, body=body[: max(1, len(body) // 2)], content_type="application/json"
            )
        return response

    async def _thawed(self) -> bool:
        """Wait while the server is frozen; False when it shuts down meanwhile."""
        generation = self._generation
        while self._frozen and self.faults.reply == "freeze":
            if self._closing or generation != self._generation:
                return False
            await asyncio.sleep(0.02)
        self._frozen = False
        return True

    async def _spoil_reply(
        self, request: web.Request, response: web.StreamResponse, mode: str
    ) -> web.StreamResponse:
        """The request was handled (a prompt is queued); its reply goes wrong."""
        if mode == "garble":
            return web.Response(status=200, text=_LOGIN_PAGE, content_type="text/html")
        if mode == "freeze":
            self._frozen = True
            if await self._thawed():
                return response
        if request.transport is not None:  # "drop", or a frozen reply at shutdown
            request.transport.abort()
        raise web.HTTPServiceUnavailable()

    # -- misc routes ---------------------------------------------------------------------

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=404)
        response.content_type = "application/octet-stream"
        await response.prepare(request)
        await response.write_eof()
        return response

    async def root(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            text="<!doctype html><title>ComfyUI</title><p>comfyctl ComfyUI emulator</p>",
            content_type="text/html",
        )

    async def empty_list(self, request: web.Request) -> web.StreamResponse:
        return web.json_response([])

    async def system_stats(self, request: web.Request) -> web.StreamResponse:
        ram_total, ram_free = _ram()
        argv = [
            "main.py",
            "--cpu",
            "--listen",
            self.host,
            "--port",
            str(self.port),
            "--output-directory",
            str(self.dirs.output),
        ]
        return web.json_response(
            {
                "system": {
                    "os": os.name,
                    "ram_total": ram_total,
                    "ram_free": ram_free,
                    "comfyui_version": COMFYUI_VERSION,
                    "required_frontend_version": "1.27.10",
                    "installed_templates_version": "0.1.95",
                    "required_templates_version": "0.1.95",
                    "python_version": sys.version,
                    "pytorch_version": "emulated",
                    "embedded_python": False,
                    "argv": argv,
                },
                "devices": [
                    {
                        "name": "cpu",
                        "type": "cpu",
                        "index": None,
                        "vram_total": ram_total,
                        "vram_free": ram_free,
                        "torch_vram_total": ram_total,
                        "torch_vram_free": ram_free,
                    }
                ],
            }
        )

    async def features(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(dict(self.feature_flags))

    async def object_info_all(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {name: object_info(spec, self.dirs) for name, spec in CATALOGUE.items()}
        )

    async def object_info_one(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["node_class"]
        out = {}
        if name in CATALOGUE:
            out[name] = object_info(CATALOGUE[name], self.dirs)
        return web.json_response(out)

    # -- prompt / queue / history --------------------------------------------------------

    async def get_prompt(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.queue_info())

    async def post_prompt(self, request: web.Request) -> web.StreamResponse:
        self.log("got prompt\n")
        json_data = await request.json()
        state = self.state
        if "number" in json_data:
            number: Any = float(json_data["number"])
        else:
            number = state.number
            if "front" in json_data and json_data["front"]:  # noqa: RUF019 (any JSON body)
                number = -number
            state.number += 1

        if "prompt" not in json_data:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)

        prompt = json_data["prompt"]
        if self.faults.own_prompt_ids:
            prompt_id = str(uuid.uuid4())  # ComfyUI before client-chosen ids
        elif self.jobs_api:
            client_prompt_id = json_data.get("prompt_id")
            if client_prompt_id is None:
                prompt_id = str(uuid.uuid4())
            else:
                try:
                    prompt_id = jobs.validate_job_id(client_prompt_id)
                except ValueError:
                    error = {
                        "type": "invalid_prompt_id",
                        "message": "prompt_id must be a valid UUID",
                        "details": "prompt_id must be a UUID string in canonical lowercase "
                        "hyphenated form; omit it to let the server generate one",
                        "extra_info": {},
                    }
                    return web.json_response({"error": error, "node_errors": {}}, status=400)
        else:
            prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))

        partial: Any = json_data.get("partial_execution_targets")
        valid, problem, outputs, node_errors = validate_prompt(
            prompt, partial, newest=self.jobs_api, dirs=self.dirs
        )
        extra_data = json_data["extra_data"] if "extra_data" in json_data else {}  # noqa: SIM401
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        if not valid:
            return web.json_response({"error": problem, "node_errors": node_errors}, status=400)
        for key in SENSITIVE_EXTRA_DATA_KEYS:
            extra_data.pop(key, None)
        if self.jobs_api:
            extra_data["create_time"] = int(time.time() * 1000)
        state.queue.put((number, prompt_id, prompt, extra_data, outputs))
        return web.json_response(
            {"prompt_id": prompt_id, "number": number, "node_errors": node_errors}
        )

    async def get_queue(self, request: web.Request) -> web.StreamResponse:
        running, pending = self.state.queue.current()
        return web.json_response(
            {
                "queue_running": [list(item) for item in running],
                "queue_pending": [list(item) for item in pending],
            }
        )

    async def post_queue(self, request: web.Request) -> web.StreamResponse:
        json_data = await request.json()
        queue = self.state.queue
        if "clear" in json_data and json_data["clear"]:  # noqa: RUF019
            queue.wipe_queue()
        if "delete" in json_data:
            for id_to_delete in json_data["delete"]:
                queue.delete(_is_prompt(id_to_delete))
        return web.Response(status=200)

    async def interrupt(self, request: web.Request) -> web.StreamResponse:
        try:
            json_data = await request.json()
        except json.JSONDecodeError:
            json_data = {}
        prompt_id = json_data.get("prompt_id")
        if prompt_id:
            running, _ = self.state.queue.current()
            if any(item[1] == prompt_id for item in running):
                self.log(f"Interrupting prompt {prompt_id}\n")
                self.state.executor.interrupt()
            else:
                self.log(f"Prompt {prompt_id} is not currently running, skipping interrupt\n")
        else:
            self.log("Global interrupt (no prompt_id specified)\n")
            self.state.executor.interrupt()
        return web.Response(status=200)

    async def logs_raw(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"entries": list(self.state.logs), "size": {"cols": 80, "rows": 24}}
        )

    async def logs_text(self, request: web.Request) -> web.StreamResponse:
        return web.json_response("".join(e["t"] + " - " + e["m"] for e in self.state.logs))

    async def free(self, request: web.Request) -> web.StreamResponse:
        json_data = await request.json()
        if json_data.get("free_memory", False) and self.state.queue.is_empty():
            self.state.executor.cache.clear()
        return web.Response(status=200)

    async def get_history(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query["offset"]) if "offset" in query else -1
        history = self.state.queue.get_history(max_items=max_items, offset=offset)
        return web.json_response({**history, **self.faults.foreign_history})

    async def get_history_item(self, request: web.Request) -> web.StreamResponse:
        prompt_id = request.match_info["prompt_id"]
        if prompt_id in self.faults.foreign_history:
            return web.json_response({prompt_id: self.faults.foreign_history[prompt_id]})
        return web.json_response(self.state.queue.get_history(prompt_id=prompt_id))

    async def post_history(self, request: web.Request) -> web.StreamResponse:
        json_data = await request.json()
        queue = self.state.queue
        if "clear" in json_data and json_data["clear"]:  # noqa: RUF019
            queue.wipe_history()
        if "delete" in json_data:
            for id_to_delete in json_data["delete"]:
                queue.delete_history_item(id_to_delete)
        return web.Response(status=200)

    # -- files ---------------------------------------------------------------------------

    def _dir_by_type(self, kind: str | None) -> Path | None:
        return {"output": self.dirs.output, "input": self.dirs.input, "temp": self.dirs.temp}.get(
            kind or ""
        )

    def _annotated(self, name: str) -> tuple[str, Path | None]:
        for kind in ("output", "input", "temp"):
            suffix = f" [{kind}]"
            if name.endswith(suffix):
                return name[: -len(suffix)], self._dir_by_type(kind)
        return name, None

    async def view(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        if "filename" not in query:
            return web.Response(status=404)
        filename, base = self._annotated(query["filename"])
        if not filename:
            return web.Response(status=400)
        if filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        if base is None:
            base = self._dir_by_type(query.get("type", "output"))
        if base is None:
            return web.Response(status=400)
        output_dir = os.path.abspath(base)
        if "subfolder" in query:
            full = os.path.join(output_dir, query["subfolder"])
            if os.path.commonpath((os.path.abspath(full), output_dir)) != output_dir:
                return web.Response(status=403)
            output_dir = full
        filename = os.path.basename(filename)
        path = os.path.join(output_dir, filename)
        if not os.path.isfile(path):
            return web.Response(status=404)
        disposition = {"Content-Disposition": f'filename="{filename}"'}
        if "preview" in query or query.get("channel", "rgba") in ("rgb", "a"):
            with open(path, "rb") as handle:
                info = read_png_info(handle.read())
            width, height, rgb = info if info is not None else (64, 64, (128, 128, 128))
            if "preview" in query:
                preview = query["preview"].split(";")
                fmt = preview[0]
                if fmt not in ("webp", "jpeg") or "a" in query.get("channel", ""):
                    fmt = "webp"
                body = (
                    encode_jpeg(width, height, rgb)
                    if fmt == "jpeg"
                    else encode_webp(width, height, rgb)
                )
                return web.Response(body=body, content_type=f"image/{fmt}", headers=disposition)
            if query["channel"] == "rgb":
                body = encode_png(width, height, rgb)
            else:
                body = encode_png(width, height, (0, 0, 0), alpha=255)
            return web.Response(body=body, content_type="image/png", headers=disposition)
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        return web.FileResponse(path, headers={**disposition, "Content-Type": content_type})

    async def upload_image(self, request: web.Request) -> web.StreamResponse:
        """``POST /upload/image`` as ComfyUI's ``image_upload``: a name already taken by other
        content gets `` (1)``, `` (2)``... before the extension; the same content under
        that name is reused (not written again); ``overwrite=true|1`` replaces it."""
        post = await request.post()  # a body over max_upload_size: aiohttp answers 413
        image = post.get("image")
        upload_type = str(post.get("type") or "input")
        base = self._dir_by_type(upload_type)
        if base is None:
            # ComfyUI leaves its directory variable unbound here: an unhandled error.
            raise RuntimeError(f"unknown upload type {upload_type!r}")
        if not isinstance(image, web.FileField):
            return web.Response(status=400)
        filename = image.filename
        if not filename:
            return web.Response(status=400)
        subfolder = str(post.get("subfolder", ""))
        base_dir = os.path.abspath(base)
        folder = os.path.join(base_dir, os.path.normpath(subfolder))
        path = os.path.abspath(os.path.join(folder, filename))
        if os.path.commonpath((base_dir, path)) != base_dir:
            return web.Response(status=400)
        os.makedirs(folder, exist_ok=True)
        content = image.file.read()
        overwrite = str(post.get("overwrite", "")) in ("true", "1")
        stem, ext = os.path.splitext(filename)
        index = 1
        duplicate = False
        while not overwrite and os.path.exists(path):
            with open(path, "rb") as existing:
                if existing.read() == content:
                    duplicate = True
                    break
            filename = f"{stem} ({index}){ext}"
            path = os.path.join(folder, filename)
            index += 1
        if not duplicate:
            with open(path, "wb") as handle:
                handle.write(content)
        return web.json_response({"name": filename, "subfolder": subfolder, "type": upload_type})

    # -- websocket -----------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        if self.faults.refuse_websocket:
            return web.Response(status=403, text="WebSocket refused (emulated fault)")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        state = self.state
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            state.sockets.pop(sid, None)  # reusing a session id: the old socket is replaced
        else:
            sid = uuid.uuid4().hex
        state.sockets[sid] = ws
        state.sockets_metadata[sid] = {"feature_flags": {}}
        self._open_ws[ws] = request
        try:
            await self._send(state, "status", {"status": self.queue_info(), "sid": sid}, sid)
            executor = state.executor
            if executor.client_id == sid and executor.last_node_id is not None:
                await self._send(state, "executing", {"node": executor.last_node_id}, sid)
            first_message = True
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    try:
                        data = json.loads(msg.data)
                        if first_message and data.get("type") == "feature_flags":
                            state.sockets_metadata[sid]["feature_flags"] = data.get("data", {})
                            await self._send(state, "feature_flags", dict(self.feature_flags), sid)
                        first_message = False
                    except Exception as err:  # like ComfyUI: log and keep the socket
                        log.debug("emulator: bad WebSocket message from %s: %s", sid, err)
        finally:
            state.sockets.pop(sid, None)
            state.sockets_metadata.pop(sid, None)
            self._open_ws.pop(ws, None)
        return ws

    # -- jobs API (newest ComfyUI) -------------------------------------------------------

    async def list_jobs(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        statuses = None
        if query.get("status"):
            statuses = [s.strip().lower() for s in query["status"].split(",") if s.strip()]
            invalid = [s for s in statuses if s not in jobs.ALL_STATUSES]
            if invalid:
                return web.json_response(
                    {
                        "error": f"Invalid status value(s): {', '.join(invalid)}. "
                        f"Valid values: {', '.join(jobs.ALL_STATUSES)}"
                    },
                    status=400,
                )
        sort_by = query.get("sort_by", "created_at").lower()
        sort_order = query.get("sort_order", "desc").lower()
        if sort_by not in ("created_at", "execution_duration"):
            return web.json_response(
                {"error": "sort_by must be 'created_at' or 'execution_duration'"}, status=400
            )
        if sort_order not in ("asc", "desc"):
            return web.json_response({"error": "sort_order must be 'asc' or 'desc'"}, status=400)
        limit = None
        if "limit" in query:
            try:
                limit = int(query["limit"])
            except ValueError:
                return web.json_response({"error": "limit must be an integer"}, status=400)
            if limit <= 0:
                return web.json_response({"error": "limit must be a positive integer"}, status=400)
        offset = 0
        if "offset" in query:
            try:
                offset = max(0, int(query["offset"]))
            except ValueError:
                return web.json_response({"error": "offset must be an integer"}, status=400)
        running, pending = self.state.queue.current()
        page, total = jobs.list_jobs(
            running,
            pending,
            self.state.queue.history,
            statuses=statuses,
            workflow_id=query.get("workflow_id"),
            sort_by=sort_by,
            sort_order=sort_order,
            limit=limit,
            offset=offset,
        )
        return web.json_response(
            {
                "jobs": page,
                "pagination": {
                    "offset": offset,
                    "limit": limit,
                    "total": total,
                    "has_more": offset + len(page) < total,
                },
            }
        )

    async def get_job(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        running, pending = self.state.queue.current()
        history = self.state.queue.get_history(prompt_id=job_id)
        job = jobs.get_job(job_id, running, pending, history)
        if job is None:
            return web.json_response({"error": "Job not found"}, status=404)
        return web.json_response(job)

    def _cancel(self, job_id: str) -> bool:
        queue = self.state.queue

        def interrupt(prompt_id: str) -> bool:
            running, _ = queue.current()
            if any(item[1] == prompt_id for item in running):
                self.state.executor.interrupt()
                return True
            return False

        def dequeue(prompt_id: str) -> bool:
            return queue.delete(lambda item: item[1] == prompt_id)

        running, pending = queue.current()
        outcome = jobs.cancel_job(job_id, running, pending, queue.history, interrupt, dequeue)
        return outcome in (jobs.CANCEL_RUNNING, jobs.CANCEL_PENDING)

    async def cancel_job(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"cancelled": self._cancel(request.match_info["job_id"])})

    async def cancel_jobs(self, request: web.Request) -> web.StreamResponse:
        try:
            json_data = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"error": "Request body must be valid JSON"}, status=400)
        job_ids = json_data.get("job_ids") if isinstance(json_data, dict) else None
        if not isinstance(job_ids, list):
            return web.json_response({"error": "job_ids must be a list"}, status=400)
        invalid = []
        for job_id in job_ids:
            try:
                jobs.validate_job_id(job_id)
            except (ValueError, AttributeError):
                invalid.append(job_id if isinstance(job_id, str) else repr(job_id))
        if invalid:
            return web.json_response(
                {"error": "job_ids contains invalid id(s)", "invalid_ids": invalid}, status=400
            )
        cancelled = False
        for job_id in job_ids:
            if self._cancel(job_id):
                cancelled = True
        return web.json_response({"cancelled": cancelled})
