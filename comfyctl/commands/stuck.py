"""detect-stuck and recover: cron-grade detection and repair (engine: comfyctl.stuck)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from comfyctl.context import AppContext
from comfyctl.errors import (
    ComfyctlError,
    ProblemsFound,
    ServerUnreachable,
    TaskFailed,
)
from comfyctl.options import (
    complete_prompt_ids,
    complete_servers,
    hook_options,
    output_format,
    server_option,
    server_timeout_option,
)
from comfyctl.render import list_document, table
from comfyctl.store import Record

F = TypeVar("F", bound=Callable[..., Any])


def detection_tuning(func: F) -> F:
    """What detection looks for and how long it may take (detect-stuck, recover, metrics)."""
    decorators = [
        click.option(
            "--stall-after",
            type=click.FloatRange(min=0),
            default=30.0,
            show_default=True,
            metavar="SECONDS",
            help="A running job nobody has seen move for longer is stalled (seen by "
            "a watcher, or by this command's listens on earlier runs).",
        ),
        click.option(
            "--max-queue-age",
            type=click.FloatRange(min=0),
            metavar="SECONDS",
            help="Also report jobs still queued this long after submit.",
        ),
        click.option(
            "--listen",
            type=click.FloatRange(min=0),
            default=2.0,
            show_default=True,
            metavar="SECONDS",
            help="Listen this long to each running job no watcher follows (less "
            "when it moves) and record what was heard for the next run; 0 "
            "only reads the ledger.",
        ),
        click.option(
            "--sample",
            type=click.FloatRange(min=0),
            default=0.0,
            metavar="SECONDS",
            help="Listen this long instead and call a job stalled at once if nothing "
            "moved (no comparison with earlier runs).",
        ),
        click.option(
            "--confirm",
            type=click.FloatRange(min=0),
            default=3.0,
            show_default=True,
            metavar="SECONDS",
            help="Listen this long before calling a job stalled from the ledger's "
            "progress age (its watcher may have died); 0 trusts the ledger.",
        ),
        server_timeout_option(
            15.0, "Per-server bound on the status round; slower servers count as unreachable."
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def detection_options(func: F) -> F:
    decorators = [
        click.argument(
            "prompt_ids", nargs=-1, metavar="[PROMPT_ID ...]", shell_complete=complete_prompt_ids
        ),
        server_option("Only jobs bound to this server (repeatable)."),
        detection_tuning,
        output_format("json", "nl"),
        click.option(
            "--quiet", "-q", is_flag=True, help="Print nothing; the exit code says it all."
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def detect_options(deadline: float, acknowledged_lost: bool = False, **tuning: Any) -> Any:
    """DetectOptions from the shared options; each server's round is bounded by
    ``deadline`` (and a little more for the whole round)."""
    from comfyctl.stuck import DetectOptions

    return DetectOptions(deadline=deadline + 1.0, acknowledged_lost=acknowledged_lost, **tuning)


def _select(app: AppContext, prompt_ids: tuple[str, ...], servers: tuple[str, ...]) -> list[Record]:
    ledger = app.ledger.load()
    # Without ids: unfinished jobs, and lost ones not yet resubmitted.
    return app.jobs_on(servers, ledger.find_all(prompt_ids) if prompt_ids else ledger.unsettled())


def _detect(
    app: AppContext,
    prompt_ids: tuple[str, ...],
    servers: tuple[str, ...],
    deadline: float,
    acknowledged_lost: bool = False,
    acknowledged_forgotten: bool = False,
    **tuning: Any,
) -> Any:
    """Run detection with the shared options (``tuning``: stall_after, max_queue_age,
    sample, confirm); each server's round is bounded by ``deadline``."""
    from comfyctl.stuck import detect

    app.timeout = deadline
    options = detect_options(
        deadline, acknowledged_lost, acknowledged_forgotten=acknowledged_forgotten, **tuning
    )
    return detect(app.ledger, _select(app, prompt_ids, servers), app.client_for_record, options)


