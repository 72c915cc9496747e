from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from comfyctl.context import AppContext
from comfyctl.errors import ComfyctlError, ServerError, UsageProblem
from comfyctl.options import complete_prompt_ids, output_format, server_option
from comfyctl.records import (
    ACTIVE,
    STATUSES,
    TERMINAL,
    parse_time,
    superseded_unsettled,
)
from comfyctl.render import (
    HISTORY_COLUMNS,
    RECORD_SCHEMA,
    csv_text,
    history_rows,
    list_document,
    record_json,
    table,
)
from comfyctl.store import Record, Records

if TYPE_CHECKING:
    from comfyctl.download import DownloadFailed

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if not match:
        raise UsageProblem(f"{text!r} is not a duration.", "Use e.g. 90s, 15m, 2h, 7d.")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def parse_since(text: str) -> datetime:
    if _DURATION.match(text.strip()):
        return datetime.now(timezone.utc) - parse_duration(text)
    moment = parse_time(text)
    if moment is None:
        raise UsageProblem(
            f"--since {text!r} is neither a duration nor a date.",
            "Use e.g. 2h, 7d or 2026-11-30T12:00.",
        )
    return moment


@click.command("history", short_help="List jobs newest first, or show one in full.")
@click.argument("prompt_id", required=False, shell_complete=complete_prompt_ids)
@server_option("Only jobs bound to this server (repeatable).")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(STATUSES),
    help="Only jobs with this status (repeatable).",
)
@click.option(
    "--since",
    metavar="DURATION|DATE",
    help="Only jobs submitted since then (e.g. 2h, 7d, 2026-11-30).",
)
@click.option(
    "--label",
    "label_filters",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only jobs carrying this label (repeatable: all must match).",
)
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="At most N jobs.")
@output_format("json", "nl", "csv")
@click.option(
    "--outputs",
    "list_outputs",
    is_flag=True,
    help="Print output URLs, one per line (each on its job's own server).",
)
@click.option(
    "--download",
    "download_dir",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Save the selected jobs' outputs to DIR/<server>/<subfolder>/<file>.",
)
@click.option("--overwrite", is_flag=True, help="With --download, replace existing files.")
@click.option(
    "--refresh/--no-refresh",
    default=None,
    help="Ask each job's bound server first (default: on for one id, off for lists).",
)
@click.option("--prune", is_flag=True, help="Remove old finished records (needs --older-than).")
@click.option("--older-than", metavar="DURATION", help="With --prune: records older than this.")
@click.pass_obj
def command(
    app: AppContext,
    prompt_id: str | None,
    servers: tuple[str, ...],
    statuses: tuple[str, ...],
    since: str | None,
    label_filters: tuple[str, ...],
    limit: int | None,
    fmt: str,
    list_outputs: bool,
    download_dir: str | None,
    overwrite: bool,
    refresh: bool | None,
    prune: bool,
    older_than: str | None,
) -> None:
    """List jobs from the ledger, newest first, or show one job in full.

    Without an id: a table of jobs (short id, server, status, progress, submitted,
    age, outputs, labels), filtered by --server, --status, --since and --label.
    With an id: the full record, refreshed first from the job's bound server.

    \b
    Examples:
      comfyctl history --status running --server gpu1
      comfyctl history --since 2h --json | jq '.tasks[].prompt_id'
      comfyctl history 3f2c9a1e-... --outputs | xargs -n1 curl -sOJ   # server's names
      comfyctl history --prune --older-than 30d
    """
    if prune:
        if prompt_id or servers or since or label_filters or limit:
            raise UsageProblem(
                "--prune selects by --older-than and --status only.",
                "Drop the other filters (nothing was removed).",
            )
        return _prune(app, older_than, statuses, fmt)
    if older_than:
        raise UsageProblem("--older-than only goes with --prune.")
    if list_outputs and fmt != "table":
        raise UsageProblem(
            f"--outputs prints plain URLs; it does not go with --{fmt}.",
            "Each record's outputs[].url has them in JSON.",
        )
    # No server is asked but by a refresh (a list's default is none): a crashed submit's
    # record is settled by the refresh that includes it (comfyctl.jobs.refresh).
    ledger = app.ledger.load()
    if prompt_id is not None:
        record = ledger.find(prompt_id)
        if refresh is not False:
            record = refresh_records(app, [record], finished_too=True)[0]
            record = {**record, "server_messages": _server_messages(app, record)}
        records = [record]
    else:
        records = select(app, ledger, servers, statuses, since, label_filters, limit)
        if refresh:
            active = [r for r in records if r["status"] in ACTIVE or superseded_unsettled(r)]
            fresh = {r["prompt_id"]: r for r in refresh_records(app, active)}
            records = [fresh.get(r["prompt_id"], r) for r in records]
    failed = download_all(app, records, Path(download_dir), overwrite) if download_dir else None
    if list_outputs:
        for record in records:
            for output in record.get("outputs") or []:
                click.echo(output["url"])
    else:
        print_records(app, records, fmt, single=prompt_id is not None)
    if failed is not None:
        raise failed


