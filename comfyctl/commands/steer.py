"""cancel and debug-tasks: steering and inspecting jobs on their own servers."""

from __future__ import annotations

import json
from typing import Any

import click

from comfyctl.context import AppContext
from comfyctl.errors import TaskFailed, UsageProblem
from comfyctl.options import (
    complete_prompt_ids,
    output_format,
    server_option,
    server_timeout_option,
)
from comfyctl.render import CANCEL_SCHEMA, human_age, list_document, short_id, table


@click.command("cancel", short_help="Cancel jobs on their own server, safely.")
@click.argument(
    "prompt_ids", nargs=-1, metavar="[PROMPT_ID ...]", shell_complete=complete_prompt_ids
)
@click.option(
    "--all-pending",
    is_flag=True,
    help="Cancel every job the ledger has as pending (never interrupts a running one).",
)
@server_option("With --all-pending: only jobs bound to this server (repeatable).")
@output_format("json", "nl")
@click.pass_obj
def cancel_command(
    app: AppContext,
    prompt_ids: tuple[str, ...],
    all_pending: bool,
    servers: tuple[str, ...],
    fmt: str,
) -> None:
    """Cancel jobs on their own bound server, the safest way that server allows.

    The jobs-API cancel where the server has it; else the job is deleted from the
    pending queue; else, only when it is verifiably the running job, it is
    interrupted by prompt_id. Never a global interrupt, never another server.
    Finished jobs are reported and left alone. A unique prefix of an id (4+
    characters, as tables show) acts exactly like the full id. Exit 1 when a job
    named could not be cancelled (it had finished, or could not be stopped safely,
    or its server no longer knows it: then 'detect-stuck' and 'recover' settle it).

    \b
    Examples:
      comfyctl cancel 3f2c9a1e-...
      comfyctl cancel --all-pending --server gpu2
    """
    from comfyctl.jobs import cancel, cancel_targets

    if not prompt_ids and not all_pending:
        raise UsageProblem("Give prompt ids to cancel, or --all-pending.")
    on_servers = app.on_servers(servers)
    targets, named = cancel_targets(app.ledger.load(), prompt_ids, all_pending, on_servers)
    unreachable, not_cancelled, unknown = [], [], []
    results: list[dict[str, Any]] = []
    for target in targets:
        # Only a job named may be interrupted; --all-pending never interrupts.
        done = cancel(
            app.ledger, target, app.client_for_record, allow_interrupt=target["prompt_id"] in named
        )
        results.append(_report(done.record, done.what, fmt))
        if done.error is not None:
            unreachable.append(done.error)
        elif done.record["prompt_id"] not in named:
            continue  # --all-pending's: each said on its line; exit 1 is for jobs named
        elif done.unknown:
            unknown.append(done.record)
        elif not done.stopped:
            not_cancelled.append(done.record)
    if fmt == "json":  # one document, also when something could not be cancelled
        click.echo(json.dumps(list_document(CANCEL_SCHEMA, "results", results), indent=2))
    if unreachable:
        raise unreachable[0]
    if not_cancelled or unknown:
        why = [f"{r['prompt_id']} ({r['status']})" for r in not_cancelled]
        why += [f"{r['prompt_id']} (unknown to {r['server']})" for r in unknown]
        raise TaskFailed(
            f"{len(why)} of the {len(named)} job(s) named could not be cancelled: "
            + ", ".join(why[:10])
            + (f" and {len(why) - 10} more" if len(why) > 10 else "")
            + ".",
            "Run 'comfyctl detect-stuck' to see whether a restart lost the unknown ones, "
            "then 'comfyctl recover' to settle them."
            if unknown
            else None,
        )


def _report(record: dict[str, Any], what: str, fmt: str) -> dict[str, Any]:
    """One job's result: printed at once as a line (table, --nl), kept for --json."""
    item = {
        **CANCEL_SCHEMA,
        "prompt_id": record["prompt_id"],
        "server": record["server"],
        "server_url": record["server_url"],
        "status": record["status"],
        "result": what,
    }
    if fmt == "nl":
        click.echo(json.dumps(item))
    elif fmt == "table":
        click.echo(f"{record['prompt_id']}\t{record['server']}\t{what}")
    return item


