from __future__ import annotations

import json
import sys

import click

from comfyctl.commands.follow import FollowOptions, follow
from comfyctl.context import AppContext
from comfyctl.errors import UsageProblem
from comfyctl.options import complete_prompt_ids, hook_options, watch_options
from comfyctl.records import ACTIVE


@click.command("watch")
@click.argument("prompt_ids", nargs=-1, metavar="[PROMPT_ID ...|-]",
                shell_complete=complete_prompt_ids)
@watch_options
@hook_options
@click.option("--json", "as_json", is_flag=True,
              help="Print newline-delimited JSON events, one per line, flushed as they happen.")
@click.pass_obj
def command(app: AppContext, /, prompt_ids: tuple[str, ...], as_json: bool,
            **params: object) -> None:
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
      comfyctl watch --timeout 600 --json | jq -r .status
      comfyctl watch --exec 'notify-send "$COMFYCTL_STATUS" "$COMFYCTL_PROMPT_ID"'

    --exec and --webhook announce each job's end once, however many watchers
    (or recover runs) notice it.
    """
    ids = list(prompt_ids)
    if "-" in ids:
        ids.remove("-")
        ids.extend(_id_from_line(line) for line in sys.stdin if line.strip())
    ledger = app.ledger.load()
    if ids:
        records = ledger.find_all(ids)
    elif prompt_ids:  # '-' given, but stdin was empty
        raise UsageProblem("No prompt ids on stdin.", "Pipe ids from 'comfyctl submit'.")
    else:
        records = ledger.select(statuses=ACTIVE)
        if not records:
            click.echo("comfyctl: no unfinished jobs in the ledger.", err=True)
            return
    follow(app, records, FollowOptions.from_params(params, "json" if as_json else "text"))


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
