"""Typed errors raised by the core, each carrying its documented exit code.

The core raises these and never prints or exits; ``cli.py`` renders each one once, with
its exit code. Messages are one sentence; ``hint`` says what to do next.
Messages never contain secrets: they are built from canonical server URLs only.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """The documented exit codes (README's table is checked against this)."""

    OK = 0
    FAILED = 1  # a task failed, was cancelled or stays unrecovered; or a general error
    USAGE = 2  # usage error or bad input
    UNREACHABLE = 3  # server unreachable, or it did not answer in time
    NOT_FOUND = 4  # task not in the ledger
    TIMEOUT = 5  # gave up waiting (--timeout)
    PROBLEMS = 6  # detect-stuck found problems; watch --fail-on-stall
    LEDGER = 7  # ledger corrupt, locked or unreachable
    ACCESS_DENIED = 8  # the server refused our credentials (HTTP 401/403/407)
    SERVER_ERROR = 9  # the server answered with an error (HTTP 5xx or unexpected status)
    BAD_REPLY = 10  # the server answered, but not as ComfyUI does (a proxy's page, ...)
    UNCERTAIN = 11  # a job may or may not be queued; its id is printed and kept
    INTERRUPTED = 130  # Ctrl-C
    TERMINATED = 143  # SIGTERM (kill): ended as Ctrl-C ends it
    BROKEN_PIPE = 141  # stdout's reader went away (| head): ended quietly, as SIGPIPE would


class ComfyctlError(Exception):
    exit_code: int = ExitCode.FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} {self.hint}"


class UsageProblem(ComfyctlError):
    exit_code = ExitCode.USAGE


class ConfigError(UsageProblem):
    pass


class UnknownServer(UsageProblem):
    pass


class WorkflowInvalid(UsageProblem):
    pass


class InputRejected(UsageProblem):
    """An input file that cannot go to the server: unreadable, too large, refused."""


