"""Reusable Click options, defined once and stacked by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def server_option(help_text: str) -> Callable[[F], F]:
    return click.option("--server", "-s", "servers", multiple=True, metavar="NAME|URL",
                        shell_complete=_complete_servers, help=help_text)


def output_format(*choices: str, default: str = "table") -> Callable[[F], F]:
    """Collapse --json/--nl/--csv into one ``fmt`` parameter."""
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
        for choice in reversed(choices):
            func = click.option(flags[choice], "fmt", flag_value=choice,
                                help=helps[choice])(func)
        return click.option("--table", "fmt", flag_value=default, default=True, hidden=True)(
            func)

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


def _complete_servers(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    from click.shell_completion import CompletionItem

    try:
        app = ctx.find_root().obj
        names = sorted(app.config.servers) if app is not None else []
    except Exception:
        return []
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def complete_prompt_ids(ctx: click.Context, param: click.Parameter,
                        incomplete: str) -> list[Any]:
    """Ledger ids, newest first (no network, no heavy imports)."""
    from click.shell_completion import CompletionItem

    try:
        app = ctx.find_root().obj
        records = app.ledger.load().values() if app is not None else []
    except Exception:
        return []
    ordered = sorted(records, key=lambda r: r.get("submitted_at") or "", reverse=True)
    return [CompletionItem(r["prompt_id"], help=f"{r['server']} {r['status']}")
            for r in ordered if r["prompt_id"].startswith(incomplete)]
