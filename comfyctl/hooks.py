"""Telling people and programs that a job ended: ``--exec`` commands and webhooks.

A job's end is announced once, however many processes notice it (two watchers, a watcher
and a cron ``recover``, two hosts on one ledger): the first to notice claims it by writing
``notified`` on the record inside a ledger transaction (``claim``); the others find the
claim and stay quiet. The claim is made before the hooks run, so a crash in between loses
that one announcement rather than sending it twice.

Each hook runs in its own thread, so a slow or hanging hook never holds up following the
other jobs; an ``--exec`` command is killed after its timeout, a webhook is retried with
backoff for a bounded time. What goes wrong is reported through a callback and never
changes the job's record. Webhook URLs and secrets are never put in a message: a hook is
named by its host only.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from comfyctl import __version__
from comfyctl.backoff import Backoff
from comfyctl.liveness import this_process
from comfyctl.records import TERMINAL, now_iso
from comfyctl.render import record_json
from comfyctl.store import Record, Store

log = logging.getLogger("comfyctl.hooks")

DEFAULT_EXEC_TIMEOUT = 60.0
# How long a webhook is retried (connection errors, 5xx) before it is given up.
WEBHOOK_RETRY_FOR = DEFAULT_EXEC_TIMEOUT
WEBHOOK_TIMEOUT = (3.0, 10.0)  # connect, read
OUTPUT_LINES = 20  # of a hook's own output, passed on to the report


@dataclass(frozen=True)
class Webhook:
    """Where to POST a finished job's record. URL and secret are secrets: never shown."""

    url: str = field(repr=False)
    secret: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """What messages call it: the receiving host, never the path (tokens live there)."""
        return f"webhook to {urlsplit(self.url).hostname or '?'}"


@dataclass
class HookOptions:
    exec_command: str | None = None
    exec_timeout: float = DEFAULT_EXEC_TIMEOUT
    webhooks: list[Webhook] = field(default_factory=list)  # given on the command line
    webhook_retry_for: float = WEBHOOK_RETRY_FOR


def claim(ledger: Store, prompt_id: str) -> Record | None:
    """Claim the announcement of a job's end, once per terminal state, across processes.

    In one ledger transaction: when the stored record is terminal and its ``notified``
    claim is absent (or names an earlier terminal state: a lost job its server found
    again), stamp the claim and return the record; else None (not finished, or someone
    else announces it)."""
    seen = ledger.get(prompt_id)  # a lock-free look first: most observers lose the race
    if seen is None or _claimed(seen):
        return None
    with ledger.transaction() as tasks:
        stored = tasks.get(prompt_id)
        if stored is None or stored["status"] not in TERMINAL or _claimed(stored):
            return None
        stored["notified"] = {
            "status": stored["status"],
            "at": now_iso(),
            "by": this_process(),
        }
        tasks.put(stored)
        copy: Record = json.loads(json.dumps(stored))  # a copy the hook threads may keep
        return copy


def _claimed(record: Record) -> bool:
    notified = record.get("notified")
    return isinstance(notified, dict) and notified.get("status") == record["status"]


def hook_env(record: Record) -> dict[str, str]:
    """What an ``--exec`` command finds in its environment about the job."""
    return {
        "COMFYCTL_PROMPT_ID": record["prompt_id"],
        "COMFYCTL_STATUS": record["status"],
        "COMFYCTL_SERVER": record["server"],
        "COMFYCTL_SERVER_URL": record["server_url"],
        "COMFYCTL_OUTPUTS": "\n".join(o["url"] for o in record.get("outputs") or []),
    }


