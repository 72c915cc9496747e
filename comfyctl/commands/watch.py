from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from comfyctl.commands.follow import FollowOptions, follow
from comfyctl.errors import UsageProblem
from comfyctl.options import complete_prompt_ids, hook_options, output_format, watch_options

if TYPE_CHECKING:
    from comfyctl.context import AppContext


@click.command("watch")
@click.argument(
    "prompt_ids", nargs=-1, metavar="[PROMPT_ID ...|-]", shell_complete=complete_prompt_ids
)
@watch_options
@hook_options
@output_format("json", "nl", default="text", stream=True)
@click.pass_obj
def command(app: AppContext, /, prompt_ids: tuple[str, ...], fmt: str, **params: object) -> None:
    """Follow jobs to the end, each on its own bound server.

    Progress comes over each job's WebSocket (connected as the client_id it was
    submitted with); each server is also polled, and HTTP is the source of truth.
    With no ids, every unfinished job in the ledger is followed; '-' reads ids
    from stdin. stdout gets one line per state change (or --json events); a live
    area (running jobs with a bar, pending ones with their queue position) is drawn
    on stderr when it is a terminal (not with TERM=dumb).

    \b
    Examples:
      comfyctl watch 3f2c9a1e-...                    # one job
      comfyctl submit wf.json --count 4 | comfyctl watch - --download out/
      comfyctl watch --timeout 600 --json | jq -r 'select(.event == "state") | .status'
      comfyctl watch --exec 'notify-send "$COMFYCTL_STATUS" "$COMFYCTL_PROMPT_ID"'

    --exec and --webhook announce each job's end once, however many watchers
    (or recover runs) notice it.
    """
    ids = list(prompt_ids)
    if "-" in ids:
        ids.remove("-")
        ids.extend(_ids_from_stdin(sys.stdin.read()))
    ledger = app.ledger.load()
    if ids:
        records = ledger.find_all(ids)
    elif prompt_ids:  # '-' given, but stdin was empty
        raise UsageProblem("No prompt ids on stdin.", "Pipe ids from 'comfyctl submit'.")
    else:
        from comfyctl.records import ACTIVE

        records = ledger.select(statuses=ACTIVE)
        if not records:
            click.echo("comfyctl: no unfinished jobs in the ledger.", err=True)
            return
    follow(app, records, FollowOptions.from_params(params, "text" if fmt == "text" else "json"))


def _ids_from_stdin(text: str) -> list[str]:
    """Ids from stdin: one JSON document with a list of jobs ('submit --json', 'history
    --json'), or one id or JSON object per line."""
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None  # not one document: one object per line
        if isinstance(doc, dict):
            items = next((v for k, v in doc.items() if k in ("jobs", "tasks")), None)
            if isinstance(items, list):
                return [
                    i["prompt_id"]
                    for i in items
                    if isinstance(i, dict) and isinstance(i.get("prompt_id"), str)
                ]
            if isinstance(doc.get("prompt_id"), str):  # 'history ID --json'
                return [doc["prompt_id"]]
    return [_id_from_line(line) for line in text.splitlines() if line.strip()]


def _id_from_line(line: str) -> str:
    """A prompt id from one line of stdin: a bare id, or a JSON object with a prompt_id
    (so 'submit --json | watch -' works as well as the plain pipe)."""
    text = line.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text).get("prompt_id")
        except (ValueError, AttributeError):
            value = None
        if isinstance(value, str):
            return value
    return text
