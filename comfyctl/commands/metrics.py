"""metrics: the fleet in Prometheus' text format (engine: comfyctl.metrics)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from comfyctl.commands.stuck import detect_options, detection_tuning
from comfyctl.context import AppContext
from comfyctl.errors import UsageProblem
from comfyctl.options import output_format, server_option


@click.command("metrics", short_help="Print Prometheus metrics for servers and jobs.")
@server_option("Only this server and the jobs bound to it (repeatable).")
@detection_tuning
@click.option(
    "--textfile",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="Write the metrics to PATH atomically instead of stdout (for "
    "node_exporter's textfile collector: a *.prom file in its directory).",
)
@output_format("json", default="prometheus")
@click.pass_obj
def command(
    app: AppContext,
    /,
    servers: tuple[str, ...],
    deadline: float,
    textfile: Path | None,
    fmt: str,
    **tuning: Any,
) -> None:
    """Print Prometheus metrics about every server and the jobs bound to it.

    Per server: reachability (comfyctl_server_up), probe latency, the queue as the
    server reports it, the ledger's jobs by status, the age of the oldest running
    and pending job, the jobs detect-stuck would report by condition (stalled,
    lost, finished-unnoticed, ...), and run-time and queue-wait summaries from the
    server's own timestamps. All servers are asked at once, each bounded by
    --server-timeout; a server that does not answer shows as comfyctl_server_up 0. Exit 0
    whenever the metrics were produced (a down server is a metric, not an error).

    \b
    Examples:
      comfyctl metrics
      comfyctl metrics --textfile /var/lib/node_exporter/textfile/comfyctl.prom   # from cron
      comfyctl metrics --server gpu1 | grep comfyctl_stuck_jobs
    """
    from comfyctl.ledger import atomic_write
    from comfyctl.metrics import collect, exposition, metrics_json

    if textfile is not None and fmt == "json":
        raise UsageProblem("--textfile writes Prometheus' text format; drop --json.")

    app.timeout = deadline
    only = {s.url for s in app.servers(servers)} if servers else None
    records = app.jobs_on(servers, app.ledger.load().values())
    families = collect(
        app.config,
        records,
        app.ledger,
        app.client,
        app.spec_for_record,
        app.client_for_record,
        detect_options(deadline, **tuning),
        only,
    )
    if fmt == "json":
        click.echo(json.dumps(metrics_json(families), indent=2))
        return
    text = exposition(families)
    if textfile is None:
        click.echo(text, nl=False)
        return
    # Readable by the node_exporter user; a reader sees the old file or the new one.
    atomic_write(textfile, text.encode(), mode=0o644)
