"""Superseded jobs: a lost job that was resubmitted elsewhere must not run on as well.

``recover --resubmit`` gives up on a job whose server is down or frozen and sends it again
(``superseded_by`` names the copy). The server may only have been frozen: when it answers
again, the original can still be queued or running there. Every command that reaches a
server asks it about that server's unsettled originals (``reap_servers``: the status round
of detect-stuck and recover, the tracker behind watch and submit --wait, history's refresh,
debug-tasks); each one still there is cancelled on that server only (deleted from the
queue, or interrupted by prompt_id), and its record settles in one consistent state
(``records.settle_superseded``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable

from comfyctl.client import ServerClient
from comfyctl.errors import ServerError
from comfyctl.fanout import fan_out
from comfyctl.jobs import by_server
from comfyctl.records import LOST, Observation, settle_superseded, superseded_unsettled
from comfyctl.store import Record, Store

log = logging.getLogger("comfyctl.supersede")

CANCELLED_HOW = ("jobs-api", "dequeued", "interrupted")
# A reap is a few requests (a snapshot, a cancel, a check), each bounded by the server's
# own timeouts; a server slower than this is left for the next command.
REAP_DEADLINE = 30.0


def originals(ledger: Store, server_urls: Collection[str] | None = None) -> list[Record]:
    """The ledger's unsettled superseded jobs (bound to ``server_urls``, if given)."""
    return [
        r
        for r in ledger.load().select(statuses={LOST}, server_urls=server_urls)
        if superseded_unsettled(r)
    ]


def reap(ledger: Store, client: ServerClient, records: list[Record]) -> list[Record]:
    """Cancel on ``client``'s server the superseded jobs it still has, and settle every one
    of ``records`` bound to it. Returns the records that changed. Raises ServerError."""
    mine = [r for r in records if r["server_url"] == client.url and superseded_unsettled(r)]
    if not mine:
        return []
    seen = client.snapshot([r["prompt_id"] for r in mine])
    final: dict[str, Observation] = {}
    for pid, obs in seen.items():
        if obs.kind in ("queued", "running"):
            how = client.cancel(pid)
            log.info("superseded %s was %s on %s: %s", pid, obs.kind, client.spec.name, how)
            obs = (
                Observation("cancelled", pid, client.url)
                if how in CANCELLED_HOW
                else client.status(pid)
            )  # finished meanwhile, or could not be cancelled
        final[pid] = obs
    changed = []
    with ledger.transaction() as tasks:
        for pid, obs in final.items():
            stored = tasks.get(pid)
            if stored is not None and settle_superseded(stored, obs):
                tasks.put(stored)
                changed.append(stored)
    return changed


def reap_servers(
    ledger: Store,
    client_for: Callable[[Record], ServerClient],
    records: Iterable[Record] | None,
    deadline: float = REAP_DEADLINE,
    skip: Collection[str] = (),
) -> list[Record]:
    """``reap`` on every server that ``records`` (default: the whole ledger) holds
    unsettled originals for, all at once, each bounded by ``deadline``; servers in
    ``skip`` (known to be down) are left for the next command. Returns what changed."""
    pending = (
        [r for r in records if superseded_unsettled(r)]
        if records is not None
        else originals(ledger)
    )
    groups = by_server(r for r in pending if r["server_url"] not in skip)
    if not groups:
        return []
    answers = fan_out(
        list(groups),
        lambda url: reap(ledger, client_for(groups[url][0]), groups[url]),
        deadline,
        name=lambda url: groups[url][0]["server"],
    )
    return [r for answer in answers.values() for r in answer.value or []]


def reap_quietly(ledger: Store, client: ServerClient) -> list[Record]:
    """``reap`` for one server just reached (the tracker's poll worker): its problems
    are left for the next contact."""
    try:
        return reap(ledger, client, originals(ledger, {client.url}))
    except ServerError as exc:
        log.info("superseded jobs on %s left for later: %s", client.spec.name, exc)
        return []
