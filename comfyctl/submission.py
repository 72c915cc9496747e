"""Submitting jobs: validate the workflow, pick a server, write ahead, send once.

The write-ahead record (status ``submitting``) is in the ledger before the request
leaves, so a crash between request and reply loses nothing. POST /prompt is never
retried blindly: after a timeout or reset the server is asked whether the id exists.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from comfyctl.client import ServerClient, new_client_id, new_prompt_id
from comfyctl.config import ServerSpec
from comfyctl.errors import (
    LedgerError,
    ServerError,
    SubmitFailed,
    SubmitUncertain,
    SubmitUnrecorded,
    WorkflowInvalid,
    WorkflowRejected,
)
from comfyctl.jobs import REFRESH_DEADLINE, by_server
from comfyctl.records import (
    REJECTED,
    SUBMITTING,
    Observation,
    apply,
    job_error,
    never_arrived,
    new_record,
    now_iso,
    submitter_gone,
)
from comfyctl.store import Record, Records, Store

log = logging.getLogger("comfyctl.submit")

SEED_INPUTS = ("seed", "noise_seed")
MAX_SEED = 2**53 - 1  # JSON-safe integer


def load_json(raw: bytes, source: str) -> Any:
    """A workflow file's JSON, or WorkflowInvalid saying why it is none."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WorkflowInvalid(f"{source} is not UTF-8 text; a workflow is a JSON file.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowInvalid(
            f"{source} is not valid JSON ({exc.msg} at line {exc.lineno})."
        ) from None
    except RecursionError:
        raise WorkflowInvalid(f"{source} is nested too deeply to be a workflow.") from None


def check_api_graph(data: Any, source: str) -> dict[str, Any]:
    """An API-format graph ``{node_id: {class_type, inputs}}`` or WorkflowInvalid."""
    if (
        isinstance(data, dict)
        and "prompt" in data
        and isinstance(data["prompt"], dict)
        and "nodes" not in data
    ):
        data = data["prompt"]  # a saved POST /prompt body
    if not isinstance(data, dict) or not data:
        raise WorkflowInvalid(
            f"{source} holds no nodes; expected {{node_id: {{class_type, "
            f"inputs}}}} (ComfyUI API format)."
        )
    for node_id, node in data.items():
        if (
            not isinstance(node, dict)
            or not isinstance(node.get("class_type"), str)
            or not isinstance(node.get("inputs", {}), dict)
        ):
            raise WorkflowInvalid(
                f"{source}: node {node_id!r} is not an API-format node "
                "(it needs class_type and an inputs object)."
            )
    return data


