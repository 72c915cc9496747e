"""Talking to one ComfyUI server: HTTP through requests, WebSockets through ``comfyctl.ws``.

One ``ServerClient`` per bound server. Every call about a job goes through the client
of that job's server, so a request about job J can only reach J's server. Auth headers,
basic auth, the query token, TLS settings and timeouts come from the ``ServerSpec``;
error messages name the canonical URL only, never a token or header.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import requests

from comfyctl import ws
from comfyctl.backoff import Backoff
from comfyctl.config import ServerSpec
from comfyctl.errors import (
    AccessDenied,
    BadServerReply,
    InputRejected,
    ServerError,
    ServerFailed,
    ServerTimeout,
    ServerUnreachable,
    SubmitUncertain,
    WorkflowRejected,
)
from comfyctl.events import from_history_entry, from_job, prompt_extra
from comfyctl.records import Observation

log = logging.getLogger("comfyctl.client")

RETRY_STATUSES = {502, 503, 504}
DENIED_STATUSES = {401, 403, 407}
# Below this many unqueued ids, /history/{id} per job is cheaper than the whole /history.
HISTORY_PER_ID_LIMIT = 3
JOBS_PAGE = 100000  # one page: ComfyUI keeps at most 10,000 history entries
RECENT_HISTORY = 64  # how far back the recent end of /history is read
TARGETED_INTERRUPT_SINCE = (0, 3, 56)  # the first release after PR #9607 (2025-08-28)
PER_SERVER_REQUESTS = 4  # concurrent read requests to one server
T = TypeVar("T")


@dataclass
class SubmitReply:
    prompt_id: str
    number: int | None
    node_errors: dict[str, Any] = field(default_factory=dict)


@dataclass
class QueueItem:
    number: int
    prompt_id: str
    client_id: str | None


@dataclass
class QueueSnapshot:
    running: list[QueueItem]
    pending: list[QueueItem]  # sorted by number: the order the server will run them


class ServerClient:
    def __init__(self, spec: ServerSpec, session: requests.Session | None = None) -> None:
        self.spec = spec
        self.url = spec.url
        self._session = session
        self._session_lock = threading.Lock()
        self._jobs_api: bool | None = None
        self._targeted: bool | None = None

    # -- plumbing ------------------------------------------------------------------------

    @property
    def session(self) -> requests.Session:
        with self._session_lock:  # the poll and fetch threads may both ask first
            return self._make_session()

    def _make_session(self) -> requests.Session:
        if self._session is None:
            session = requests.Session()
            session.headers.update(self.spec.headers)
            session.headers["User-Agent"] = "comfyctl"
            if self.spec.username is not None:
                session.auth = (self.spec.username, self.spec.password or "")
            # What requests takes from the environment (proxies and NO_PROXY, a CA bundle,
            # ~/.netrc) is read here once, not again for every request (~1 ms each).
            session.trust_env = False
            session.proxies = requests.utils.get_environ_proxies(self.url)
            if session.auth is None:
                session.auth = requests.utils.get_netrc_auth(self.url)
            session.verify = self.spec.verify
            if self.spec.verify is True:
                bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
                session.verify = bundle or True
            if self.spec.verify is False:  # the config asked for it; don't warn per request
                import urllib3

                urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
            self._session = session
        return self._session

    def _params(self, params: dict[str, Any] | None = None) -> dict[str, Any]:
        merged = dict(params or {})
        if self.spec.token:
            merged[self.spec.token_param] = self.spec.token
        return merged

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        retries: int = 0,
        timeout: float | None = None,
        stream: bool = False,
        data: dict[str, str] | None = None,
        files: dict[str, Any] | None = None,
    ) -> requests.Response:
        """One HTTP exchange. ServerUnreachable when no connection was made (nothing was
        sent), ServerTimeout when the answer did not come whole, BadServerReply when it
        came broken; an HTTP status is the caller's to judge.

        ``retries`` is for idempotent reads only: refused connections and 502/503/504
        are retried with backoff; a timeout is not (a hanging server stays hanging).
        """
        read_timeout = timeout if timeout is not None else self.spec.timeout
        attempt, backoff = 0, Backoff(0.4, 3.2)
        while True:
            try:
                resp = self.session.request(
                    method,
                    self.url + path,
                    json=json_body,
                    params=self._params(params),
                    data=data,
                    files=files,
                    timeout=(self.spec.connect_timeout, read_timeout),
                    stream=True,
                )
                if not stream:
                    _read_body(resp, time.monotonic() + read_timeout)
            except requests.exceptions.RequestException as exc:
                error = self._failure(exc)
                log.debug("%s %s%s -> %s", method, self.url, path, error.reason)
                # A read may be retried when nothing was sent, or the connection was cut
                # (not when it timed out: a hanging server stays hanging).
                again = isinstance(error, ServerUnreachable) or (
                    isinstance(error, ServerTimeout)
                    and not isinstance(exc, requests.exceptions.Timeout)
                )
                if again and attempt < retries:
                    attempt += 1
                    time.sleep(backoff.wait())
                    continue
                raise error from None
            except _SlowBody:
                log.debug("%s %s%s -> too slow", method, self.url, path)
                raise ServerTimeout(self.spec.name, "timeout") from None
            log.debug("%s %s%s -> %s", method, self.url, path, resp.status_code)
            if resp.status_code in RETRY_STATUSES and attempt < retries:
                attempt += 1
                time.sleep(backoff.wait())
                continue
            return resp

    def _failure(self, exc: requests.exceptions.RequestException) -> ServerError:
        """The typed error for what requests raised, decided on exception types only."""
        name = self.spec.name
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return ServerUnreachable(name, "connect timeout")  # never connected: never sent
        if isinstance(exc, requests.exceptions.SSLError):
            return ServerUnreachable(name, "tls", "Check verify/CA bundle in the config.")
        if isinstance(exc, requests.exceptions.Timeout):
            return ServerTimeout(name, "timeout")
        if isinstance(
            exc,
            (
                requests.exceptions.InvalidURL,
                requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema,
            ),
        ):
            return ServerUnreachable(name, "invalid URL")
        if isinstance(exc, requests.exceptions.ConnectionError):
            return _connection_failure(name, exc)
        return BadServerReply(name, f"the reply was cut off ({type(exc).__name__})")

    def _http_error(self, resp: requests.Response, what: str = "") -> ServerError:
        """The typed error for an HTTP status the caller did not expect."""
        reason = f"http {resp.status_code}{what}"
        if resp.status_code in DENIED_STATUSES:
            return AccessDenied(self.spec.name, reason)
        return ServerFailed(self.spec.name, reason)

    def get_json(
        self, path: str, params: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        resp = self.request("GET", path, params=params, retries=2, timeout=timeout)
        if resp.status_code != 200:
            raise self._http_error(resp)
        return self._decode(resp)

    def _decode(self, resp: requests.Response) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise BadServerReply(self.spec.name, "malformed JSON reply") from None

    # -- submit --------------------------------------------------------------------------

    def submit(
        self, graph: dict[str, Any], client_id: str, prompt_id: str, front: bool = False
    ) -> SubmitReply:
        """POST /prompt once. Never retried here: see ``Submitter``.

        ServerUnreachable only when the request certainly never left (no connection was
        made); SubmitUncertain whenever it may have reached the server and no proper
        answer came (timeout, a cut connection, a 5xx, a 200 that is not ComfyUI's JSON).
        """
        body: dict[str, Any] = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        if front:
            body["front"] = True
        try:
            resp = self.request("POST", "/prompt", json_body=body)
        except ServerUnreachable:
            raise
        except ServerError as exc:
            raise SubmitUncertain(self.spec.name, exc.reason) from None
        if resp.status_code == 200:
            try:
                data = self._decode(resp)
            except BadServerReply:
                data = None
            if not isinstance(data, dict) or not isinstance(data.get("prompt_id"), str):
                # A 200 means the server took it: ComfyUI queues before it answers.
                raise SubmitUncertain(self.spec.name, "HTTP 200 without ComfyUI's JSON reply")
            return SubmitReply(data["prompt_id"], data.get("number"), data.get("node_errors") or {})
        if resp.status_code in DENIED_STATUSES:
            raise self._http_error(resp)  # refused in front of ComfyUI: not queued
        if 400 <= resp.status_code < 500:
            data = {}
            if resp.status_code == 400:  # ComfyUI's only refusal of a prompt
                try:
                    data = resp.json()
                except ValueError:
                    data = {}
                data = data if isinstance(data, dict) else {}
            if not isinstance(data.get("error"), dict):
                # Refused by something that is not ComfyUI's /prompt (a wrong path prefix,
                # a proxy's limit): nothing was queued. Its body is not shown: a proxy's
                # page may echo secrets.
                raise ServerFailed(
                    self.spec.name,
                    f"http {resp.status_code} for POST /prompt",
                    "Nothing was queued: check the server's URL and its path prefix."
                    if resp.status_code in (404, 405)
                    else "Nothing was queued: the answer did not come from ComfyUI "
                    "(a proxy in front?).",
                )
            node_errors = data.get("node_errors")
            raise WorkflowRejected(
                self.spec.name,
                data["error"],
                node_errors if isinstance(node_errors, dict) else {},
                resp.status_code,
            )
        raise SubmitUncertain(self.spec.name, f"http {resp.status_code}")

    def find_by_client_ids(self, client_ids: Collection[str]) -> dict[str, str]:
        """The prompt_ids a server gave the jobs submitted with ``client_ids`` (servers
        older than client-chosen ids ignore ours), for those found (client_id ->
        prompt_id): one read of the queue, then, for the rest, one of the recent history, and
        of the whole history when there may be more (what is not found is taken for never
        sent, and may be sent again). Servers with the jobs API take the client's ids."""
        wanted = set(client_ids)
        found: dict[str, str] = {}
        if not wanted or self.has_jobs_api():
            return found
        queue = self.queue()
        for item in queue.running + queue.pending:
            if item.client_id in wanted:
                found[item.client_id] = item.prompt_id
        if wanted - found.keys():
            history = self.history(max_items=RECENT_HISTORY)
            if len(history) >= RECENT_HISTORY:
                history = self.history()  # this once (a rare case): up to 10,000 entries
            for prompt_id, entry in history.items():
                prompt = entry.get("prompt") if isinstance(entry, dict) else None
                client_id = prompt_extra(prompt).get("client_id")
                if client_id in wanted and client_id not in found:
                    found[client_id] = str(prompt_id)
        return found

    def execution_messages(self, prompt_id: str) -> list[Any] | None:
        """The server's own record of a finished run ([name, {..., timestamp}] pairs:
        execution_start, execution_cached, execution_success/error/interrupted); None
        while the job is not finished or the server does not keep them."""
        if self.has_jobs_api():
            job = self.job(prompt_id) or {}
            status = job.get("execution_status") or {}
        else:
            status = (self.history_entry(prompt_id) or {}).get("status") or {}
        messages = status.get("messages") if isinstance(status, dict) else None
        return messages if isinstance(messages, list) else None

    # -- status --------------------------------------------------------------------------

    def has_jobs_api(self) -> bool:
        """Feature-detect the jobs API of newer ComfyUI (cached per client)."""
        if self._jobs_api is None:
            resp = self.request("GET", "/api/jobs", params={"limit": 1}, retries=2)
            if resp.status_code == 200:
                try:
                    self._jobs_api = isinstance(resp.json(), dict)
                except ValueError:
                    self._jobs_api = False
            elif resp.status_code in (404, 405):
                self._jobs_api = False
            else:
                raise self._http_error(resp)
        return self._jobs_api

    def queue(self) -> QueueSnapshot:
        data = self.get_json("/queue")
        if not isinstance(data, dict):
            raise BadServerReply(self.spec.name, "/queue reply is not an object")
        return QueueSnapshot(
            running=_queue_items(data.get("queue_running")),
            pending=sorted(_queue_items(data.get("queue_pending")), key=lambda i: i.number),
        )

    def history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        """The /history entry of a finished job; None while pending, running or unknown."""
        data = self.get_json(f"/history/{_quote(prompt_id)}")
        if not isinstance(data, dict):
            raise BadServerReply(self.spec.name, "/history reply is not an object")
        entry = data.get(prompt_id)
        return entry if isinstance(entry, dict) else None

    def history(self, max_items: int | None = None) -> dict[str, Any]:
        data = self.get_json("/history", params={"max_items": max_items} if max_items else None)
        if not isinstance(data, dict):
            raise BadServerReply(self.spec.name, "/history reply is not an object")
        return data

    def job(self, prompt_id: str) -> dict[str, Any] | None:
        resp = self.request("GET", f"/api/jobs/{_quote(prompt_id)}", retries=2)
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._http_error(resp)
        data = self._decode(resp)
        return data if isinstance(data, dict) else None

    def status(self, prompt_id: str) -> Observation:
        return self.snapshot([prompt_id])[prompt_id]

    def snapshot(self, prompt_ids: list[str]) -> dict[str, Observation]:
        """What the server says about each id, in as few requests as the API allows.

        The queue is read before the history, never the reverse: a job that finishes
        between the two reads then shows up in the history instead of nowhere.
        """
        wanted = list(dict.fromkeys(prompt_ids))
        if not wanted:
            return {}
        if self.has_jobs_api():
            return self._snapshot_jobs(wanted)
        found: dict[str, Observation] = {}
        queue = self.queue()
        for item in queue.running:
            if item.prompt_id in wanted:
                found[item.prompt_id] = Observation(
                    "running", item.prompt_id, self.url, number=item.number
                )
        for position, item in enumerate(queue.pending):
            if item.prompt_id in wanted and item.prompt_id not in found:
                found[item.prompt_id] = Observation(
                    "queued", item.prompt_id, self.url, number=item.number, position=position
                )
        rest = [pid for pid in wanted if pid not in found]
        entries: dict[str, Any] = {}
        missing = rest
        if len(rest) > HISTORY_PER_ID_LIMIT:
            # The recent end of the history holds most of them; a whole /history can be
            # 10,000 entries with their graphs, too heavy for a busy shared server.
            window = 2 * len(rest) + RECENT_HISTORY
            recent = self.history(max_items=window)
            entries = {pid: recent[pid] for pid in rest if pid in recent}
            # A window that came back short was the whole history: the rest are unknown.
            missing = [] if len(recent) < window else [p for p in rest if p not in entries]
        entries.update(zip(missing, self._each(self.history_entry, missing), strict=True))
        for pid in rest:
            entry = entries.get(pid)
            found[pid] = (
                from_history_entry(entry, self.url, pid)
                if isinstance(entry, dict)
                else Observation("unknown", pid, self.url)
            )
        return found

    def _each(self, ask: Callable[[str], T], ids: list[str]) -> list[T]:
        """``ask`` for each id, a few at a time (read-only requests to this one server); the
        first failure in ``ids`` order is raised.

        Daemon threads, not a ThreadPoolExecutor: Python joins an executor's workers at
        exit, so a server hanging mid-read would keep comfyctl up after Ctrl-C (or after
        the end) for the rest of its read timeout."""
        if len(ids) <= 1:
            return [ask(pid) for pid in ids]
        answers: dict[int, T] = {}
        failures: dict[int, BaseException] = {}
        todo = iter(enumerate(ids))
        lock = threading.Lock()

        def work() -> None:
            while True:
                with lock:
                    item = next(todo, None)
                    if item is None or failures:
                        return
                index, prompt_id = item
                try:
                    answer = ask(prompt_id)
                except BaseException as exc:  # raised in the caller's thread below
                    with lock:
                        failures[index] = exc
                    return
                with lock:
                    answers[index] = answer

        workers = [
            threading.Thread(target=work, daemon=True, name=f"read {self.spec.name}")
            for _ in range(min(PER_SERVER_REQUESTS, len(ids)))
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if failures:
            raise failures[min(failures)]
        return [answers[index] for index in range(len(ids))]

    def _snapshot_jobs(self, wanted: list[str]) -> dict[str, Observation]:
        """Jobs API: the single-job route for a few ids; for more, one unfiltered listing
        (status filters differ between versions: the first one rejects "cancelled") and
        the single-job route only for completed and cancelled jobs (it alone carries the
        outputs, and the messages that tell an interrupt from a cancel)."""
        if len(wanted) <= HISTORY_PER_ID_LIMIT:
            listed: dict[str, dict[str, Any]] = {}
            details = wanted
        else:
            listed = {str(job.get("id")): job for job in self._list_jobs()}
            details = [
                pid
                for pid in wanted
                if (listed.get(pid) or {}).get("status") in ("completed", "cancelled")
            ]
        jobs = dict(zip(details, self._each(self.job, details), strict=True))
        found = {}
        for pid in wanted:
            job = jobs[pid] if pid in jobs else listed.get(pid)
            found[pid] = (
                from_job(job, self.url)
                if job is not None
                else Observation("unknown", pid, self.url)
            )
        return found

    def _list_jobs(self) -> list[dict[str, Any]]:
        data = self.get_json("/api/jobs", params={"limit": JOBS_PAGE})
        jobs = data.get("jobs") if isinstance(data, dict) else None
        if not isinstance(jobs, list):
            raise BadServerReply(self.spec.name, "/api/jobs reply has no jobs list")
        return [job for job in jobs if isinstance(job, dict)]

    # -- steering ------------------------------------------------------------------------

    def cancel(self, prompt_id: str, allow_interrupt: bool = True) -> str:
        """Cancel one job the safest way this server allows; returns how.

        Jobs-API cancel; else delete it from the pending queue; else interrupt it by
        prompt_id only when it is verifiably the running job. Never a global interrupt.
        Without ``allow_interrupt`` a running job is left running ("running").
        """
        # The jobs-API cancel interrupts a job that started meanwhile, so a cancel that must
        # not interrupt goes through the queue, whose delete never does.
        if allow_interrupt and self.has_jobs_api():
            resp = self.request("POST", f"/api/jobs/{_quote(prompt_id)}/cancel")
            if resp.status_code == 200:
                reply = self._decode(resp)
                cancelled = reply.get("cancelled", True) if isinstance(reply, dict) else True
                return "jobs-api" if cancelled else "not-active"
            if resp.status_code not in (404, 405):
                raise self._http_error(resp)
            if self.job(prompt_id) is None:
                return "not-found"
            # The job exists but this server has no cancel route: use the queue.
        queue = self.queue()
        if any(item.prompt_id == prompt_id for item in queue.pending):
            self._post_ok("/queue", {"delete": [prompt_id]})
            queue = self.queue()  # it may have started meanwhile: ComfyUI then ignores the delete
            if not any(item.prompt_id == prompt_id for item in queue.running):
                return "dequeued"
        if any(item.prompt_id == prompt_id for item in queue.running):
            if not allow_interrupt:
                return "running"
            if not self.targets_interrupts():
                return "unsafe-interrupt"
            resp = self.request("POST", "/interrupt", json_body={"prompt_id": prompt_id})
            if resp.status_code == 404:  # some builds say so when it is no longer running
                return "not-active"
            if resp.status_code != 200:
                raise self._http_error(resp)
            return "interrupted"
        return "not-active"

    def targets_interrupts(self) -> bool:
        """Whether POST /interrupt honours a prompt_id (ComfyUI PR #9607, August 2025).
        Older servers ignore the body and interrupt whatever runs at that instant."""
        if self._targeted is None:
            version = (self.system_stats().get("system") or {}).get("comfyui_version")
            numbers = re.findall(r"\d+", str(version or ""))[:3]
            self._targeted = (
                len(numbers) == 3 and tuple(int(n) for n in numbers) >= TARGETED_INTERRUPT_SINCE
            )
        return self._targeted

    def _post_ok(self, path: str, body: dict[str, Any]) -> None:
        resp = self.request("POST", path, json_body=body)
        if resp.status_code != 200:
            raise self._http_error(resp)

    # -- misc ----------------------------------------------------------------------------

    def system_stats(self) -> dict[str, Any]:
        data = self.get_json("/system_stats")
        return data if isinstance(data, dict) else {}

    def object_info(self) -> dict[str, Any]:
        """GET /object_info: every node class the server has, with its input specs."""
        data = self.get_json("/object_info")
        if not isinstance(data, dict):
            raise BadServerReply(self.spec.name, "/object_info reply is not an object")
        return data

    def upload_input(self, filename: str, content: Any, subfolder: str = "") -> tuple[str, str]:
        """POST /upload/image with type=input, never overwrite: returns the (name,
        subfolder) the server stored it under (it renames on a clash with other content,
        and reuses a file with the same name and content)."""
        fields = {"type": "input", "subfolder": subfolder}
        resp = self.request(
            "POST", "/upload/image", data=fields, files={"image": (filename, content)}
        )
        if resp.status_code == 200:
            reply = self._decode(resp)
            if not isinstance(reply, dict) or not isinstance(reply.get("name"), str):
                raise BadServerReply(self.spec.name, "/upload/image reply has no name")
            return reply["name"], str(reply.get("subfolder") or "")
        if resp.status_code in DENIED_STATUSES:
            raise self._http_error(resp)
        if resp.status_code == 413:
            raise InputRejected(
                f"Server {self.spec.name} refused {filename}: larger than its "
                "upload limit (HTTP 413).",
                "Raise the server's --max-upload-size, or send a smaller file.",
            )
        if 400 <= resp.status_code < 500:
            raise InputRejected(
                f"Server {self.spec.name} refused the upload of {filename} "
                f"(HTTP {resp.status_code})."
            )
        raise self._http_error(resp, " for /upload/image")

    def input_size(self, name: str, subfolder: str = "") -> int | None:
        """Size of a file in the server's input folder (HEAD /view), None when absent."""
        params = {"filename": name, "subfolder": subfolder, "type": "input"}
        resp = self.request("HEAD", "/view", params=params, retries=2)
        if resp.status_code != 200:
            return None
        try:
            return int(resp.headers.get("Content-Length", ""))
        except ValueError:
            return None

    def view(self, output: dict[str, Any], stream: bool = True) -> requests.Response:
        """GET /view for one output entry (filename, subfolder, type) on this server."""
        params = {
            "filename": output["filename"],
            "subfolder": output.get("subfolder", ""),
            "type": output.get("type", "output"),
        }
        resp = self.request("GET", "/view", params=params, retries=2, stream=stream)
        if resp.status_code != 200:
            resp.close()
            raise self._http_error(resp, f" for /view of {output['filename']!r}")
        return resp

    def ws_url(self, client_id: str) -> str:
        base = "wss" + self.url[5:] if self.url.startswith("https") else "ws" + self.url[4:]
        return f"{base}/ws?{urlencode(self._params({'clientId': client_id}))}"

    def connect_ws(self, client_id: str, timeout: float | None = None) -> ws.WebSocket:
        """A WebSocket connected as ``client_id`` (ComfyUI sends a job's events only there),
        with the auth, TLS settings and proxy of this server's HTTP requests."""
        # Merged as requests merges them for HTTP: names match in any case, the configured
        # headers over comfyctl's, basic auth over a configured Authorization.
        headers = requests.structures.CaseInsensitiveDict({"User-Agent": "comfyctl"})
        headers.update(self.spec.headers)
        if self.spec.username is not None:
            raw = f"{self.spec.username}:{self.spec.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        try:
            return ws.connect(
                self.ws_url(client_id),
                headers,
                timeout or self.spec.connect_timeout,
                self._tls_context if self.url.startswith("https") else None,
                self._proxy,
            )
        except ssl.SSLError:
            raise ServerUnreachable(self.spec.name, "tls") from None
        except ws.WebSocketError as exc:
            raise ServerUnreachable(self.spec.name, f"websocket: {exc.reason}") from None
        except OSError as exc:
            raise ServerUnreachable(self.spec.name, f"websocket: {type(exc).__name__}") from None

    @functools.cached_property
    def _tls_context(self) -> ssl.SSLContext:
        """The WebSocket's TLS settings, as requests applies ``verify`` to HTTP."""
        context, verify = ssl.create_default_context(), self.session.verify
        if verify is False:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        elif isinstance(verify, str):  # a CA bundle file, or a folder of them
            if os.path.isdir(verify):
                context.load_verify_locations(capath=verify)
            else:
                context.load_verify_locations(cafile=verify)
        return context

    @functools.cached_property
    def _proxy(self) -> str | None:
        """The proxy requests uses for this server (HTTPS_PROXY, HTTP_PROXY, NO_PROXY)."""
        proxies = self.session.proxies
        scheme = "https" if self.url.startswith("https") else "http"
        return proxies.get(scheme) or proxies.get("all")


class _SlowBody(Exception):
    pass


def _read_body(resp: requests.Response, deadline: float) -> None:
    """Read the whole body by ``deadline``. requests' read timeout bounds each read, not
    the reply: a server dripping a byte at a time would otherwise hold us forever."""
    chunks = []
    for chunk in resp.iter_content(chunk_size=65536):
        chunks.append(chunk)
        if time.monotonic() > deadline:
            resp.close()
            raise _SlowBody
    resp._content = b"".join(chunks)  # what requests itself fills in for non-stream replies
    resp._content_consumed = True  # type: ignore[attr-defined]


def new_client_id() -> str:
    return f"comfyctl-{uuid.uuid4().hex}"


def new_prompt_id() -> str:
    return str(uuid.uuid4())


def _quote(text: str) -> str:
    return quote(text, safe="")


def _connection_failure(server: str, exc: requests.exceptions.ConnectionError) -> ServerError:
    """Whether a connection was ever made, read from the exceptions urllib3 chains: only
    a failure to connect (NewConnectionError: refused, DNS, ...) proves nothing was sent."""
    import urllib3.exceptions

    causes = _causes(exc)
    if any(isinstance(c, urllib3.exceptions.NewConnectionError) for c in causes):
        if any(isinstance(c, ConnectionRefusedError) for c in causes):
            return ServerUnreachable(server, "refused")
        if any(
            isinstance(c, (urllib3.exceptions.NameResolutionError, socket.gaierror)) for c in causes
        ):
            return ServerUnreachable(server, "dns")
        return ServerUnreachable(server, "connection failed")
    return ServerTimeout(server, "connection cut")


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything it wraps (urllib3's ``reason``, args, causes, contexts)."""
    found: list[BaseException] = []
    stack: list[Any] = [exc]
    while stack:
        item = stack.pop()
        if not isinstance(item, BaseException) or any(item is f for f in found):
            continue
        found.append(item)
        stack += [getattr(item, "reason", None), item.__cause__, item.__context__, *item.args]
    return found


def _queue_items(raw: Any) -> list[QueueItem]:
    items = []
    for entry in raw if isinstance(raw, list) else []:
        if isinstance(entry, list) and len(entry) >= 2 and isinstance(entry[1], str):
            number = entry[0] if isinstance(entry[0], (int, float)) else 0
            items.append(QueueItem(int(number), entry[1], prompt_extra(entry).get("client_id")))
    return items