@click.command("detect-stuck", short_help="Find stalled, lost and unnoticed jobs.")
@detection_options
@click.pass_obj
def detect_command(
    app: AppContext,
    /,
    prompt_ids: tuple[str, ...],
    servers: tuple[str, ...],
    deadline: float,
    fmt: str,
    quiet: bool,
    **tuning: Any,
) -> None:
    """Find jobs that stalled, were lost, or finished while nobody was listening.

    Every unfinished job in the ledger (or the ids given) is checked on its own bound
    server only, with one status round per server, all servers at once. Conditions:
    finished-unnoticed, failed-unnoticed, stalled, lost (the server restarted, with
    proof), forgotten (the server does not know it and nothing proves a restart: its
    history or queue entry was deleted), blocked (queued behind a job comfyctl did
    not submit, running longer than --stall-after), queued-too-long (with
    --max-queue-age) and unreachable. What each run hears is recorded, so runs from
    cron spaced --stall-after apart find stalls with no watcher running. Only
    sightings are written; outcomes are left to 'recover', except that a job already
    resubmitted elsewhere that its server still has is cancelled there.
    Exit 0 when all is well, 6 when anything is found, 3 when every server is down.

    \b
    Examples:
      comfyctl detect-stuck
      comfyctl detect-stuck --stall-after 120 --nl | jq -r .prompt_id
      */5 * * * *  comfyctl detect-stuck --quiet || comfyctl recover --resubmit
    """
    result = _detect(app, prompt_ids, servers, deadline, **tuning)
    if not quiet:
        _print_findings(result.findings, result.checked, fmt)
    if result.all_unreachable:
        _fail(
            quiet,
            ServerUnreachable(
                ", ".join(sorted({f.record["server"] for f in result.findings})),
                "every bound server is unreachable",
            ),
        )
    if result.findings:
        _fail(
            quiet,
            ProblemsFound(
                f"{len(result.findings)} problem(s) among {result.checked} unfinished job(s).",
                "Run 'comfyctl recover' to repair them.",
            ),
        )
    if not quiet and fmt == "table":
        click.echo(f"comfyctl: {result.checked} unfinished job(s) checked, no problems.", err=True)


def _fail(quiet: bool, error: ComfyctlError) -> NoReturn:
    """Raise ``error``; with --quiet only its exit code survives."""
    if quiet:
        raise click.exceptions.Exit(int(error.exit_code))
    raise error


def _print_findings(findings: list[Any], checked: int, fmt: str) -> None:
    from comfyctl.render import FINDING_SCHEMA

    if fmt == "json":
        click.echo(
            json.dumps(
                list_document(
                    FINDING_SCHEMA, "findings", [f.to_json() for f in findings], checked=checked
                ),
                indent=2,
            )
        )
    elif fmt == "nl":
        for finding in findings:
            click.echo(json.dumps(finding.to_json()))
    elif findings:
        rows = [
            [f.record["prompt_id"], f.record["server"], f.condition, f.detail] for f in findings
        ]
        click.echo(table(("prompt_id", "server", "condition", "evidence"), rows))