@click.command("debug-tasks", short_help="Show servers, active jobs and anomalies.")
@server_option("Only this server (repeatable).")
@server_timeout_option(
    5.0, "Bound on each server's probe; slower servers show as unreachable (timeout)."
)
@output_format("json")
@click.pass_obj
def debug_command(app: AppContext, servers: tuple[str, ...], deadline: float, fmt: str) -> None:
    """Show the whole fleet: servers, active jobs and anything odd.

    Per server (configured ones plus any the ledger binds jobs to): reachable or not
    and why, latency, ComfyUI version, the server's own running/pending counts, the
    ledger's counts by status, and the oldest active job. Per active job: binding,
    status, last progress and its age, queue position. Then anomalies: jobs bound to
    a server no longer configured or whose URL changed, jobs their server does not
    know (lost-in-restart only with proof, see 'detect-stuck'), jobs comfyctl did
    not submit that run while ours wait (foreign-job-blocking), jobs running
    unusually long, resubmitted jobs whose original ran anyway (ran-twice, shown for a
    week). All servers are probed at once, each bounded by --server-timeout.

    \b
    Examples:
      comfyctl debug-tasks
      comfyctl debug-tasks --server gpu1 --json | jq .anomalies
    """
    from comfyctl.fleet import fleet_report
    from comfyctl.supersede import originals, reap_servers

    app.timeout = deadline
    only = {s.url for s in app.servers(servers)} if servers else None
    reap_servers(
        app.ledger, app.client_for_record, app.jobs_on(servers, originals(app.ledger)), deadline
    )
    report = fleet_report(
        app.config,
        app.jobs_on(servers, app.ledger.load().values()),
        app.client,
        app.spec_for_record,
        deadline + 0.5,
        only,
    )
    if fmt == "json":
        click.echo(json.dumps(report, indent=2))
        return
    rows = [
        [
            s["name"],
            s["url"],
            "yes" if s["reachable"] else f"no ({s['reason']})",
            f"{s['latency_ms']:.0f}ms" if s["latency_ms"] is not None else "-",
            s["version"] or "-",
            _pair(s["server_running"], s["server_pending"]),
            ", ".join(f"{k}={v}" for k, v in sorted(s["ledger_counts"].items())) or "-",
            (
                f"{short_id(s['oldest_active'])} ({human_age(s['oldest_active_age_s'])})"
                if s["oldest_active"]
                else "-"
            ),
        ]
        for s in report["servers"]
    ]
    click.echo(
        table(
            (
                "server",
                "url",
                "reachable",
                "latency",
                "version",
                "run/pend",
                "ledger",
                "oldest active",
            ),
            rows,
        )
    )
    if report["jobs"]:
        click.echo()
        click.echo(
            table(
                (
                    "prompt_id",
                    "server",
                    "ledger",
                    "server says",
                    "progress",
                    "node",
                    "progress age",
                    "queue pos",
                ),
                [
                    [
                        j["prompt_id"],
                        j["server"],
                        j["status"],
                        j["server_status"] or "-",
                        f"{j['percent']:.2f}%" if j["percent"] is not None else "-",
                        j["node"] or "-",
                        human_age(j["progress_age_s"]),
                        "-" if j["queue_position"] is None else str(j["queue_position"]),
                    ]
                    for j in report["jobs"]
                ],
            )
        )
    click.echo()
    if report["anomalies"]:
        for anomaly in report["anomalies"]:
            click.echo(
                f"ANOMALY {anomaly['kind']}: {anomaly['detail']}"
                + (f" [{anomaly['prompt_id']}]" if anomaly["prompt_id"] else "")
            )
    else:
        click.echo("No anomalies.")


def _pair(running: int | None, pending: int | None) -> str:
    return "-" if running is None else f"{running}/{pending}"


commands = [cancel_command, debug_command]