class WorkflowProblems(UsageProblem):
    """``validate`` / ``submit --check`` found problems (each one is printed as data)."""

    def __init__(self, message: str, problems: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.problems = problems


class ServerError(ComfyctlError):
    """A server could not be asked, or did not answer as ComfyUI does. Callers decide on
    the subclass, never on ``reason`` (a few words for people: refused, timeout, http 502)."""

    exit_code = ExitCode.UNREACHABLE
    what = "failed"

    def __init__(self, server: str, reason: str, hint: str | None = None) -> None:
        super().__init__(f"Server {server} {self.what} ({reason}).", hint)
        self.server = server
        self.reason = reason


class ServerUnreachable(ServerError):
    """No connection was made (refused, DNS, TLS, connect timeout): nothing was sent."""

    what = "is unreachable"


class ServerTimeout(ServerError):
    """Connected, but no whole answer came: it timed out, or the connection was cut.
    The request may have reached the server."""

    what = "did not answer"


class AccessDenied(ServerError):
    """HTTP 401/403/407: the server (or a proxy in front) refused our credentials."""

    exit_code = ExitCode.ACCESS_DENIED
    what = "denied access"

    def __init__(self, server: str, reason: str, hint: str | None = None) -> None:
        super().__init__(
            server,
            reason,
            hint or "Check the server's username/password, token or headers in the config.",
        )


class ServerFailed(ServerError):
    """The server answered with an HTTP error (5xx, or a status ComfyUI does not use)."""

    exit_code = ExitCode.SERVER_ERROR
    what = "answered with an error"


class SubmitFailed(ServerFailed):
    """A submit whose reply was lost, and the server, asked, does not have the job."""

    what = "did not queue the job"


class BadServerReply(ServerError):
    """The server answered, but not as ComfyUI would (malformed JSON, HTML from a proxy)."""

    exit_code = ExitCode.BAD_REPLY
    what = "sent a reply ComfyUI would not send"


class SubmitUncertain(ComfyctlError):
    """A job's request may have reached its server, and the server could not be asked
    since: it may be queued. The record stays (``submitting``) and is settled on the next
    contact; the job must not be sent anywhere else. ``record`` is that write-ahead record."""

    exit_code = ExitCode.UNCERTAIN

    def __init__(
        self,
        server: str,
        reason: str,
        record: dict[str, Any] | None = None,
        hint: str | None = None,
    ) -> None:
        pid = f" of {record['prompt_id']}" if record else ""
        super().__init__(
            f"The submit{pid} to server {server} is uncertain ({reason}): the server may "
            "have queued it.",
            hint
            or "It stays in the ledger and is settled when a command reaches the "
            "server again (e.g. 'comfyctl watch'); do not submit it again.",
        )
        self.server = server
        self.reason = reason
        self.record = record


class SubmitUnrecorded(SubmitUncertain):
    """The server queued the job, and the ledger could not record it: the write-ahead
    record stays (``submitting``), to be settled on the next contact, as an uncertain one."""

    def __init__(self, server: str, record: dict[str, Any], why: str) -> None:
        super().__init__(
            server,
            "queued, but not recorded",
            record,
            "Its write-ahead record (submitting) stays and is settled once a command reaches "
            f"both the ledger and the server (e.g. 'comfyctl watch {record['prompt_id']}'); "
            "do not submit it again.",
        )
        self.message = (
            f"Server {server} queued {record['prompt_id']}, but the ledger could not record "
            f"it ({why.rstrip('.')})."
        )


class WorkflowRejected(ComfyctlError):
    """The server refused the workflow (HTTP 4xx), with its node_errors."""

    exit_code = ExitCode.FAILED

    def __init__(
        self, server: str, error: dict[str, Any], node_errors: dict[str, Any], status: int
    ) -> None:
        detail = str(error.get("message") or error.get("type") or f"HTTP {status}")
        super().__init__(f"Server {server} rejected the workflow: {detail.rstrip('. ')}.")
        self.error = error
        self.node_errors = node_errors
        self.status = status


class TaskNotFound(ComfyctlError):
    exit_code = ExitCode.NOT_FOUND

    def __init__(self, prompt_id: str) -> None:
        super().__init__(
            f"No task {prompt_id!r} in the ledger.",
            "Run 'comfyctl history' to list known tasks, or check --ledger.",
        )
        self.prompt_id = prompt_id


class WaitTimeout(ComfyctlError):
    exit_code = ExitCode.TIMEOUT


class TaskFailed(ComfyctlError):
    exit_code = ExitCode.FAILED


class Interrupted(ComfyctlError):
    """Ctrl-C during a long wait; the message says what is still running where."""

    exit_code = ExitCode.INTERRUPTED


class Terminated(Interrupted):
    """SIGTERM during a long wait (see TerminateSignal)."""

    exit_code = ExitCode.TERMINATED


class TerminateSignal(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so that everything Ctrl-C cleans up (leases,
    pending ledger writes, hooks) is cleaned up the same way."""


class ProblemsFound(ComfyctlError):
    exit_code = ExitCode.PROBLEMS


class LedgerError(ComfyctlError):
    exit_code = ExitCode.LEDGER


class LedgerCorrupt(LedgerError):
    def __init__(self, path: object, why: str) -> None:
        super().__init__(
            f"The ledger {path} is unreadable ({why}); it was left untouched.",
            "Move it aside or restore a backup, or point --ledger at another file.",
        )


class LedgerLocked(LedgerError):
    def __init__(self, path: object, waited: float) -> None:
        super().__init__(
            f"The ledger {path} stayed locked for {waited:.0f}s by another comfyctl process.",
            "Retry later, or raise COMFYCTL_LOCK_TIMEOUT.",
        )


class LedgerInaccessible(LedgerError):
    """The ledger's file or folder cannot be reached: under a regular file, a folder that
    cannot be made, no permission."""

    def __init__(self, path: object, why: str) -> None:
        super().__init__(
            f"The ledger {path} cannot be used: {why}.",
            "Check the path and its permissions, or point --ledger at another file.",
        )


class LedgerUnavailable(LedgerError):
    """The ledger database cannot be reached, or refuses our credentials."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(
            f"The ledger database {where} cannot be used ({reason}).",
            "Check the URL, that the database server runs, and the credentials "
            "(the URL's password or PGPASSWORD).",
        )
        self.reason = reason


class LedgerInterrupted(LedgerUnavailable):
    """The database's connection was lost during a call (a restart, mostly): nothing of
    the call took effect, and the store reconnects on the next one. A caller whose
    writes can be made again (watch's) tries once more instead of ending."""
