"""Reusable Click options, defined once and stacked by name."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def server_option(help_text: str) -> Callable[[F], F]:
    return click.option(
        "--server",
        "-s",
        "servers",
        multiple=True,
        metavar="NAME|URL",
        shell_complete=complete_servers,
        help=help_text,
    )


#: What each output flag means, for the two kinds of command (README's "Output contract").
_FORMAT_HELP = {
    "document": {
        "json": "Print one JSON document: an object with schema, schema_version and a list.",
        "nl": "Print one JSON object per line (the list's items, as they are found).",
        "csv": "Print CSV with a header row.",
    },
    "stream": {
        "json": "Print one JSON object per line, flushed as it happens (a stream).",
        "nl": "The same as --json (a stream is always one object per line).",
    },
    "--wait": {
        "json": "Print one JSON document: an object with schema, schema_version and a list "
        "(with --wait: one object per line, then the events, a stream).",
        "nl": "Print one JSON object per line, as each is found (with --wait, then the events).",
    },
}


def output_format(
    *choices: str, default: str = "table", stream: bool | str = False
) -> Callable[[F], F]:
    """The one output option: --json/--nl/--csv collapse into one ``fmt`` parameter
    ("json", "nl", "csv" or ``default``); more than one is a usage error (rather than one
    silently winning). ``stream``: the command prints as things happen (watch), so --json
    is one object per line too; a flag name (``"--wait"``): only with that flag."""
    kind = stream if isinstance(stream, str) else "stream" if stream else "document"
    helps = _FORMAT_HELP[kind]

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def combined(*args: Any, **kwargs: Any) -> Any:
            given = [c for c in choices if kwargs.pop(f"fmt_{c}")]
            if len(given) > 1:
                raise click.UsageError(
                    f"{' and '.join('--' + c for c in given)} cannot be combined; pick one."
                )
            kwargs["fmt"] = given[0] if given else default
            return func(*args, **kwargs)

        for choice in reversed(choices):
            combined = click.option(
                f"--{choice}", f"fmt_{choice}", is_flag=True, help=helps[choice]
            )(combined)
        return combined  # type: ignore[return-value]

    return decorate


def server_timeout_option(default: float, help_text: str) -> Callable[[F], F]:
    """``--server-timeout``: the bound on each server's round (``deadline``). ``--timeout``
    means "give up after this long" everywhere; here it is still accepted for the per-server
    bound, with a note on stderr, until scripts have moved."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def combined(*args: Any, **kwargs: Any) -> Any:
            old = kwargs.pop("deprecated_timeout")
            if old is not None:
                source = click.get_current_context().get_parameter_source("deadline")
                if source == click.core.ParameterSource.COMMANDLINE:
                    raise click.UsageError(
                        "--timeout and --server-timeout cannot be combined; use --server-timeout."
                    )
                click.echo(
                    "comfyctl: --timeout is deprecated here: it is the per-server "
                    'limit, now spelled --server-timeout (--timeout will mean "give '
                    'up after this long", as in watch).',
                    err=True,
                )
                kwargs["deadline"] = old
            return func(*args, **kwargs)

        combined = click.option(
            "--timeout",
            "deprecated_timeout",
            hidden=True,
            type=click.FloatRange(min=0.1),
            metavar="SECONDS",
            help="Deprecated spelling of --server-timeout.",
        )(combined)
        combined = click.option(
            "--server-timeout",
            "deadline",
            type=click.FloatRange(min=0.1),
            default=default,
            show_default=True,
            metavar="SECONDS",
            help=help_text,
        )(combined)
        return combined  # type: ignore[return-value]

    return decorate


def watch_options(func: F) -> F:
    """Options shared by ``watch`` and ``submit --wait``."""
    decorators = [
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            metavar="SECONDS",
            help="Give up after this long (exit 5), naming the jobs still running.",
        ),
        click.option(
            "--stall-timeout",
            type=click.FloatRange(min=0, min_open=True),
            metavar="SECONDS",
            help="Report a running job whose progress has not moved for this long.",
        ),
        click.option(
            "--fail-on-stall", is_flag=True, help="Exit 6 as soon as a job is reported stalled."
        ),
        click.option(
            "--poll-interval",
            type=click.FloatRange(min=0.05),
            default=2.0,
            show_default=True,
            metavar="SECONDS",
            help="How often each job's server is asked directly (the WebSocket may "
            "miss events; HTTP is the source of truth).",
        ),
        click.option(
            "--download",
            "download_dir",
            type=click.Path(file_okay=False, path_type=None),
            metavar="DIR",
            help="Save each finished job's outputs to DIR/<server>/<subfolder>/<file>.",
        ),
        click.option(
            "--overwrite", is_flag=True, help="With --download, replace files that already exist."
        ),
        click.option(
            "--no-websocket", is_flag=True, help="Only poll over HTTP; do not open WebSockets."
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def hook_options(func: F) -> F:
    """Options shared by ``watch``, ``submit --wait`` and ``recover``: announce each job's end."""
    decorators = [
        click.option(
            "--exec",
            "exec_command",
            metavar="CMD",
            help="Run CMD (through the shell) once for each job that ends, with "
            "COMFYCTL_PROMPT_ID, COMFYCTL_STATUS, COMFYCTL_SERVER, "
            "COMFYCTL_SERVER_URL and COMFYCTL_OUTPUTS set and the job's JSON "
            "record on stdin.",
        ),
        click.option(
            "--exec-timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=60.0,
            show_default=True,
            metavar="SECONDS",
            help="Bound on each hook: an --exec command still running after this "
            "long is killed; a webhook is retried (connection errors, 5xx) with "
            "backoff for this long.",
        ),
        click.option(
            "--webhook",
            "webhooks",
            multiple=True,
            metavar="URL",
            help="POST each ended job's JSON record to URL (repeatable; also "
            "'webhook' in the config), signed with COMFYCTL_WEBHOOK_SECRET "
            "or the config's webhook_secret.",
        ),
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

    return AppContext(
        config_path=root.params.get("config_path"), ledger_path=root.params.get("ledger_path")
    )


def complete_servers(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Server names from the config (no network)."""
    from click.shell_completion import CompletionItem

    try:
        servers = completion_app(ctx).config.servers
    except Exception:  # a broken config must not break the shell
        return []
    return [
        CompletionItem(name, help=servers[name].url)
        for name in sorted(servers)
        if name.startswith(incomplete)
    ]


COMPLETION_LIMIT = 200


def complete_prompt_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Ledger ids, newest first (no network, no heavy imports)."""
    from click.shell_completion import CompletionItem

    try:
        ledger = completion_app(ctx).ledger.load()
        records = list(
            itertools.islice(
                (r for r in ledger.newest() if r["prompt_id"].startswith(incomplete)),
                COMPLETION_LIMIT,
            )
        )
    except Exception:  # an unreadable ledger must not break the shell
        return []
    return [
        CompletionItem(r["prompt_id"], help=f"{r.get('server')} {r.get('status')}") for r in records
    ]