def vary_seeds(graph: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    result = copy.deepcopy(graph)
    for node in result.values():
        for name in SEED_INPUTS:
            if isinstance(node.get("inputs", {}).get(name), int):
                node["inputs"][name] = rng.randint(0, MAX_SEED)
    return result


@dataclass
class Submitted:
    record: Record
    warnings: list[str]


class Submitter:
    def __init__(self, ledger: Store, client_for: Callable[[ServerSpec], ServerClient]) -> None:
        self.ledger = ledger
        self.client_for = client_for

    def queue_lengths(self, specs: list[ServerSpec]) -> dict[str, int | None]:
        """Queue length per server URL, probed concurrently; None when unreachable."""

        from comfyctl.fanout import fan_out

        by_url = {spec.url: spec for spec in specs}

        def probe(url: str) -> int:
            snap = self.client_for(by_url[url]).queue()
            return len(snap.running) + len(snap.pending)

        # Bounded by the slowest server's own timeouts (a retry included).
        deadline = max((s.connect_timeout + s.timeout) * 2 for s in specs) if specs else 0.0
        answers = fan_out(by_url, probe, deadline, name=lambda url: by_url[url].name)
        return {url: answers[url].value if answers[url].error is None else None for url in by_url}

    def submit(
        self,
        graph: dict[str, Any],
        spec: ServerSpec,
        labels: dict[str, str] | None = None,
        resubmitted_from: str | None = None,
        inputs: list[dict[str, Any]] | None = None,
    ) -> Submitted:
        """Write ahead, then send one job to ``spec``'s server."""
        record = self.prepare(graph, spec, labels, resubmitted_from, inputs)
        with self.ledger.transaction() as tasks:
            tasks.put(record)
        return self.send(record, graph, spec)

    def prepare(
        self,
        graph: dict[str, Any],
        spec: ServerSpec,
        labels: dict[str, str] | None = None,
        resubmitted_from: str | None = None,
        inputs: list[dict[str, Any]] | None = None,
    ) -> Record:
        """The write-ahead record of a new job (the caller puts it in the ledger).
        ``inputs``: the local files uploaded for it (so a resubmit elsewhere can send
        them to that server)."""
        self.client_for(spec)  # a server that cannot be used (config) gets no record at all
        ref = self.ledger.store_workflow(graph)
        record = new_record(
            new_prompt_id(), spec.name, spec.url, new_client_id(), ref, labels, resubmitted_from
        )
        if inputs:
            record["inputs"] = inputs
        return record

    def send(self, record: Record, graph: dict[str, Any], spec: ServerSpec) -> Submitted:
        """POST the job whose write-ahead record is already in the ledger.

        Raises WorkflowRejected; ServerUnreachable, AccessDenied or ServerFailed (a 4xx
        that is not ComfyUI's rejection) when the job certainly did not reach ComfyUI's
        queue (its record is removed; after ServerUnreachable it may go elsewhere);
        SubmitUncertain when it may be queued (the record stays, to be settled on the next
        contact), SubmitUnrecorded (one) when it was queued and the ledger could not say so;
        SubmitFailed when the server answered that it does not have it."""
        client = self.client_for(spec)
        prompt_id = record["prompt_id"]
        log.info(
            "sending %s to %s (%s) as client %s",
            prompt_id,
            spec.name,
            spec.url,
            record["client_id"],
        )
        try:
            reply = client.submit(graph, record["client_id"], prompt_id)
        except WorkflowRejected as exc:
            self._settle(prompt_id, status=REJECTED, error=rejection_summary(exc))
            raise
        except SubmitUncertain as exc:
            return self._confirm(client, record, exc.reason)
        except ServerError:
            with self.ledger.transaction() as tasks:  # certainly never queued: no ghost record
                tasks.remove(prompt_id)
            raise
        warnings = [
            f"node {node}: {summary}" for node, summary in node_error_lines(reply.node_errors)
        ]
        # Recorded under the id in the reply: an older server chooses its own.
        queued = Observation("queued", reply.prompt_id, spec.url, number=reply.number)
        return Submitted(self._record_queued(record, queued, warnings), warnings)

    def _record_queued(
        self, record: Record, obs: Observation, warnings: list[str] | None = None
    ) -> Record:
        """Record what the server said of the job it has (queued, running, ...) under the
        id it gave. Raises SubmitUnrecorded when the ledger cannot be written: the job
        is queued and its write-ahead record kept, for the next command that reaches the
        server to settle; said as an uncertain submit (its id printed, exit 11), never as
        the ledger's failure alone, after which a script would resubmit it."""
        try:
            with self.ledger.transaction() as tasks:
                stored = tasks.get(record["prompt_id"]) or record
                if warnings is not None:
                    stored["warnings"] = warnings
                as_the_server_has_it(tasks, stored, obs)
        except (LedgerError, OSError) as exc:
            shown = {**record, "prompt_id": obs.prompt_id}
            apply(shown, obs)
            why = exc.message if isinstance(exc, LedgerError) else exc.strerror or str(exc)
            raise SubmitUnrecorded(record["server"], shown, why) from None
        return stored

    def _confirm(self, client: ServerClient, record: Record, reason: str) -> Submitted:
        """The reply was lost or garbled: ask the server instead of sending the job again."""
        try:
            obs = as_known(client, [record])[record["prompt_id"]]
        except ServerError as exc:
            # Unsettled: this process is done with it, so the next command that reaches
            # the server settles it (see records.submitter_gone; without this mark, once
            # this process is gone).
            with contextlib.suppress(LedgerError, OSError), self.ledger.transaction() as tasks:
                stored = tasks.get(record["prompt_id"])
                if stored is not None and stored["status"] == SUBMITTING:
                    stored["submitter"] = {**(stored.get("submitter") or {}), "finished": True}
                    tasks.put(stored)
                    record = stored
            raise SubmitUncertain(
                record["server"], f"{reason}; then {exc.reason}", record
            ) from None
        if obs.kind == "unknown":
            # Final, so that neither recover nor a retry elsewhere sends this record again.
            self._settle(
                record["prompt_id"],
                status=REJECTED,
                error=job_error(
                    "submit_failed",
                    f"The submit failed ({reason}) and the server does not know the job.",
                ),
            )
            raise SubmitFailed(record["server"], f"{reason}; it does not know the job")
        return Submitted(self._record_queued(record, obs), [])

    def _settle(self, prompt_id: str, status: str, error: dict[str, Any]) -> None:
        with self.ledger.transaction() as tasks:
            stored = tasks.get(prompt_id)
            if stored is not None and stored["status"] == SUBMITTING:
                stored.update(
                    status=status, error=error, finished_at=now_iso(), updated_at=now_iso()
                )
                tasks.put(stored)


def rejection_summary(exc: WorkflowRejected) -> dict[str, Any]:
    return {
        **job_error(exc.error.get("type") or "rejected", exc.error.get("message") or exc.message),
        "details": exc.error.get("details") or None,
        "node_errors": _by_node(node_error_lines(exc.node_errors)),
    }


def node_error_lines(node_errors: dict[str, Any]) -> list[tuple[str, str]]:
    """(node id, one readable line) for each error in ComfyUI's ``node_errors``."""
    lines = []
    for node, info in (node_errors or {}).items():
        if not isinstance(info, dict):
            continue
        class_type = info.get("class_type", "?")
        for err in info.get("errors") or []:
            if isinstance(err, dict):
                text = err.get("message", "error")
                if err.get("details"):
                    text += f": {err['details']}"
                lines.append((str(node), f"{class_type}: {text}"))
    return lines


def _by_node(lines: list[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for node, line in lines:
        grouped.setdefault(node, []).append(line)
    return grouped


def as_known(client: ServerClient, records: list[Record]) -> dict[str, Observation]:
    """What the server says of each write-ahead record (keyed by its prompt_id): asked by
    its id, then, if unknown, by its client_id (an older server gave it an id of its own,
    which the observation carries); "unknown" when neither finds it."""
    heard = client.snapshot([r["prompt_id"] for r in records])
    unknown = [r for r in records if heard[r["prompt_id"]].kind == "unknown"]
    theirs = client.find_by_client_ids([r["client_id"] for r in unknown]) if unknown else {}
    heard.update(client.snapshot(list(theirs.values())) if theirs else {})
    return {r["prompt_id"]: heard[theirs.get(r["client_id"]) or r["prompt_id"]] for r in records}


def as_the_server_has_it(tasks: Records, stored: Record, obs: Observation) -> Record:
    """Record a write-ahead record's job as its server has it: what the server said of it
    (``obs``), under the id the server gave it (an older server chooses its own; the job
    it resubmits then names that id)."""
    old_id = stored["prompt_id"]
    tasks.remove(old_id)
    if obs.prompt_id != old_id:
        stored["submitted_as"] = old_id  # the id printed for it: still finds it
    stored["prompt_id"] = obs.prompt_id
    apply(stored, obs)
    tasks.put(stored)
    if obs.prompt_id != old_id and stored.get("resubmitted_from"):
        parent = tasks.get(stored["resubmitted_from"])
        if parent is not None and parent.get("superseded_by") == old_id:
            parent["superseded_by"] = obs.prompt_id
            tasks.put(parent)
    return stored


def settle_submitting(
    ledger: Store,
    client_for: Callable[[Record], ServerClient],
    records: list[Record],
    deadline: float = REFRESH_DEADLINE,
) -> int:
    """Settle write-ahead records left by a crashed submit, asking each one's own server
    (one round per server, all at once, none waited for longer than ``deadline``: a
    server that does not answer leaves its records as they are). A job the server does
    not know by its id is looked for by its client_id (an older server gave it an id of
    its own) before it is settled as never arrived. The records are updated in place
    (their prompt_id too, for those adopted); returns how many were settled."""
    from comfyctl.fanout import fan_out

    orphans = [r for r in records if r["status"] == SUBMITTING and submitter_gone(r)]
    groups = by_server(orphans)
    if not groups:
        return 0

    def ask(url: str) -> list[tuple[str, Observation]]:
        group = groups[url]
        known = as_known(client_for(group[0]), group)
        verdicts = []
        for record in group:
            obs = known[record["prompt_id"]]
            verdicts.append(
                (record["prompt_id"], never_arrived(record) if obs.kind == "unknown" else obs)
            )
        return verdicts

    answers = fan_out(groups, ask, deadline, name=lambda url: groups[url][0]["server"])
    verdicts = [verdict for answer in answers.values() for verdict in answer.value or []]
    changed = {}
    with ledger.transaction() as tasks:
        for prompt_id, obs in verdicts:
            stored = tasks.get(prompt_id)
            if stored is not None and stored["status"] == SUBMITTING:
                changed[prompt_id] = as_the_server_has_it(tasks, stored, obs)
    for record in orphans:
        record.update(changed.get(record["prompt_id"], {}))
    return len(changed)