def _server_messages(app: AppContext, record: Record) -> list[Any] | None:
    """The bound server's execution messages for one job (shown, never stored)."""
    try:
        return app.client_for_record(record).execution_messages(record["prompt_id"])
    except ServerError:
        return None


def select(
    app: AppContext,
    ledger: Records,
    servers: tuple[str, ...],
    statuses: tuple[str, ...],
    since: str | None,
    label_filters: tuple[str, ...],
    limit: int | None = None,
) -> list[Record]:
    """Matching records, newest first. Records are parsed in that order only until
    ``limit`` is reached, so a small page of a huge ledger stays cheap."""
    on_servers = app.on_servers(servers)
    cutoff = parse_since(since).isoformat(timespec="milliseconds") if since else None
    labels = []
    for pair in label_filters:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageProblem(f"--label {pair!r} is not KEY=VALUE.")
        labels.append((key, value))
    candidates: Iterable[Record]
    if statuses:  # only the lines naming these statuses are parsed
        chosen = ledger.select(statuses=statuses)
        candidates = sorted(chosen, key=lambda r: r.get("submitted_at") or "", reverse=True)
    else:
        candidates = ledger.newest()
    found = []
    for record in candidates:
        if cutoff is not None and (record.get("submitted_at") or "") < cutoff:
            break  # newest first: everything after this is older still
        if (
            (on_servers is None or on_servers(record))
            and (not statuses or record["status"] in statuses)
            and all((record.get("labels") or {}).get(k) == v for k, v in labels)
        ):
            found.append(record)
            if limit is not None and len(found) >= limit:
                break
    return found


def refresh_records(
    app: AppContext, records: list[Record], finished_too: bool = False
) -> list[Record]:
    """Ask each job's bound server about it (comfyctl.jobs.refresh); servers that do not
    answer are named on stderr."""
    from comfyctl.jobs import refresh

    return refresh(
        app.ledger,
        records,
        app.client_for_record,
        lambda message: click.echo(f"comfyctl: {message}", err=True),
        finished_too,
    )


def print_records(app: AppContext, records: list[Record], fmt: str, single: bool) -> None:
    if fmt == "json":
        doc: Any = (
            record_json(records[0])
            if single
            else list_document(RECORD_SCHEMA, "tasks", [record_json(r) for r in records])
        )
        click.echo(json.dumps(doc, indent=2))
    elif fmt == "nl":
        for record in records:
            click.echo(json.dumps(record_json(record)))
    elif fmt == "csv":
        click.echo(csv_text(records), nl=False)
    elif single:
        click.echo(_detail(records[0]))
    elif records:
        colour = app.color and sys.stdout.isatty()  # never escape codes in a pipe or file
        click.echo(table(HISTORY_COLUMNS, history_rows(records, colour)))
    else:
        click.echo("comfyctl: no jobs match.", err=True)


