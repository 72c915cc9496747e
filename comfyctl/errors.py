"""Typed errors raised by the core, each carrying its documented exit code.

The core raises these and never prints or exits; the CLI renders each one once
(see ``cli.main``). Messages are one sentence; ``hint`` says what to do next.
Messages never contain secrets: they are built from canonical server URLs only.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # a task failed, was cancelled or stays unrecovered; or a general error
    USAGE = 2  # usage error or bad input
    UNREACHABLE = 3  # server unreachable
    NOT_FOUND = 4  # task not in the ledger
    TIMEOUT = 5
    PROBLEMS = 6  # detect-stuck found problems; watch --fail-on-stall
    LEDGER = 7  # ledger corrupt or locked
    INTERRUPTED = 130  # Ctrl-C


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


class ServerUnreachable(ComfyctlError):
    """The server could not be asked. ``reason`` is short: refused, timeout, tls, http 502, ..."""

    exit_code = ExitCode.UNREACHABLE

    def __init__(self, server: str, reason: str, hint: str | None = None) -> None:
        super().__init__(f"Server {server} is unreachable ({reason}).", hint)
        self.server = server
        self.reason = reason


class BadServerReply(ServerUnreachable):
    """The server answered, but not as ComfyUI would (malformed JSON, HTML from a proxy, ...)."""


class SubmitUncertain(ServerUnreachable):
    """The request may have reached the server: the reply was lost (timeout or reset)."""


class WorkflowRejected(ComfyctlError):
    """The server refused the workflow (HTTP 4xx), with its node_errors."""

    exit_code = ExitCode.FAILED

    def __init__(self, server: str, error: dict, node_errors: dict, status: int) -> None:
        detail = error.get("message") or error.get("type") or f"HTTP {status}"
        super().__init__(f"Server {server} rejected the workflow: {detail}.")
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