@click.command("recover", short_help="Repair what detect-stuck finds.")
@detection_options
@click.option(
    "--resubmit",
    is_flag=True,
    help="Resubmit lost jobs (and, with --interrupt-stalled, stalled ones) from the "
    "stored workflow, once, with lineage both ways.",
)
@click.option(
    "--resubmit-forgotten",
    is_flag=True,
    help="Also resubmit forgotten jobs (the server does not know them and nothing "
    "proves it restarted: they may have finished). Never implied.",
)
@click.option(
    "--to",
    "to_server",
    metavar="NAME|URL",
    shell_complete=complete_servers,
    help="Resubmit to this server instead of the job's own (failover).",
)
@click.option(
    "--interrupt-stalled",
    is_flag=True,
    help="Cancel stalled jobs on their own server the safe way.",
)
@click.option(
    "--download",
    "download_dir",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Save the outputs of recovered successful jobs to DIR/<server>/...",
)
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@hook_options
@click.pass_obj
def recover_command(
    app: AppContext,
    /,
    prompt_ids: tuple[str, ...],
    servers: tuple[str, ...],
    deadline: float,
    fmt: str,
    quiet: bool,
    resubmit: bool,
    resubmit_forgotten: bool,
    to_server: str | None,
    interrupt_stalled: bool,
    download_dir: str | None,
    dry_run: bool,
    exec_command: str | None,
    exec_timeout: float,
    webhooks: tuple[str, ...],
    **tuning: Any,
) -> None:
    """Repair what detect-stuck finds, each job on its own bound server.

    finished-unnoticed: record success and outputs. failed-unnoticed: record the
    server's error. lost: mark lost, or with --resubmit send the stored workflow
    again (once, however often recover runs; linked by superseded_by and
    resubmitted_from). forgotten: mark lost (error type forgotten), or resend only
    with --resubmit-forgotten. blocked: report. stalled: report, or cancel with --interrupt-stalled.
    unreachable: left alone unless --to and --resubmit move it. Overlapping runs
    never act twice on one job. Exit 0 when every problem was resolved, else 1.

    \b
    Examples:
      comfyctl recover --dry-run
      comfyctl recover --resubmit --download out/
      comfyctl recover --resubmit --to gpu2 --json
      comfyctl recover --exec ./notify.sh          # announce jobs it settles

    --exec and --webhook announce each job a repair leaves ended (once, also when a
    watcher noticed it first).
    """
    from comfyctl.commands.follow import make_notifier
    from comfyctl.stuck import Repairer, RepairOptions, plan

    options = RepairOptions(
        resubmit=resubmit,
        resubmit_forgotten=resubmit_forgotten,
        interrupt_stalled=interrupt_stalled,
        to=app.config.resolve(to_server) if to_server else None,
        dry_run=dry_run,
    )
    result = _detect(
        app,
        prompt_ids,
        servers,
        deadline,
        acknowledged_lost=resubmit,
        acknowledged_forgotten=resubmit_forgotten,
        **tuning,
    )
    actions = plan(result.findings, options)
    failed_downloads = None
    if not dry_run:
        notifier = make_notifier(
            app,
            exec_command,
            exec_timeout,
            webhooks,
            lambda message: click.echo(f"comfyctl: {message}", err=True),
        )
        repairer = Repairer(
            app.ledger,
            app.client_for_record,
            app.client,
            app.spec_for_record,
            notifier.finished,
            app.uploader(),
        )
        try:
            actions = repairer.run_all(actions, options)
        finally:
            notifier.close()
        if download_dir:
            failed_downloads = _download(
                app,
                [a.finding.record for a in actions if a.resolved and a.action == "record-success"],
                Path(download_dir),
            )
    if not quiet:
        from comfyctl.render import ACTION_SCHEMA

        items = [{**action.to_json(), "dry_run": dry_run} for action in actions]
        if fmt == "json":
            click.echo(
                json.dumps(
                    list_document(
                        ACTION_SCHEMA, "actions", items, checked=result.checked, dry_run=dry_run
                    ),
                    indent=2,
                )
            )
        elif fmt == "nl":
            for item in items:
                click.echo(json.dumps(item))
        elif actions:
            rows = [
                [
                    a.finding.record["prompt_id"],
                    a.finding.record["server"],
                    a.finding.condition,
                    a.action,
                    "planned" if dry_run else ("done" if a.resolved else "open"),
                    a.detail,
                ]
                for a in actions
            ]
            click.echo(
                table(("prompt_id", "server", "condition", "action", "result", "detail"), rows)
            )
        else:
            click.echo(
                f"comfyctl: {result.checked} unfinished job(s) checked, nothing to recover.",
                err=True,
            )
    open_items = [a for a in actions if dry_run or not a.resolved]
    if open_items:
        _fail(
            quiet,
            TaskFailed(
                f"{len(open_items)} problem(s) remain" + (" (dry run)." if dry_run else ".")
            ),
        )
    if failed_downloads is not None:
        _fail(quiet, failed_downloads)


def _download(app: AppContext, records: list[Record], root: Path) -> ComfyctlError | None:
    from comfyctl.commands.history import download_all

    return download_all(app, records, root, overwrite=False)


commands = [detect_command, recover_command]