def _detail(record: Record) -> str:
    lines = []
    for key in (
        "prompt_id",
        "server",
        "server_url",
        "status",
        "number",
        "submitted_at",
        "started_at",
        "finished_at",
        "resubmitted_from",
        "superseded_by",
        "workflow",
    ):
        if record.get(key) is not None:
            lines.append(f"{key + ':':<17} {record[key]}")
    progress = record.get("progress")
    if progress:
        lines.append(
            f"{'progress:':<17} {progress.get('percent', 0):.2f}% "
            f"({progress.get('value')}/{progress.get('max')}, node {progress.get('node')},"
            f" at {progress.get('updated_at')})"
        )
    if record.get("labels"):
        lines.append(
            f"{'labels:':<17} " + ", ".join(f"{k}={v}" for k, v in sorted(record["labels"].items()))
        )
    if record.get("error"):
        err = record["error"]
        where = (
            f" at node {err.get('node_id')} ({err.get('node_type')})" if err.get("node_id") else ""
        )
        lines.append(f"{'error:':<17} {err.get('type')}: {err.get('message')}{where}")
    for warning in record.get("warnings") or []:
        lines.append(f"{'warning:':<17} {warning}")
    for output in record.get("outputs") or []:
        lines.append(f"{'output:':<17} {output['url']}")
    for message in record.get("server_messages") or []:
        if isinstance(message, list) and len(message) == 2 and isinstance(message[1], dict):
            stamp = message[1].get("timestamp")
            when = (
                datetime.fromtimestamp(stamp / 1000, timezone.utc).isoformat(
                    timespec="milliseconds"
                )
                if isinstance(stamp, (int, float))
                else "-"
            )
            lines.append(f"{'server message:':<17} {when} {message[0]}")
    return "\n".join(lines)


def download_all(
    app: AppContext,
    records: list[Record],
    root: Path,
    overwrite: bool,
    tell: Callable[[str], None] | None = None,
) -> DownloadFailed | None:
    """Save the records' outputs, saying what happened to each file on stderr (through
    ``tell``, e.g. above watch's live area). Returns what failed (the caller raises it once
    its output is printed: exit 1)."""
    from comfyctl.download import DownloadFailed, download_outputs

    def say(message: str) -> None:
        if tell is not None:
            tell(message)
        else:
            click.echo(f"comfyctl: {message}", err=True)

    failures: list[tuple[str, str]] = []
    for record in records:
        if not record.get("outputs"):
            continue
        try:
            results = download_outputs(app.client_for_record(record), record, root, overwrite)
        except DownloadFailed as exc:
            results = exc.done
            failures += exc.failures
        except ComfyctlError as exc:  # e.g. the server's config is unusable
            results = []
            failures.append((record["prompt_id"], str(exc)))
        for path, what in results:
            if what == "exists":
                say(f"{path} exists, not overwritten (use --overwrite)")
            else:
                say(f"saved: {path}")
    for name, why in failures:
        say(f"download of {name} failed: {why}")
    if not failures:
        return None
    return DownloadFailed(failures, hint="Each one's reason is given above.")


def _prune(app: AppContext, older_than: str | None, statuses: tuple[str, ...], fmt: str) -> None:
    if not older_than:
        raise UsageProblem("--prune needs --older-than DURATION (e.g. 30d).")
    cutoff = (datetime.now(timezone.utc) - parse_duration(older_than)).isoformat(
        timespec="milliseconds"
    )
    wanted = set(statuses) or set(TERMINAL)
    removed = []
    with app.ledger.transaction() as tasks:
        for record in tasks.values():  # prune reads everything: the slow path is fine here
            stamp = record.get("finished_at") or record.get("updated_at") or ""
            if record["status"] in TERMINAL and record["status"] in wanted and stamp < cutoff:
                tasks.remove(record["prompt_id"])
                removed.append(record)
        referenced = {r.get("workflow") for r in tasks.values() if r.get("workflow")}
    workflows = app.ledger.prune_workflows({str(r) for r in referenced})
    if fmt == "table":
        for record in removed:
            click.echo(record["prompt_id"])
    else:  # the records removed, as the list would have shown them
        print_records(app, removed, fmt, single=False)
    click.echo(
        f"comfyctl: pruned {len(removed)} record(s) and {len(workflows)} stored workflow(s).",
        err=True,
    )