def signature(secret: str, body: bytes) -> str:
    """The ``X-Comfyctl-Signature`` header value: the body's HMAC-SHA256 under the secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Notifier:
    """Claims each finished job once and runs its hooks in background threads."""

    def __init__(
        self,
        ledger: Store,
        options: HookOptions,
        webhooks_for: Callable[[Record], list[Webhook]],
        report: Callable[[str], None],
    ) -> None:
        self.ledger = ledger
        self.options = options
        self.webhooks_for = webhooks_for
        self.report = report
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def _webhooks(self, record: Record) -> list[Webhook]:
        hooks = {h.url: h for h in self.options.webhooks}
        for hook in self.webhooks_for(record):
            hooks.setdefault(hook.url, hook)
        return list(hooks.values())

    def finished(self, record: Record) -> bool:
        """A job reached a terminal state: announce it unless someone already has.
        Returns whether this process claimed it."""
        if record["status"] not in TERMINAL:
            return False
        webhooks = self._webhooks(record)
        if not (self.options.exec_command or webhooks):
            return False  # nothing to announce: leave the claim to a process that has hooks
        claimed = claim(self.ledger, record["prompt_id"])
        if claimed is None:
            return False
        log.info("announcing %s (%s)", claimed["prompt_id"], claimed["status"])
        body = json.dumps(record_json(claimed)).encode()
        if self.options.exec_command:
            self._spawn(self._run_exec, claimed, body)
        for hook in webhooks:
            self._spawn(self._post, hook, claimed, body)
        return True

    def close(self, timeout: float | None = None) -> None:
        """Wait for running hooks (each is bounded by its own timeout), at most ``timeout``
        seconds in all; then stop retrying webhooks. A second call returns at once."""
        end = None if timeout is None else time.monotonic() + timeout
        try:
            for thread in self._threads:
                thread.join(None if end is None else max(0.0, end - time.monotonic()))
        except KeyboardInterrupt:
            pass
        finally:
            self._stop.set()
            self._threads = []

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="hook")
        thread.start()
        self._threads.append(thread)

    # -- --exec --------------------------------------------------------------------------

    def _run_exec(self, record: Record, body: bytes) -> None:
        pid, limit = record["prompt_id"], self.options.exec_timeout
        command = self.options.exec_command
        assert command is not None
        try:
            # Its own session: a timeout kills the whole shell pipeline, not just the shell.
            proc = subprocess.Popen(
                command,
                shell=True,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env={**os.environ, **hook_env(record)},
                start_new_session=True,
            )
        except OSError as exc:
            self.report(f"hook for {pid} could not start: {exc.strerror or exc}")
            return
        try:
            output, _ = proc.communicate(body, timeout=limit)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            self._relay(pid, output)
            self.report(
                f"hook for {pid} was still running after {limit:g}s and was "
                "killed (raise --exec-timeout)"
            )
            return
        self._relay(pid, output)
        if proc.returncode != 0:
            self.report(
                f"hook for {pid} ({record['status']}) exited with {_exit_text(proc.returncode)}"
            )

    def _relay(self, pid: str, output: bytes | None) -> None:
        """The hook's own output goes to comfyctl's messages, never to its data stream."""
        lines = (output or b"").decode("utf-8", "replace").splitlines()
        for line in lines[-OUTPUT_LINES:]:
            self.report(f"hook for {pid}: {line}")

    # -- webhooks ------------------------------------------------------------------------

    def _post(self, hook: Webhook, record: Record, body: bytes) -> None:
        import requests

        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"comfyctl/{__version__}",
            "X-Comfyctl-Event": "job.finished",
            # The same on every retry, so a receiver can drop a repeated delivery.
            "X-Comfyctl-Delivery": f"{record['prompt_id']}:{record['status']}",
        }
        if hook.secret:
            headers["X-Comfyctl-Signature"] = signature(hook.secret, body)
        end = time.monotonic() + self.options.webhook_retry_for
        backoff, attempt = Backoff(0.5, 10.0), 0
        while True:
            attempt += 1
            try:
                resp = requests.post(
                    hook.url,
                    data=body,
                    headers=headers,
                    timeout=WEBHOOK_TIMEOUT,
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                reason = type(exc).__name__
            else:
                if resp.status_code < 300:
                    log.info(
                        "%s: delivered %s (attempt %d)", hook.name, record["prompt_id"], attempt
                    )
                    return
                reason = f"http {resp.status_code}"
                if resp.status_code < 500 and resp.status_code != 429:
                    self.report(
                        f"{hook.name} refused {record['prompt_id']} ({reason}); not retried"
                    )
                    return
            if time.monotonic() + backoff.upcoming > end or self._stop.is_set():
                self.report(
                    f"{hook.name} failed for {record['prompt_id']} after {attempt} "
                    f"attempt(s) ({reason}); given up"
                )
                return
            log.info(
                "%s: %s (%s); retrying in %.1fs",
                hook.name,
                record["prompt_id"],
                reason,
                backoff.upcoming,
            )
            self._stop.wait(backoff.wait())


def _exit_text(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"status {code}"
