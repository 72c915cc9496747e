from __future__ import annotations

import contextlib
import json
import random
import time
from typing import Any

import click

from comfyctl.commands.follow import FollowOptions, follow, follow_options_given
from comfyctl.commands.workflow import echo_warnings, make_preparer, run_checks, set_option
from comfyctl.context import AppContext
from comfyctl.errors import (
    ComfyctlError,
    LedgerError,
    ServerUnreachable,
    SubmitUncertain,
    UsageProblem,
    WorkflowRejected,
)
from comfyctl.options import hook_options, output_format, server_option, watch_options
from comfyctl.render import SUBMIT_SCHEMA, list_document


def parse_labels(values: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key.strip():
            raise UsageProblem(f"--label {value!r} is not KEY=VALUE.")
        if key.strip() in labels and labels[key.strip()] != val:
            raise UsageProblem(
                f"--label {key.strip()} is given twice "
                f"({labels[key.strip()]!r} and {val!r}); a job has one value "
                "per label."
            )
        labels[key.strip()] = val
    return labels


@click.command("submit", short_help="Submit a workflow, binding each job to its server.")
@click.argument("workflow", metavar="WORKFLOW", type=click.Path(allow_dash=True, dir_okay=False))
@set_option
@click.option(
    "--count",
    "-n",
    type=click.IntRange(min=1, max=10000),
    default=1,
    show_default=True,
    metavar="N",
    help="Submit this many copies, each with its own prompt_id.",
)
@click.option(
    "--vary-seed",
    is_flag=True,
    help="Give each copy a new random value for every seed/noise_seed input.",
)
@server_option(
    "Server name or URL (repeatable). With several, each job goes to the reachable "
    "server with the shortest queue (ties: the order given)."
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Store a label with the job (repeatable); filter on it in history.",
)
@output_format("json", "nl", default="text", stream="--wait")
@click.option("--wait", is_flag=True, help="Then follow the jobs exactly as 'watch' does.")
@click.option(
    "--check",
    is_flag=True,
    help="Only check the workflow against each server (as 'validate' does), then "
    "stop: nothing is uploaded or queued.",
)
@watch_options
@hook_options
@click.pass_obj
def command(
    app: AppContext,
    /,
    workflow: str,
    overrides: tuple[str, ...],
    count: int,
    vary_seed: bool,
    servers: tuple[str, ...],
    labels: tuple[str, ...],
    fmt: str,
    wait: bool,
    check: bool,
    **params: Any,
) -> None:
    """Submit a workflow, binding each job to the server that runs it.

    WORKFLOW is a file in ComfyUI API format ({node_id: {class_type, inputs}}), or as
    the web UI saves it (converted with the chosen server's /object_info, as 'convert'
    does), or '-' for stdin. @PATH values of --set are uploaded to the server each job
    goes to, before the job is written anywhere. Each job is written to the ledger
    before it is sent, so a crash never loses it. stdout gets one prompt_id per line,
    printed the moment the job is accepted (--nl: one JSON object per job, as
    accepted; --json: one document once all are sent); messages go to stderr.

    \b
    Examples:
      comfyctl submit wf.json -s gpu1
      comfyctl submit wf.json -s gpu1 -s gpu2 --count 8 --vary-seed --label batch=7
      comfyctl submit wf.json --set 6.text='"a red fox"' --wait --download out/
      comfyctl submit img2img.json -s gpu2 --set 10.image=@photo.png
      comfyctl submit saved-from-ui.json -s gpu1 --check
      comfyctl submit wf.json | comfyctl watch -
    """
    from comfyctl.submission import Submitted, Submitter, vary_seeds

    started = time.monotonic()  # --timeout counts from here: submitting is part of it
    ignored = [] if wait else follow_options_given(click.get_current_context())
    if ignored:
        raise UsageProblem(
            f"{', '.join(ignored)} only go{'es' if len(ignored) == 1 else ''} with --wait: "
            "without it, submit follows nothing.",
            "Add --wait, or follow the jobs later with 'comfyctl watch'.",
        )
    label_map = parse_labels(labels)
    preparer = make_preparer(app, workflow, overrides, upload=not check)
    specs = app.servers(servers)
    if check:
        run_checks(preparer, specs, fmt != "text")
        return
    submitter = Submitter(app.ledger, app.client)
    queue_len: dict[str, int | None] = (
        submitter.queue_lengths(specs) if len(specs) > 1 else {specs[0].url: 0}
    )
    if all(v is None for v in queue_len.values()):
        raise ServerUnreachable(", ".join(s.name for s in specs), "no server answered")
    rng = random.SystemRandom()
    submitted, uncertain = [], []
    warned: set[str] = set()
    try:
        for _ in range(count):
            result = None
            while result is None:
                usable = [s for s in specs if queue_len.get(s.url) is not None]
                if not usable:
                    break
                spec = min(usable, key=lambda s: queue_len[s.url] or 0)  # keeps the given order
                try:
                    # Converted for and uploaded to this server, before any record is written.
                    prepared = preparer.for_server(spec)
                    if spec.url not in warned:
                        warned.add(spec.url)
                        echo_warnings(prepared.warnings, spec.name)
                    job_graph = vary_seeds(prepared.graph, rng) if vary_seed else prepared.graph
                    result = submitter.submit(
                        job_graph, spec, label_map, inputs=[f.as_record() for f in prepared.files]
                    )
                except ServerUnreachable as exc:  # certainly never sent: another server may take it
                    if len(specs) == 1:
                        raise
                    click.echo(f"comfyctl: {exc} Trying another server.", err=True)
                    queue_len[spec.url] = None
                except SubmitUncertain as exc:
                    # It may be queued there: it goes nowhere else, and that server gets no more.
                    if count > 1:  # one job's is the error it ends with, said once
                        click.echo(f"comfyctl: {exc}", err=True)
                    queue_len[spec.url] = None
                    uncertain.append(exc)
                    assert exc.record is not None
                    result = Submitted(exc.record, [])
                except WorkflowRejected as exc:
                    _explain_rejection(exc)
                    raise
                except LedgerError as exc:
                    if not uncertain:
                        raise
                    # A job is queued that the ledger could not record: the exit is its
                    # 11 (do not resubmit), not the ledger's 7; nothing more is sent.
                    click.echo(f"comfyctl: {exc}", err=True)
                    break
            if result is None:
                if uncertain:
                    break  # the servers that took or may have taken jobs are not asked again
                raise ServerUnreachable(", ".join(s.name for s in specs), "no server answered")
            if queue_len.get(spec.url) is not None:
                queue_len[spec.url] = (queue_len[spec.url] or 0) + 1
            record = result.record
            for warning in result.warnings:
                click.echo(f"comfyctl: warning: {record['prompt_id']}: {warning}", err=True)
            submitted.append(record)
            if fmt == "nl" or (fmt == "json" and wait):  # lines, each out before any waiting
                click.echo(json.dumps(_submitted_json(record)))
            elif fmt == "text":
                click.echo(record["prompt_id"])  # echo flushes: the id is out before any waiting
    finally:
        if fmt == "json" and not wait:  # one document, with what was sent, also on error
            click.echo(
                json.dumps(
                    list_document(SUBMIT_SCHEMA, "jobs", [_submitted_json(r) for r in submitted]),
                    indent=2,
                )
            )

    from comfyctl.restart import note_submitted

    with contextlib.suppress(ComfyctlError):  # a missing mark only weakens restart proof
        note_submitted(app.ledger, submitted, app.client_for_record)
    if wait:
        opts = FollowOptions.from_params(params, "text" if fmt == "text" else "json")
        if opts.timeout is not None:
            opts.timeout = max(opts.timeout - (time.monotonic() - started), 0.001)
        try:
            follow(app, submitted, opts)
        except LedgerError as exc:
            if not uncertain:
                raise
            click.echo(f"comfyctl: {exc}", err=True)  # the uncertain job's 11 still ends it
    if uncertain:
        if count == 1:
            raise uncertain[0]
        raise SubmitUncertain(
            ", ".join(dict.fromkeys(e.server for e in uncertain)),
            f"{len(uncertain)} job(s); {len(submitted)} of {count} submitted in all",
        )


def _explain_rejection(exc: WorkflowRejected) -> None:
    from comfyctl.submission import node_error_lines

    for node, line in node_error_lines(exc.node_errors):
        click.echo(f"comfyctl: node {node}: {line}", err=True)


def _submitted_json(record: dict[str, Any]) -> dict[str, Any]:
    return {
        **SUBMIT_SCHEMA,
        "prompt_id": record["prompt_id"],
        "server": record["server"],
        "server_url": record["server_url"],
        "status": record["status"],
        "number": record["number"],
        "labels": record["labels"],
    }
