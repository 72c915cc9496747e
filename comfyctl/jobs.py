"""The jobs service: what commands do to jobs, once, below the CLI.

Commands parse their options, call these and render what comes back; nothing here imports
click, prints or exits. Each job is asked about on its own bound server only
(``client_for``), every round over several servers goes through ``fanout.fan_out``
(one thread per server, bounded by a deadline), and every observation reaches the ledger
through ``apply_observations``: inside one transaction, on the stored record, so that two
processes observing the same job never lose each other's writes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from comfyctl.errors import ServerError
from comfyctl.records import CANCELLED, PENDING, TERMINAL, Observation, apply

if TYPE_CHECKING:
    from comfyctl.client import ServerClient
    from comfyctl.store import Record, Store

#: How long one refresh round may wait for a server (history --refresh, history ID).
REFRESH_DEADLINE = 30.0


def by_server(records: Iterable[Record]) -> dict[str, list[Record]]:
    """Records grouped by their bound server's URL, in the order given."""
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(record["server_url"], []).append(record)
    return groups


def bound_to(urls: Collection[str], names: Collection[str]) -> Callable[[Record], bool]:
    """The test every --server filter uses for "a job of these servers": bound to one of
    ``urls`` (as this host's config resolves them) or recorded under one of ``names``
    (the same server, where this host's config spells its URL another way, e.g.
    localhost for 127.0.0.1)."""
    url_set, name_set = set(urls), set(names)
    return lambda record: record["server_url"] in url_set or record["server"] in name_set


def apply_observations(
    ledger: Store,
    observations: Iterable[Observation],
    when: Callable[[Record], bool] | None = None,
    server_name: Callable[[Record], str | None] | None = None,
) -> dict[str, Record]:
    """Apply each observation to the stored record of its job, in one transaction, and
    return the records that changed (by prompt id). ``when``: only records it accepts are
    touched (e.g. only still-submitting ones); ``server_name``: the name to record the
    observation under (watch's name for the server)."""
    pending = list(observations)
    changed: dict[str, Record] = {}
    if not pending:
        return changed
    with ledger.transaction() as tasks:
        for obs in pending:
            stored = changed.get(obs.prompt_id) or tasks.get(obs.prompt_id)
            if stored is None or (when is not None and not when(stored)):
                continue
            name = server_name(stored) if server_name is not None else None
            if apply(stored, obs, name):
                changed[obs.prompt_id] = stored
        for stored in changed.values():
            tasks.put(stored)
    return changed


def refresh(
    ledger: Store,
    records: list[Record],
    client_for: Callable[[Record], ServerClient],
    report: Callable[[str], None],
    finished_too: bool = False,
    deadline: float = REFRESH_DEADLINE,
) -> list[Record]:
    """Ask each job's bound server about it (one round per server, all servers at once,
    each bounded by ``deadline``) and record what they say; returns the records as the
    ledger now has them. ``report`` hears about each server that did not answer."""
    from comfyctl.fanout import fan_out
    from comfyctl.submission import settle_submitting
    from comfyctl.supersede import originals, reap_servers

    settle_submitting(ledger, client_for, records, deadline)
    # Superseded jobs are cancelled where they still are, and so settled, not refreshed.
    if records:
        reap_servers(ledger, client_for, originals(ledger, {r["server_url"] for r in records}))
    groups = by_server(r for r in records if finished_too or r["status"] not in TERMINAL)
    if not groups:
        return records

    def ask(url: str) -> dict[str, Observation]:
        group = groups[url]
        return client_for(group[0]).snapshot([r["prompt_id"] for r in group])

    answers = fan_out(groups, ask, deadline, name=lambda url: groups[url][0]["server"])
    observations = []
    for answer in answers.values():
        if answer.error is not None:
            report(f"{answer.error} Showing the ledger's view of its jobs.")
        observations += list((answer.value or {}).values())
    if not observations:
        return records
    apply_observations(ledger, observations)
    fresh = ledger.load()  # also what other processes wrote meanwhile
    return [fresh.get(r["prompt_id"], r) for r in records]


@dataclass
class Cancelled:
    """What cancelling one job did: ``what`` in words, ``error`` when its server failed,
    ``unknown`` when the server, asked, does not know the job at all."""

    record: Record
    what: str
    error: ServerError | None = None
    unknown: bool = False

    @property
    def stopped(self) -> bool:
        return bool(self.record["status"] == CANCELLED)


#: How each way of cancelling reads, from ServerClient.cancel's answer.
_HOW = {
    "jobs-api": "cancelled (jobs API)",
    "dequeued": "cancelled (removed from queue)",
    "interrupted": "cancelled (interrupted by prompt_id)",
    "running": "running; not interrupted (--all-pending never interrupts)",
    "unsafe-interrupt": "running; not interrupted: this server's ComfyUI predates "
    "interrupt by prompt_id, so an interrupt could stop another job",
}


def cancel_targets(
    records: Any,
    prompt_ids: Collection[str],
    all_pending: bool,
    on_servers: Callable[[Record], bool] | None,
) -> tuple[list[Record], set[str]]:
    """The jobs to cancel and the prompt ids named (a unique prefix acts exactly like the
    full id): those named, then with ``all_pending`` every pending one (of the servers
    ``on_servers`` accepts, from ``bound_to``; None: any)."""
    targets: list[Record] = records.find_all(list(prompt_ids))
    named = {r["prompt_id"] for r in targets}
    if all_pending:
        targets += [
            r
            for r in records.select(statuses={PENDING})
            if (on_servers is None or on_servers(r)) and r not in targets
        ]
    return targets, named


def cancel(
    ledger: Store,
    record: Record,
    client_for: Callable[[Record], ServerClient],
    allow_interrupt: bool,
) -> Cancelled:
    """Cancel one job on its own bound server, the safest way that server allows: the
    jobs API, else out of the pending queue, else (``allow_interrupt``, and only when it is
    verifiably the running job) an interrupt by prompt_id. Never a global interrupt, never
    another server; a finished job is left alone."""
    if record["status"] in TERMINAL:
        return Cancelled(record, f"already {record['status']}, not touched")
    client = client_for(record)
    try:
        how = client.cancel(record["prompt_id"], allow_interrupt=allow_interrupt)
        obs = Observation("cancelled", record["prompt_id"], record["server_url"])
        if how in ("not-active", "not-found", "running", "unsafe-interrupt"):
            obs = client.status(record["prompt_id"])
    except ServerError as exc:
        return Cancelled(record, f"not cancelled: {exc}", exc)
    if obs.kind == "unknown":
        # Lost in a restart or forgotten (deleted from its queue or history): only restart
        # proof tells which (comfyctl.restart), and detect-stuck gathers it; the record is
        # left as it is for detect-stuck and recover to settle.
        return Cancelled(
            record,
            f"{record['server']} no longer knows this job (not queued, not running, not in "
            "its history): nothing to cancel; 'comfyctl detect-stuck' tells whether a restart "
            "lost it",
            unknown=True,
        )
    stored = apply_observations(ledger, [obs]).get(record["prompt_id"])
    if stored is None:  # nothing changed: the ledger's record as it is now
        stored = ledger.load().get(record["prompt_id"]) or record
    return Cancelled(stored, _HOW.get(how, f"not active on the server; now {stored['status']}"))
