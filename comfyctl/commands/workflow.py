"""``convert`` and ``validate``: a workflow as one server sees it, before anything is queued."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from comfyctl.context import AppContext
from comfyctl.errors import UsageProblem, WorkflowInvalid, WorkflowProblems
from comfyctl.options import output_format, server_option
from comfyctl.render import VALIDATION_SCHEMA

if TYPE_CHECKING:
    from comfyctl.config import ServerSpec
    from comfyctl.prepare import Preparer, Workflow

MAX_WORKFLOW_BYTES = 64 * 1024 * 1024

set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="NODE.INPUT=VALUE",
    help="Override one input (repeatable). VALUE is JSON when it parses, else text; @PATH "
    "uploads a local file to the job's server and uses the name it gets there (@@ for "
    "a literal @). An input the workflow left out may be set when the server declares "
    "it.",
)


def read_workflow(source: str) -> Workflow:
    """The workflow file (or stdin for '-'), API or UI format."""
    from comfyctl.prepare import parse_any_workflow

    try:
        if source == "-":
            raw = sys.stdin.buffer.read(MAX_WORKFLOW_BYTES + 1)
        else:
            with open(source, "rb") as handle:
                raw = handle.read(MAX_WORKFLOW_BYTES + 1)
    except OSError as exc:
        raise WorkflowInvalid(f"Cannot read {source}: {exc.strerror or exc}.") from None
    if len(raw) > MAX_WORKFLOW_BYTES:
        raise WorkflowInvalid(
            f"{source} is larger than {MAX_WORKFLOW_BYTES >> 20} MiB; that is not a workflow."
        )
    return parse_any_workflow(raw, "stdin" if source == "-" else source)


def make_preparer(
    app: AppContext, source: str, overrides: tuple[str, ...], upload: bool
) -> Preparer:
    from comfyctl.inputs import parse_assignment
    from comfyctl.prepare import Preparer

    assignments = [parse_assignment(text) for text in overrides]
    return Preparer(
        read_workflow(source), assignments, app.object_info, app.uploader() if upload else None
    )


def echo_warnings(warnings: list[str], server: str) -> None:
    for warning in warnings:
        click.echo(f"comfyctl: warning: {server}: {warning}", err=True)


def run_checks(preparer: Preparer, specs: list[ServerSpec], as_json: bool) -> None:
    """Check against each server; print problems (stdout), raise WorkflowProblems (exit 2)."""
    from comfyctl.prepare import check_for_server

    reports: list[dict[str, Any]] = []
    total = 0
    for spec in specs:
        prepared, problems = check_for_server(preparer, spec)
        echo_warnings(prepared.warnings, spec.name)
        total += len(problems)
        reports.append(
            {
                "server": spec.name,
                "server_url": spec.url,
                "ok": not problems,
                "problems": [p.as_json() for p in problems],
            }
        )
        if not as_json:
            for problem in problems:
                prefix = f"{spec.name}: " if len(specs) > 1 else ""
                click.echo(prefix + problem.line())
    if as_json:
        click.echo(json.dumps({**VALIDATION_SCHEMA, "ok": not total, "servers": reports}))
    if total:
        where = ", ".join(r["server"] for r in reports if not r["ok"])
        raise WorkflowProblems(
            f"{total} problem{'s' if total > 1 else ''} on {where}.",
            [r for r in reports if not r["ok"]],
        )
    if not as_json:
        click.echo(
            f"comfyctl: the workflow is valid on {', '.join(s.name for s in specs)}.", err=True
        )


@click.command("validate", short_help="Check a workflow against a server before queueing it.")
@click.argument("workflow", metavar="WORKFLOW", type=click.Path(allow_dash=True, dir_okay=False))
@server_option("Server name or URL to check against (repeatable: each one is checked).")
@set_option
@output_format("json")
@click.pass_obj
def validate_command(
    app: AppContext, workflow: str, servers: tuple[str, ...], overrides: tuple[str, ...], fmt: str
) -> None:
    """Check WORKFLOW (API or UI format) against a server's current /object_info.

    Names every problem in one run, one line each on stdout: node types the server
    lacks, required inputs missing, links to missing nodes or of the wrong type, numbers
    out of range, values not among the server's options (model files, samplers...)
    and files missing from its input folder, each with the nearest valid values.
    @PATH files of --set are only checked to be readable (submit uploads them).
    Exit 0 when clean, 2 when there are problems.

    \b
    Examples:
      comfyctl validate wf.json -s gpu1
      comfyctl validate ui-saved.json -s gpu1 -s gpu2 --set 10.image=@in.png
    """
    preparer = make_preparer(app, workflow, overrides, upload=False)
    run_checks(preparer, app.servers(servers), fmt == "json")


@click.command("convert", short_help="Print a UI-format workflow as the API prompt a server gets.")
@click.argument("workflow", metavar="WORKFLOW", type=click.Path(allow_dash=True, dir_okay=False))
@server_option("The server whose node set the conversion uses (one).")
@click.option("--compact", is_flag=True, help="One line of JSON instead of indented JSON.")
@click.pass_obj
def convert_command(
    app: AppContext, workflow: str, servers: tuple[str, ...], compact: bool
) -> None:
    """Convert a workflow saved by the ComfyUI web UI to API format, on stdout.

    The conversion is the web UI's own (widget values in the server's input order,
    Reroute, PrimitiveNode, muted and bypassed nodes, subgraphs) and depends on the
    server's node set, read from its /object_info (cached per server and version). An
    API-format WORKFLOW is printed as it is. Commit the result, or check it with
    'comfyctl validate'.

    \b
    Examples:
      comfyctl convert saved.json -s gpu1 > wf-api.json
      comfyctl convert saved.json -s gpu1 | comfyctl submit - -s gpu1
    """
    specs = app.servers(servers)
    if len(specs) > 1:
        raise UsageProblem("convert takes one --server: each server's node set may differ.")
    preparer = make_preparer(app, workflow, (), upload=False)
    prepared = preparer.for_server(specs[0])
    echo_warnings(prepared.warnings, specs[0].name)
    click.echo(json.dumps(prepared.graph, indent=None if compact else 2, ensure_ascii=False))
