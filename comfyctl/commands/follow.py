"""Following jobs to the end, shared by ``watch`` and ``submit --wait``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from comfyctl.errors import (
    ComfyctlError,
    Interrupted,
    ProblemsFound,
    TaskFailed,
    Terminated,
    TerminateSignal,
    UsageProblem,
    WaitTimeout,
)

if TYPE_CHECKING:  # the rest is imported when a job is followed: `watch --<TAB>` needs none
    from comfyctl.context import AppContext
    from comfyctl.hooks import Notifier
    from comfyctl.store import Record


@dataclass
class FollowOptions:
    timeout: float | None
    stall_timeout: float | None
    fail_on_stall: bool
    poll_interval: float
    download_dir: str | None
    overwrite: bool
    no_websocket: bool
    exec_command: str | None = None
    exec_timeout: float = 60.0
    webhooks: tuple[str, ...] = ()
    fmt: str = "text"  # "json" events, "text" lines, or "stderr": text lines on stderr

    @classmethod
    def from_params(cls, params: dict[str, Any], fmt: str) -> FollowOptions:
        return cls(**{n: params[n] for n in FOLLOW_PARAMS}, fmt=fmt)


# The options of watch_options and hook_options (comfyctl.options), by parameter name.
FOLLOW_PARAMS = (
    "timeout",
    "stall_timeout",
    "fail_on_stall",
    "poll_interval",
    "download_dir",
    "overwrite",
    "no_websocket",
    "exec_command",
    "exec_timeout",
    "webhooks",
)


def follow_options_given(ctx: click.Context) -> list[str]:
    """The following options given on the command line or by the environment (for a
    command that follows only when asked to: submit without --wait)."""
    given = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    return [
        param.opts[0]
        for param in ctx.command.params
        if param.name in FOLLOW_PARAMS and ctx.get_parameter_source(param.name) in given
    ]


def make_notifier(
    app: AppContext,
    exec_command: str | None,
    exec_timeout: float,
    webhooks: tuple[str, ...],
    report: Callable[[str], None],
) -> Notifier:
    """The hooks of one run: --exec, --webhook URLs (signed with COMFYCTL_WEBHOOK_SECRET or
    the config's webhook_secret) and the webhooks the config names."""
    from comfyctl.hooks import HookOptions, Notifier, Webhook

    secret = os.environ.get("COMFYCTL_WEBHOOK_SECRET") or app.config.webhook_secret
    for url in webhooks:
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise UsageProblem(f"--webhook needs an http(s) URL, not {url[:40]!r}.")
    options = HookOptions(
        exec_command=exec_command,
        exec_timeout=exec_timeout,
        webhook_retry_for=exec_timeout,
        webhooks=[Webhook(url, secret) for url in webhooks],
    )
    return Notifier(app.ledger, options, app.webhooks_for, report)


class _StallExit(Exception):
    pass


def follow(app: AppContext, records: list[Record], opts: FollowOptions) -> None:
    """Watch ``records`` until each is terminal; raise the documented error otherwise."""
    from comfyctl.commands.history import download_all
    from comfyctl.records import FAILED, SUCCESS, TERMINAL
    from comfyctl.render import LiveArea, event_json, live_area_wanted, state_line
    from comfyctl.tracker import Tracker, TrackerEvent, WatchOptions

    if opts.no_websocket and opts.stall_timeout:
        raise UsageProblem(
            "--stall-timeout needs progress, which only the WebSocket gives.",
            "Drop --no-websocket, or use 'comfyctl detect-stuck' later.",
        )
    # Plain lines only when stderr is no terminal or one without cursor movement.
    live = LiveArea(sys.stderr, app.color) if live_area_wanted(sys.stderr) else None
    stalled: list[Record] = []
    failed_downloads: list[ComfyctlError] = []

    # Lines wait here until the tracker has handled all it heard, then go out in one
    # write: one system call per wake-up, not per line, even when stdout is unbuffered.
    waiting: list[str] = []

    def emit(line: str) -> None:
        if live is not None:
            live.print_above(line, sys.stdout)
        else:
            waiting.append(line)

    def write_waiting() -> None:
        if waiting:
            sys.stdout.write("\n".join(waiting) + "\n")
            waiting.clear()
        sys.stdout.flush()

    def tell(message: str) -> None:
        line = f"comfyctl: {message}"
        if live is not None:
            live.print_above(line, sys.stderr)
        else:
            click.echo(line, err=True)

    notifier = make_notifier(app, opts.exec_command, opts.exec_timeout, opts.webhooks, tell)

    def on_event(event: TrackerEvent) -> None:
        record = event.record
        if event.kind == "queued":  # for the live area only: not a state change
            if live is not None and record is not None:
                live.queue_position(record, None if event.position is None else event.position + 1)
            return
        if opts.fmt == "json":
            emit(event_json(event.kind, record, event.server, event.detail))
        elif event.kind in ("state", "stalled") and record is not None:
            line = state_line(record, event.detail if event.kind == "stalled" else None)
            # "stderr": stdout is kept for one document printed afterwards (demo --json).
            if opts.fmt == "stderr":
                tell(line)
            else:
                emit(line)
        elif event.kind == "server":
            tell(f"server {event.server} is {event.detail}")
        if event.kind == "server" and live is not None and event.server is not None:
            detail = event.detail or ""
            live.server_state(
                event.server,
                not detail.startswith("unreachable"),
                detail.removeprefix("unreachable (").removesuffix(")"),
            )
        if record is not None and live is not None:
            live.update(record, force=event.kind == "state")
        if event.kind == "stalled" and record is not None:
            stalled.append(record)
            if opts.fail_on_stall:
                raise _StallExit
        if (
            event.kind == "state"
            and record is not None
            and record["status"] == SUCCESS
            and opts.download_dir
        ):
            write_waiting()  # the job's line before its download's messages, not after it
            failed = download_all(app, [record], Path(opts.download_dir), opts.overwrite, tell)
            if failed is not None:
                failed_downloads.append(failed)

    # Already finished jobs are reported at once, from the ledger.
    try:
        for record in records:
            if record["status"] in TERMINAL:
                on_event(TrackerEvent("state", record))
                notifier.finished(record)  # announced unless someone already did
    finally:
        write_waiting()  # also when a download or Ctrl-C ends it
    if live is not None:
        for record in records:
            live.update(record)  # pending jobs show from the start, not at their first event
    tracker = Tracker(
        app.ledger,
        [r for r in records if r["status"] not in TERMINAL],
        app.client_for_record,
        WatchOptions(
            poll_interval=opts.poll_interval,
            timeout=opts.timeout,
            stall_timeout=opts.stall_timeout,
            use_websocket=not opts.no_websocket,
        ),
        on_event,
        notifier.finished,
        write_waiting,
    )
    try:
        tracker.run()
    except TimeoutError:
        raise WaitTimeout(f"Timed out; {_unfinished(tracker.active())}.") from None
    except _StallExit:
        raise ProblemsFound(
            f"Stalled: {_where(stalled)}.", "Inspect with 'comfyctl history ID' or cancel it."
        ) from None
    except KeyboardInterrupt as signal_:
        # Ctrl-C does not wait out the hooks: a running --exec command goes on in its own
        # session, an unfinished webhook delivery is dropped after a moment.
        notifier.close(timeout=2.0)
        error = Terminated if isinstance(signal_, TerminateSignal) else Interrupted
        raise error(
            f"{error.__name__}; {_unfinished(tracker.active())}.", "Resume with 'comfyctl watch'."
        ) from None
    finally:
        notifier.close()  # the hooks of jobs that ended still run to their own end
        if live is not None:
            live.close()
    failed = [r for r in records if r["status"] in FAILED]
    if failed:
        raise TaskFailed(
            f"{len(failed)} of {len(records)} job(s) did not succeed: "
            f"{_where(failed, with_status=True)}."
        )
    if failed_downloads:
        raise (
            failed_downloads[0]
            if len(failed_downloads) == 1
            else TaskFailed(f"Downloads failed for {len(failed_downloads)} job(s); see above.")
        )


def _where(records: list[Record], with_status: bool = False) -> str:
    if not records:
        return "none"
    parts = [
        f"{r['prompt_id']} on {r['server']}" + (f" ({r['status']})" if with_status else "")
        for r in records[:10]
    ]
    more = f" and {len(records) - 10} more" if len(records) > 10 else ""
    return ", ".join(parts) + more


def _unfinished(records: list[Record]) -> str:
    """What is left, running and queued named apart (a queued job is not running)."""
    from comfyctl.records import RUNNING

    running = [r for r in records if r["status"] == RUNNING]
    waiting = [r for r in records if r["status"] != RUNNING]
    parts = [f"running: {_where(running)}"] if running or not waiting else []
    if waiting:
        parts.append(f"pending: {_where(waiting)}")
    return "; ".join(parts)
