"""``Emulator``: one emulated ComfyUI server running in a background thread.

The aiohttp app, the worker and the WebSocket fan-out all live on the thread's own event
loop; the public methods are called from any other thread and block until done.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from comfyctl.emulator.faults import Faults
from comfyctl.emulator.nodes import DEFAULT_MODELS, Directories
from comfyctl.emulator.server import MAX_UPLOAD_SIZE, ComfyServer

T = TypeVar("T")

_CALL_TIMEOUT = 15.0


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, reuse_port=False)


class Emulator:
    """A faithful stand-in for one ComfyUI server (see the package docstring).

    ``output_dir=None`` gives the emulator its own temporary directory (output, input and
    temp folders), removed by :meth:`stop`. A given ``output_dir`` is used as is and kept;
    the input and temp folders then live in a private temporary directory.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        jobs_api: bool = False,
        output_dir: str | Path | None = None,
        max_upload_size: int = MAX_UPLOAD_SIZE,
    ) -> None:
        self.host = host
        self.jobs_api = jobs_api
        self.faults = Faults()
        self._requested_port = port
        self._port: int | None = None
        self._scratch = Path(tempfile.mkdtemp(prefix="comfyui-emulator-"))
        # Removed by stop(), or at interpreter exit / garbage collection if stop() never ran
        # (the serving thread holds a reference, so never while serving).
        self._remove_scratch = weakref.finalize(self, shutil.rmtree, str(self._scratch), True)
        output = Path(output_dir) if output_dir is not None else self._scratch / "output"
        self.output_dir = output.resolve()
        self.input_dir = self._scratch / "input"
        self.temp_dir = self._scratch / "temp"
        #: ``models/<folder>/`` (checkpoints, loras...): the files listed in ``/object_info``
        #: and accepted by validation. Add or remove files to give servers different models.
        self.models_dir = self._scratch / "models"
        for folder in (self.output_dir, self.input_dir, self.temp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for kind, names in DEFAULT_MODELS.items():
            (self.models_dir / kind).mkdir(parents=True, exist_ok=True)
            for name in names:
                (self.models_dir / kind / name).touch()
        self._server = ComfyServer(
            faults=self.faults,
            jobs_api=jobs_api,
            dirs=Directories(self.output_dir, self.input_dir, self.temp_dir, self.models_dir),
            host=host,
            max_upload_size=max_upload_size,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Every HTTP request answered, as "METHOD /path" (no /api prefix), counted.
        self.requests = self._server.requests
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False

    # -- properties ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the emulator is not started")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :] + "/ws"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Emulator:
        """Bind, serve in a background thread, return once the port accepts connections."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("a stopped emulator cannot be started again")
            if self._thread is not None:
                return self
            sock = _listen(self.host, self._requested_port)
            self._port = sock.getsockname()[1]
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._thread = threading.Thread(
                target=self._serve,
                args=(loop,),
                name=f"comfyui-emulator-{self._port}",
                daemon=True,
            )
            self._thread.start()
            try:
                self._call(self._server.start(sock))
            except BaseException:
                sock.close()
                self._halt_loop()
                self._loop = self._thread = self._port = None
                raise
        return self

    def stop(self) -> None:
        """Close every connection, stop the thread, remove the private temp directory.
        Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            if self._loop is not None and self._thread is not None:
                try:
                    self._call(self._server.shutdown())
                finally:
                    self._halt_loop()
            self._remove_scratch()

    def restart(self) -> None:
        """Like killing and starting ComfyUI again on the same port: the queue, the
        running job, history, the cache and every WebSocket are gone, ``number`` starts
        at 0 again; files in the output folder stay."""
        with self._lock:
            self._require_running()

            async def bounce() -> None:
                await self._server.shutdown()
                await self._server.start(_listen(self.host, self.port))

            self._call(bounce())

    def drop_websockets(self) -> None:
        """Cut every open WebSocket now (no close frame). Running jobs keep running."""
        self._require_running()
        self._call_sync(self._server.drop_websockets)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until nothing is queued or running and every message has been sent."""
        self._require_running()
        deadline = time.monotonic() + timeout
        while not self._call_sync(self._server.is_idle):
            if time.monotonic() > deadline:
                raise TimeoutError(f"emulator not idle after {timeout} s")
            time.sleep(0.01)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not started"
        return f"<Emulator {where} jobs_api={self.jobs_api}>"

    # -- internals -----------------------------------------------------------------------

    def _require_running(self) -> None:
        if self._loop is None or self._stopped:
            raise RuntimeError("the emulator is not running")

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _halt_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=_CALL_TIMEOUT)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CALL_TIMEOUT)

    def _call_sync(self, func: Callable[[], T]) -> T:
        async def run() -> T:
            return func()

        return self._call(run())
