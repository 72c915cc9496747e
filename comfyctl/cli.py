"""The command-line entry point: the root group, global options and error rendering.

Commands live in ``comfyctl/commands/``; each is a thin layer over the core. Errors from
the core are rendered once, here, as ``click.ClickException`` with their exit code.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from comfyctl import __version__
from comfyctl.commands import LazyGroup
from comfyctl.errors import ComfyctlError, ExitCode, TerminateSignal, UsageProblem

EXIT_CODES_HELP = """\b
Exit codes: 0 ok · 1 task failed/cancelled/unrecovered or general error ·
2 usage or bad input · 3 server unreachable or not answering · 4 task not in the ledger ·
5 timeout · 6 problems found (detect-stuck, --fail-on-stall) ·
7 ledger corrupt, locked or unreachable · 8 access denied · 9 server error ·
10 bad reply from a server · 11 submit uncertain (id printed; do not resubmit) ·
130 interrupted (Ctrl-C) · 141 stdout closed by its reader (e.g. | head) ·
143 terminated (SIGTERM)."""


class CliError(click.ClickException):
    """A core error as Click renders it: one sentence, a hint, the documented exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # Click reads it per instance


class _ClosedStdin(io.TextIOBase):
    """Stands in for a stdin that was closed (``<&-``): reading it is a usage error, said
    in one sentence, not an AttributeError on None."""

    def _closed(self, *args: object) -> Any:
        raise UsageProblem(
            "stdin is closed, so '-' has nothing to read.",
            "Pipe the input in, or name a file or ids instead of '-'.",
        )

    read = readline = readlines = __next__ = _closed

    @property
    def buffer(self) -> Any:
        return self._closed()


def _quiet_stdout() -> None:
    """The reader of stdout went away (``| head``): point stdout at /dev/null so that
    nothing more, not even the interpreter's last flush, complains about it."""
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


class ComfyctlGroup(LazyGroup):
    def invoke(self, ctx: click.Context) -> Any:
        if sys.stdin is None:  # started with stdin closed
            sys.stdin = _ClosedStdin()
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # A closed stdout ends the command quietly, with the code a shell gives any
            # program that SIGPIPE stops (so `set -o pipefail` sees what it sees for `yes`).
            _quiet_stdout()
            raise click.exceptions.Exit(ExitCode.BROKEN_PIPE) from None
        except ComfyctlError as exc:
            _show_traceback(ctx)
            raise CliError(str(exc), int(exc.exit_code)) from None
        except TerminateSignal:
            _show_traceback(ctx)
            raise CliError("Terminated.", ExitCode.TERMINATED) from None
        except KeyboardInterrupt:
            _show_traceback(ctx)
            raise CliError("Interrupted.", ExitCode.INTERRUPTED) from None
        except OSError as exc:  # e.g. a full disk while writing the ledger
            _show_traceback(ctx)
            where = f" ({exc.filename})" if exc.filename else ""
            raise CliError(f"{exc.strerror or exc}{where}.", ExitCode.FAILED) from None


def _show_traceback(ctx: click.Context) -> None:
    """With --traceback (or COMFYCTL_TRACEBACK=1) print the real exception first; the
    exit code stays the documented one, so scripts behave the same while debugging."""
    if ctx.params.get("traceback") or os.environ.get("COMFYCTL_TRACEBACK") == "1":
        import traceback

        traceback.print_exc(file=sys.stderr)


@click.group(
    cls=ComfyctlGroup,
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, "--version", prog_name="comfyctl")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="COMFYCTL_CONFIG",
    metavar="PATH",
    help="Config file (TOML). Default: the user config dir; env COMFYCTL_CONFIG.",
)
@click.option(
    "--ledger",
    "ledger_path",
    envvar="COMFYCTL_LEDGER",
    metavar="PATH|URL",
    help="Task ledger: a JSON file, or a postgresql:// URL shared by several hosts. "
    "Default: config 'ledger', else the user data dir; env COMFYCTL_LEDGER.",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Log to stderr what comfyctl does (-vv for HTTP details); secrets redacted.",
)
@click.option("--no-color", is_flag=True, help="No colour in output (also when NO_COLOR is set).")
@click.option(
    "--traceback",
    is_flag=True,
    help="Show the full Python traceback on errors (or COMFYCTL_TRACEBACK=1).",
)
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: Path | None,
    ledger_path: str | None,
    verbose: int,
    no_color: bool,
    traceback: bool,
) -> None:
    """Track ComfyUI jobs across a fleet of servers.

    Every job is bound, when it is submitted, to the server that runs it, in a task
    ledger (a JSON file, or a PostgreSQL database that several hosts share). Every
    later command reads that binding and talks to that server only, so jobs on
    different servers never interfere.

    \b
    Examples:
      comfyctl demo                                  # try it on two emulated servers
      comfyctl submit wf.json -s gpu1 | comfyctl watch -
      comfyctl history --status running
    """
    from comfyctl.context import AppContext  # config and ledger: not for --help

    app = AppContext(
        config_path=config_path,
        # A config named by --config or COMFYCTL_CONFIG must exist (a typo must not mean
        # "no servers"); only the default location may be absent.
        config_required=ctx.get_parameter_source("config_path")
        in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT),
        ledger_path=ledger_path,
        verbose=verbose,
        color=not no_color and "NO_COLOR" not in os.environ,
    )
    ctx.obj = app
    if verbose:
        from comfyctl.logs import log_to_stderr

        # Secrets are read when a message is logged: the config may not be readable yet.
        ctx.call_on_close(log_to_stderr(verbose, lambda: app.config.secrets()))


def main(args: list[str] | None = None, prog_name: str | None = None) -> None:
    # SIGTERM ends a command as Ctrl-C does; one its parent ignores stays ignored.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    cli.main(args=args, prog_name=prog_name or "comfyctl")


def _on_sigterm(signum: int, frame: object) -> None:
    _interrupt(TerminateSignal)


def _on_sigint(signum: int, frame: object) -> None:
    _interrupt(KeyboardInterrupt)


def _interrupt(interruption: type[KeyboardInterrupt]) -> None:
    """Raise ``interruption``; or, when the command is waiting for a PostgreSQL ledger, cut
    that wait, which then ends with it (see pgstore.interrupt_waits)."""
    pgstore = sys.modules.get("comfyctl.pgstore")  # loaded only for a PostgreSQL ledger
    if pgstore is None or not pgstore.interrupt_waits(interruption):
        raise interruption()
