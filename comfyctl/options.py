"""Reusable Click options, defined once and stacked by name."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def server_option(help_text: str) -> Callable[[F], F]:
    return click.option("--server", "-s", "servers", multiple=True, metavar="NAME|URL",
                        shell_complete=complete_servers, help=help_text)


def output_format(*choices: str, default: str = "table") -> Callable[[F], F]:
    """Collapse --json/--nl/--csv into one ``fmt`` parameter; more than one is a usage error
    (rather than one silently winning)."""
    flags = {
        "json": "--json",
        "nl": "--nl",
        "csv": "--csv",
    }
    helps = {
        "json": "Print JSON for scripts (one document, or one object per line for streams).",
        "nl": "Print one JSON object per line.",
        "csv": "Print CSV with a header row.",
    }

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def combined(*args: Any, **kwargs: Any) -> Any:
            given = [flags[c] for c in choices if kwargs.pop(f"fmt_{c}")]
            if len(given) > 1:
                raise click.UsageError(f"{' and '.join(given)} cannot be combined; pick one.")
            kwargs["fmt"] = given[0][2:] if given else default
            return func(*args, **kwargs)

        for choice in reversed(choices):
            combined = click.option(flags[choice], f"fmt_{choice}", is_flag=True,
                                    help=helps[choice])(combined)
        return combined  # type: ignore[return-value]

    return decorate


def watch_options(func: F) -> F:
    """Options shared by ``watch`` and ``submit --wait``."""
    decorators = [
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
                     help="Give up after this long (exit 5), naming the jobs still running."),
        click.option("--stall-timeout", type=click.FloatRange(min=0, min_open=True),
                     metavar="SECONDS",
                     help="Report a running job whose progress has not moved for this long."),
        click.option("--fail-on-stall", is_flag=True,
                     help="Exit 6 as soon as a job is reported stalled."),
        click.option("--poll-interval", type=click.FloatRange(min=0.05), default=2.0,
                     show_default=True, metavar="SECONDS",
                     help="How often each job's server is asked directly (the WebSocket may "
                          "miss events; HTTP is the source of truth)."),
        click.option("--download", "download_dir",
                     type=click.Path(file_okay=False, path_type=None), metavar="DIR",
                     help="Save each finished job's outputs to DIR/<server>/<subfolder>/<file>."),
        click.option("--overwrite", is_flag=True,
                     help="With --download, replace files that already exist."),
        click.option("--no-websocket", is_flag=True,
                     help="Only poll over HTTP; do not open WebSockets."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def hook_options(func: F) -> F:
    """Options shared by ``watch``, ``submit --wait`` and ``recover``: announce each job's end."""
    decorators = [
        click.option("--exec", "exec_command", metavar="CMD",
                     help="Run CMD (through the shell) once for each job that ends, with "
                          "COMFYCTL_PROMPT_ID, COMFYCTL_STATUS, COMFYCTL_SERVER, "
                          "COMFYCTL_SERVER_URL and COMFYCTL_OUTPUTS set and the job's JSON "
                          "record on stdin."),
        click.option("--exec-timeout", type=click.FloatRange(min=0, min_open=True),
                     default=60.0, show_default=True, metavar="SECONDS",
                     help="Bound on each hook: an --exec command still running after this "
                          "long is killed; a webhook is retried (connection errors, 5xx) with "
                          "backoff for this long."),
        click.option("--webhook", "webhooks", multiple=True, metavar="URL",
                     help="POST each ended job's JSON record to URL (repeatable; also "
                          "'webhook' in the config), signed with COMFYCTL_WEBHOOK_SECRET "
                          "or the config's webhook_secret."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def completion_app(ctx: click.Context) -> Any:
    """The AppContext for a completion callback.

    During TAB completion Click parses without running the group callback, so the root
    has no ``obj``; build one from the root's already-parsed ``--config``/``--ledger``
    (or their env vars). Building it reads nothing; the callbacks read only what they use.
    """
    root = ctx.find_root()
    if root.obj is not None:
        return root.obj
    from comfyctl.context import AppContext  # imported here: options sit below context

    return AppContext(config_path=root.params.get("config_path"),
                      ledger_path=root.params.get("ledger_path"))


def complete_servers(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Server names from the config (no network)."""
    from click.shell_completion import CompletionItem

    try:
        servers = completion_app(ctx).config.servers
    except Exception:  # a broken config must not break the shell
        return []
    return [CompletionItem(name, help=servers[name].url) for name in sorted(servers)
            if name.startswith(incomplete)]


COMPLETION_LIMIT = 200


def complete_prompt_ids(ctx: click.Context, param: click.Parameter,
                        incomplete: str) -> list[Any]:
    """Ledger ids, newest first (no network, no heavy imports)."""
    from click.shell_completion import CompletionItem

    try:
        ledger = completion_app(ctx).ledger.load()
        ids = itertools.islice((pid for pid in ledger.newest_first()
                                if pid.startswith(incomplete)), COMPLETION_LIMIT)
        records = [ledger[pid] for pid in ids]  # parse only what is shown
    except Exception:  # an unreadable ledger must not break the shell
        return []
    return [CompletionItem(r["prompt_id"], help=f"{r.get('server')} {r.get('status')}")
            for r in records]
