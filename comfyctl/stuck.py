"""Finding jobs that are stuck, lost or finished unnoticed, and repairing them.

Detection asks each job's bound server only, one status round per server, all servers
at once (``fanout``); ``classify`` then decides from the record and that server's answer
alone. Repairs re-check the record under the ledger lock before acting, so two
overlapping ``recover`` runs never act twice on one job (a resubmit claims the job by
writing ``superseded_by`` in the same transaction that writes the new job's record).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from comfyctl import ws
from comfyctl.client import QueueItem, ServerClient
from comfyctl.config import ServerSpec
from comfyctl.errors import ComfyctlError, ServerError, SubmitUncertain
from comfyctl.events import from_ws_message
from comfyctl.fanout import fan_out
from comfyctl.inputs import Uploader, place_inputs
from comfyctl.jobs import by_server
from comfyctl.lease import TTL, claim_all, leases_for, listen_lease, new_owner, release_quietly
from comfyctl.records import (
    ACTIVE,
    PENDING,
    REJECTED,
    SUBMITTING,
    SUCCESS,
    TERMINAL,
    Observation,
    age_seconds,
    apply,
    job_error,
    now_iso,
    parse_time,
    submitter_gone,
)
from comfyctl.records import (
    LOST as LOST_STATUS,
)
from comfyctl.render import ACTION_SCHEMA, FINDING_SCHEMA
from comfyctl.restart import (
    ServerLog,
    later_submissions,
    mark_alive,
    no_proof,
    note_submitted,
    read_log,
    restart_proof,
)
from comfyctl.store import Record, Records, Store
from comfyctl.submission import Submitter, settle_submitting
from comfyctl.supersede import reap_servers

log = logging.getLogger("comfyctl.stuck")

FINISHED_UNNOTICED = "finished-unnoticed"
FAILED_UNNOTICED = "failed-unnoticed"
STALLED = "stalled"
LOST_JOB = "lost"
FORGOTTEN = "forgotten"
BLOCKED = "blocked"
QUEUED_TOO_LONG = "queued-too-long"
UNREACHABLE = "unreachable"


@dataclass
class DetectOptions:
    stall_after: float = 30.0
    max_queue_age: float | None = None
    sample: float = 0.0
    # Each run listens this long to running jobs nobody is following (stopping at the
    # first sign of movement) and records what it heard, so runs from cron can compare.
    listen: float = 2.0
    # A suspected stall is confirmed by listening this long (a node may report progress
    # less often than the short listen, or the watcher that recorded it may have died).
    confirm: float = 3.0
    deadline: float = 15.0
    # recover --resubmit also takes lost jobs someone already acknowledged.
    acknowledged_lost: bool = False
    # ... and forgotten ones too (recover --resubmit-forgotten).
    acknowledged_forgotten: bool = False


def candidates(records: list[Record], opts: DetectOptions) -> list[Record]:
    """What detection looks at: unfinished jobs, and lost jobs not yet resubmitted (a lost
    job already acknowledged by recover only when ``acknowledged_lost``; a forgotten one
    only when ``acknowledged_forgotten``)."""

    def wanted(r: Record) -> bool:
        if r["status"] in ACTIVE:
            return True
        if r["status"] != LOST_STATUS or r.get("superseded_by"):
            return False
        if not r.get("recovered"):
            return True
        if (r.get("error") or {}).get("type") == FORGOTTEN:
            return opts.acknowledged_forgotten
        return opts.acknowledged_lost

    return [r for r in records if wanted(r)]


@dataclass
class Finding:
    record: Record
    condition: str
    detail: str
    observation: Observation | None = None
    evidence: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        r = self.record
        return {
            **FINDING_SCHEMA,
            "prompt_id": r["prompt_id"],
            "server": r["server"],
            "server_url": r["server_url"],
            "condition": self.condition,
            "detail": self.detail,
            "ledger_status": r["status"],
            "progress": r.get("progress"),
            "evidence": self.evidence,
        }


@dataclass
class Detection:
    findings: list[Finding]
    checked: int
    servers: dict[str, str | None] = field(default_factory=dict)  # url -> None ok | reason

    @property
    def all_unreachable(self) -> bool:
        return bool(self.servers) and all(v is not None for v in self.servers.values())


@dataclass
class Heard:
    """What a short listen on a job's socket told."""

    moved: bool  # progress, a new node, an output or the end
    node: str | None = None  # the node it is executing (replayed on connect, or heard)
    value: float | None = None
    max: float | None = None


def classify(
    record: Record,
    obs: Observation | None,
    failure: str | None,
    opts: DetectOptions,
    sampled_progress: bool | None = None,
) -> Finding | None:
    """What is wrong with one active job, judged from its own server's answer only
    (``failure``: what the server did instead of answering, e.g. "did not answer
    (timeout)")."""
    if failure is not None:
        if record["status"] == LOST_STATUS:
            return None  # nothing to learn about it while its server is down
        return Finding(record, UNREACHABLE, f"server {record['server']} {failure}")
    assert obs is not None
    if record["status"] == LOST_STATUS and obs.kind != "unknown" and obs.kind != "finished":
        return None  # the server knows it again: the next watch or refresh revives it
    if obs.kind == "finished":
        if obs.outcome == SUCCESS:
            count = sum(
                len(v)
                for out in (obs.outputs or {}).values()
                if isinstance(out, dict)
                for v in out.values()
                if isinstance(v, list)
            )
            return Finding(
                record,
                FINISHED_UNNOTICED,
                f"the server finished it successfully ({count} output(s)); "
                f"the ledger still says {record['status']}",
                obs,
            )
        message = (obs.error or {}).get("message", obs.outcome)
        return Finding(
            record, FAILED_UNNOTICED, f"the server recorded {obs.outcome}: {message}".strip(), obs
        )
    if obs.kind == "unknown":
        if record["status"] == SUBMITTING and not submitter_gone(record):
            return None  # its submit may still be in flight
        # Lost or only forgotten: decided by ``_judge_unknown`` from restart evidence.
        # ``_judge_unknown`` adds "; <why it is lost or only forgotten>" to this clause.
        detail = (
            f"recorded lost earlier and not resubmitted, and {record['server']} still "
            "does not know it"
            if record["status"] == LOST_STATUS
            else f"{record['server']} no longer knows it (not pending, not running, "
            "not in its history)"
        )
        return Finding(record, FORGOTTEN, detail, obs)
    if obs.kind == "running":
        return _judge_running(record, opts, sampled_progress, obs)
    if obs.kind == "queued":
        return _judge_queued(record, opts, obs)
    return None


def _judge_queued(record: Record, opts: DetectOptions, obs: Observation) -> Finding | None:
    """Queued behind a job comfyctl did not submit that has held the server for longer
    than ``stall_after``; or (with ``max_queue_age``) queued too long."""
    blocker = record.get("blocked_by") or {}
    held = age_seconds(blocker.get("first_seen"))
    if blocker and held is not None and held >= opts.stall_after:
        owner = blocker.get("client_id") or "none"
        return Finding(
            record,
            BLOCKED,
            f"queued behind {blocker['prompt_id']}, which comfyctl "
            f"did not submit (not in the ledger; client_id {owner}): "
            f"running for at least {held:.0f}s (seen running since "
            f"{blocker['first_seen']}); its progress goes only to its own client",
            obs,
            {
                "blocking_prompt_id": blocker["prompt_id"],
                "blocking_client_id": blocker.get("client_id"),
                "running_for_s": round(held, 1),
            },
        )
    if opts.max_queue_age is not None:
        age = age_seconds(record.get("submitted_at"))
        if age is not None and age > opts.max_queue_age:
            where = f" at position {obs.position + 1}" if obs.position is not None else ""
            behind = f", behind {blocker['prompt_id']} (not comfyctl's)" if blocker else ""
            return Finding(record, QUEUED_TOO_LONG, f"queued for {age:.0f}s{where}{behind}", obs)
    return None


def _judge_running(
    record: Record, opts: DetectOptions, sampled_progress: bool | None, obs: Observation
) -> Finding | None:
    """Stalled only on evidence: a sample that saw nothing move, or no movement across
    checks (a listener's recorded progress, or detect-stuck's own listens) for longer
    than the threshold. A job nobody heard is not called stalled from its age alone (a
    model load reports no progress)."""
    if sampled_progress is True:
        return None
    evidence = _stall_evidence(record)
    if sampled_progress is False:
        return Finding(
            record,
            STALLED,
            f"nothing moved during a {opts.sample:g}s sample of "
            f"its WebSocket ({_describe(evidence)})",
            obs,
            evidence,
        )
    age = age_seconds(last_movement(record))
    if age is not None and age > opts.stall_after:
        evidence["still_for_s"] = round(age, 1)
        return Finding(
            record,
            STALLED,
            f"running, no movement for {age:.0f}s (threshold "
            f"{opts.stall_after:g}s): {_describe(evidence)}",
            obs,
            evidence,
        )
    return None


def last_movement(record: Record) -> str | None:
    """When anyone last saw the job move: a listener's recorded progress, or a change
    detect-stuck heard (``probe.since``)."""
    stamps = [
        s
        for s in (
            (record.get("progress") or {}).get("updated_at"),
            (record.get("probe") or {}).get("since"),
        )
        if s
    ]
    return max(
        stamps,
        key=lambda s: parse_time(s) or datetime.min.replace(tzinfo=timezone.utc),
        default=None,
    )


def _stall_evidence(record: Record) -> dict[str, Any]:
    progress = record.get("progress") or {}
    probe = record.get("probe") or {}
    percent = progress.get("percent") if progress.get("max") else None
    if percent is None and probe.get("value") is not None and probe.get("max"):
        percent = round(100.0 * probe["value"] / probe["max"], 2)
    return {
        "node": probe.get("node") or progress.get("node"),
        "node_type": probe.get("node_type"),
        "percent": percent,
        "checks": probe.get("checks"),
        "since": last_movement(record),
    }


def _describe(evidence: dict[str, Any]) -> str:
    node = evidence.get("node")
    where = (
        "node unknown"
        if node is None
        else f"node {node}" + (f" ({evidence['node_type']})" if evidence.get("node_type") else "")
    )
    percent = evidence.get("percent")
    text = f"{where}, last percent {'unknown' if percent is None else f'{percent:.2f}%'}"
    if evidence.get("checks"):
        text += f", {evidence['checks']} check(s) by detect-stuck"
    return text


@dataclass
class _Round:
    """One server's answer: its jobs, the jobs it runs, and its log (read afterwards)."""

    observations: dict[str, Observation]
    running: list[QueueItem]
    log: ServerLog | None


def _ask(client: ServerClient, prompt_ids: list[str]) -> _Round:
    observations = client.snapshot(prompt_ids)
    kinds = {o.kind for o in observations.values()}
    # Who holds the server matters only while one of ours waits behind it.
    running = client.queue().running if "queued" in kinds else []
    # Read after the queue: an entry later than this read's newest is after the sighting.
    server_log = read_log(client) if kinds & {"queued", "running", "unknown"} else None
    return _Round(observations, running, server_log)


def detect(
    ledger: Store,
    records: list[Record],
    client_for: Callable[[Record], ServerClient],
    opts: DetectOptions,
) -> Detection:
    """Ask every bound server about its own jobs, concurrently, and classify."""
    # Crashed submits first, as every refresh does: a job an older server took under an
    # id of its own is found by its client_id, not judged lost (and resubmitted).
    settle_submitting(ledger, client_for, records, opts.deadline)
    active = candidates(records, opts)
    groups = by_server(active)
    for url, group in groups.items():
        log.info("asking %s (%s) about %d job(s)", group[0]["server"], url, len(group))
    answers = fan_out(
        list(groups),
        lambda url: _ask(client_for(groups[url][0]), [r["prompt_id"] for r in groups[url]]),
        opts.deadline,
        name=lambda url: groups[url][0]["server"],
    )
    rounds = {url: a.value for url, a in answers.items() if a.value is not None}
    tasks = ledger.load()
    notes: dict[str, dict[str, Any]] = {}  # prompt_id -> fields to store
    for url, answer in rounds.items():
        _note_sightings(groups[url], answer, tasks, notes)
    reap_servers(
        ledger,
        client_for,
        records,
        opts.deadline,
        skip={url for url, answer in answers.items() if answer.error},
    )
    running = [
        r
        for url, rs in groups.items()
        for r in rs
        if url in rounds
        and (obs := rounds[url].observations.get(r["prompt_id"])) is not None
        and obs.kind == "running"
    ]

    def judge(samples: dict[str, bool]) -> list[Finding]:
        found = []
        for url, group in groups.items():
            answer = answers[url]
            for record in group:
                obs = answer.value.observations.get(record["prompt_id"]) if answer.value else None
                # What the server did, in the error's own words ("answered with an error
                # (http 502)", "is unreachable (refused)").
                failure = f"{answer.error.what} ({answer.error.reason})" if answer.error else None
                finding = classify(record, obs, failure, opts, samples.get(record["prompt_id"]))
                if finding is not None:
                    found.append(finding)
        return found

    leases, owner = leases_for(ledger), new_owner("detect-stuck")
    seconds = opts.sample or opts.listen
    # Listen only to jobs nobody listens to, holding their lease meanwhile: a watcher
    # connecting as the job while we listen would lose its socket when ours closes. A
    # job another process listens to is judged from what that process records.
    won = (
        claim_all(
            leases,
            [listen_lease(r["prompt_id"]) for r in running],
            owner,
            seconds + opts.confirm + TTL,
        )
        if seconds > 0 and running
        else set()
    )
    probing = [r for r in running if listen_lease(r["prompt_id"]) in won]
    try:
        heard = listen(probing, client_for, seconds) if probing else {}
        samples = {pid: h.moved for pid, h in heard.items()} if opts.sample > 0 else {}
        for record in probing:
            if record["prompt_id"] in heard:
                _note_probe(record, heard[record["prompt_id"]], ledger, notes)
        findings = judge(samples)
        suspected = [
            f.record
            for f in findings
            if f.condition == STALLED
            and f.record["prompt_id"] not in samples
            and f.record in probing
        ]
        if suspected and opts.confirm > 0:
            for pid, confirmed in listen(suspected, client_for, opts.confirm).items():
                if confirmed.moved:
                    record = next(r for r in suspected if r["prompt_id"] == pid)
                    _note_probe(record, confirmed, ledger, notes)
            findings = judge(samples)
    finally:
        release_quietly(leases, won, owner)
    _judge_unknown(findings, rounds, tasks)
    _store(ledger, notes)
    servers = {url: (a.error.reason if a.error else None) for url, a in answers.items()}
    return Detection(findings, len(active), servers)


def _note_sightings(
    group: list[Record], answer: _Round, tasks: Records, notes: dict[str, dict[str, Any]]
) -> None:
    """What a status round teaches that a later run needs: jobs seen alive (with the log
    time that dates the sighting), and the foreign job each waiting one is queued behind."""
    foreign = next((item for item in answer.running if item.prompt_id not in tasks), None)
    for record in group:
        obs = answer.observations.get(record["prompt_id"])
        if obs is None or obs.kind not in ("queued", "running"):
            continue
        note = notes.setdefault(record["prompt_id"], {"observations": [obs]})
        if mark_alive(record, answer.log):
            note["seen_alive"] = record["seen_alive"]
        if obs.kind != "queued":
            continue
        before = record.get("blocked_by") or {}
        if foreign is None:
            blocked = None
        elif before.get("prompt_id") == foreign.prompt_id:
            blocked = before
        else:
            blocked = {
                "prompt_id": foreign.prompt_id,
                "client_id": foreign.client_id,
                "first_seen": now_iso(),
            }
        if blocked != (record.get("blocked_by") or None):
            record["blocked_by"] = note["blocked_by"] = blocked


def _note_probe(
    record: Record, heard: Heard, ledger: Store, notes: dict[str, dict[str, Any]]
) -> None:
    """Fold a listen into the record's ``probe``: ``since`` is when anyone last saw the
    job move, so runs of detect-stuck from cron compare across time."""
    before = record.get("probe") or {}
    node = heard.node or before.get("node")
    moved = heard.moved or (heard.node is not None and before.get("node") not in (None, heard.node))
    # Nothing heard moving: the last movement anyone recorded stands.
    since = now_iso() if moved else last_movement(record) or now_iso()
    probe = {
        "at": now_iso(),
        "node": node,
        "node_type": before.get("node_type"),
        "value": heard.value if heard.value is not None else before.get("value"),
        "max": heard.max if heard.value is not None else before.get("max"),
        "since": since,
        "checks": 1 if moved or not before else before.get("checks", 1) + 1,
    }
    if node is not None and node != before.get("node"):
        probe["node_type"] = _node_type(ledger, record, node)
    record["probe"] = probe
    notes.setdefault(record["prompt_id"], {})["probe"] = probe


def _node_type(ledger: Store, record: Record, node: str) -> str | None:
    try:
        graph = ledger.load_workflow(record["workflow"]) if record.get("workflow") else {}
    except ComfyctlError:
        return None
    entry = graph.get(node)
    return entry.get("class_type") if isinstance(entry, dict) else None


def _judge_unknown(findings: list[Finding], rounds: dict[str, _Round], tasks: Records) -> None:
    """A job its server does not know is lost only on proof of a restart; without proof
    it was forgotten (history or queue entry deleted), and is not resubmitted."""
    unknown = [f for f in findings if f.condition == FORGOTTEN]
    if not unknown:
        return
    later = later_submissions(tasks, [f.record for f in unknown])
    for finding in unknown:
        answer = rounds.get(finding.record["server_url"])
        server_log = answer.log if answer else None
        proof = restart_proof(finding.record, server_log, later)
        if proof is not None:
            finding.condition, finding.detail = LOST_JOB, f"{finding.detail}; {proof}"
            finding.evidence = {"restart": proof}
        else:
            why = no_proof(finding.record, server_log)
            finding.detail = f"{finding.detail}; {why}"
            finding.evidence = {"restart": None, "why": why}


def _store(ledger: Store, notes: dict[str, dict[str, Any]]) -> None:
    """Write what this run saw, so the next run can compare. Only queued/running facts,
    sightings and listens are written: outcomes are left for ``recover``."""
    if not notes:
        return
    with ledger.transaction() as tasks:
        for pid, note in notes.items():
            stored = tasks.get(pid)
            if stored is None or stored["status"] in TERMINAL:
                continue
            changed = False
            for obs in note.get("observations", []):
                if stored["status"] in (SUBMITTING, PENDING, LOST_STATUS):
                    changed |= apply(stored, obs)
            for key in ("seen_alive", "blocked_by", "probe"):
                if key in note and stored.get(key) != note[key]:
                    stored[key] = note[key]
                    changed = True
            if changed:
                tasks.put(stored)


def listen(
    records: list[Record], client_for: Callable[[Record], ServerClient], seconds: float
) -> dict[str, Heard]:
    """Listen on each job's WebSocket (as its client_id) for up to ``seconds``, stopping
    at the first sign of movement. Only for jobs nobody else listens to: ComfyUI keeps one
    socket per client_id, so connecting takes the events away from any other."""
    heard: dict[str, Heard] = {}

    def one(record: Record) -> None:
        end = time.monotonic() + seconds
        result = Heard(False)
        try:
            sock = client_for(record).connect_ws(record["client_id"])
        except ServerError:
            return
        try:
            while not result.moved and time.monotonic() < end:
                sock.settimeout(max(0.05, end - time.monotonic()))
                try:
                    frame = sock.recv()
                except TimeoutError:
                    break
                msg = json.loads(frame) if isinstance(frame, str) else None
                obs = (
                    from_ws_message(msg, record["server_url"], record["prompt_id"])
                    if isinstance(msg, dict)
                    else None
                )
                if obs is None:
                    continue
                if obs.node is not None:
                    result.node = obs.node
                # What a reconnect replays (the current node, without a prompt_id) is not
                # movement; progress, a new node, an output or the end are.
                assert isinstance(msg, dict)
                result.moved = bool((msg.get("data") or {}).get("prompt_id"))
                if obs.kind == "progress":
                    result.value, result.max = obs.value, obs.max
        except (OSError, ValueError, ws.WebSocketError):
            return
        finally:
            sock.close()
        heard[record["prompt_id"]] = result

    threads = [threading.Thread(target=one, args=(r,), daemon=True) for r in records]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 5)
    return heard


# -- repair --------------------------------------------------------------------------------


@dataclass
class RepairOptions:
    resubmit: bool = False
    resubmit_forgotten: bool = False
    interrupt_stalled: bool = False
    to: ServerSpec | None = None
    dry_run: bool = False


@dataclass
class Action:
    finding: Finding
    action: str  # record-success, record-failure, mark-lost, resubmit, interrupt, none
    resolved: bool = False
    detail: str = ""
    new_prompt_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        r = self.finding.record
        return {
            **ACTION_SCHEMA,
            "prompt_id": r["prompt_id"],
            "server": r["server"],
            "server_url": r["server_url"],
            "condition": self.finding.condition,
            "action": self.action,
            "resolved": self.resolved,
            "detail": self.detail,
            "new_prompt_id": self.new_prompt_id,
        }


def plan(findings: list[Finding], opts: RepairOptions) -> list[Action]:
    """What ``recover`` will do about each finding (pure)."""
    actions = []
    for finding in findings:
        condition = finding.condition
        if condition == FINISHED_UNNOTICED:
            actions.append(Action(finding, "record-success"))
        elif condition == FAILED_UNNOTICED:
            actions.append(Action(finding, "record-failure"))
        elif condition == LOST_JOB:
            actions.append(Action(finding, "resubmit" if opts.resubmit else "mark-lost"))
        elif condition == FORGOTTEN:
            # No proof of a restart: it may have finished (its history deleted) or been
            # taken off the queue on purpose. Sent again only when asked for by name.
            actions.append(
                Action(finding, "resubmit" if opts.resubmit_forgotten else "mark-forgotten")
            )
        elif condition == STALLED and opts.interrupt_stalled:
            actions.append(Action(finding, "interrupt-resubmit" if opts.resubmit else "interrupt"))
        elif condition == UNREACHABLE and opts.to is not None and opts.resubmit:
            actions.append(Action(finding, "resubmit"))
        else:
            actions.append(Action(finding, "none", detail="reported only"))
    return actions


class Repairer:
    def __init__(
        self,
        ledger: Store,
        client_for_record: Callable[[Record], ServerClient],
        client_for_spec: Callable[[ServerSpec], ServerClient],
        spec_for_record: Callable[[Record], ServerSpec],
        on_finished: Callable[[Record], object] | None = None,
        uploader: Uploader | None = None,
    ) -> None:
        self.ledger = ledger
        self.on_finished = on_finished  # told of each job a repair leaves terminal
        self.uploader = uploader
        self.client_for_record = client_for_record
        self.submitter = Submitter(ledger, client_for_spec)
        self.spec_for_record = spec_for_record
        self.resubmitted: list[Record] = []  # the new jobs, dated on their logs by run_all

    def run_all(self, actions: list[Action], opts: RepairOptions) -> list[Action]:
        """Run each action, then date the jobs resubmitted on their servers' logs, as
        submit does (``note_submitted``): a later restart is proof for them too."""
        try:
            return [self.run(action, opts) for action in actions]
        finally:
            with contextlib.suppress(ComfyctlError):  # a missing mark only weakens proof
                note_submitted(self.ledger, self.resubmitted, self.client_for_record)
            self.resubmitted = []

    def run(self, action: Action, opts: RepairOptions) -> Action:
        try:
            getattr(self, "_" + action.action.replace("-", "_"))(action, opts)
        except ComfyctlError as exc:
            action.resolved, action.detail = False, str(exc)
        if self.on_finished is not None and action.resolved and action.action != "none":
            stored = self.ledger.get(action.finding.record["prompt_id"])
            if stored is not None:
                self.on_finished(stored)
        return action

    def _none(self, action: Action, opts: RepairOptions) -> None:
        action.resolved = False

    def _record_success(self, action: Action, opts: RepairOptions) -> None:
        self._apply(action, action.finding.observation, "finished-unnoticed")

    _record_failure = _record_success

    def _mark_lost(self, action: Action, opts: RepairOptions) -> None:
        obs = Observation(
            "lost", action.finding.record["prompt_id"], action.finding.record["server_url"]
        )
        self._apply(action, obs, "lost")

    def _mark_forgotten(self, action: Action, opts: RepairOptions) -> None:
        record = action.finding.record
        why = (action.finding.evidence or {}).get("why") or "no proof of a restart"
        obs = Observation(
            "lost",
            record["prompt_id"],
            record["server_url"],
            error=job_error(
                FORGOTTEN,
                f"Server {record['server']} no longer knows this job, and nothing "
                f"proves it restarted: {why}.",
            ),
        )
        self._apply(action, obs, FORGOTTEN)

    def _apply(self, action: Action, obs: Observation | None, how: str) -> None:
        assert obs is not None
        pid = action.finding.record["prompt_id"]
        with self.ledger.transaction() as tasks:
            stored = tasks.get(pid)
            if (
                stored is None
                or stored["status"] not in (*ACTIVE, LOST_STATUS)
                or stored.get("recovered")
            ):
                action.resolved, action.detail = True, "already settled by another process"
                return
            apply(stored, obs)
            stored["recovered"] = {"at": now_iso(), "how": how, "by": "comfyctl recover"}
            tasks.put(stored)
            action.finding.record = stored
        action.resolved = True
        action.detail = f"recorded {stored['status']}"
        if stored.get("outputs"):
            action.detail += f" with {len(stored['outputs'])} output(s)"

    def _interrupt(self, action: Action, opts: RepairOptions) -> None:
        record = action.finding.record
        how = self.client_for_record(record).cancel(record["prompt_id"])
        if how not in ("jobs-api", "dequeued", "interrupted"):
            action.resolved, action.detail = False, f"not interrupted ({how})"
            return
        obs = Observation("cancelled", record["prompt_id"], record["server_url"])
        self._apply(action, obs, f"stalled; interrupted ({how})")

    def _interrupt_resubmit(self, action: Action, opts: RepairOptions) -> None:
        self._interrupt(action, opts)
        if action.resolved:
            self._resubmit(action, opts)

    def _resubmit(self, action: Action, opts: RepairOptions) -> None:
        """Send the stored workflow again, once: the claim (superseded_by) and the new
        write-ahead record are written in one transaction."""
        old = action.finding.record
        spec = opts.to or self.spec_for_record(old)
        if not old.get("workflow"):
            raise ComfyctlError(f"{old['prompt_id']} has no stored workflow to resubmit.")
        graph = self.ledger.load_workflow(old["workflow"])
        files = old.get("inputs") or []
        if files and self.uploader is not None:
            # Before anything is written: the inputs go to the server chosen now.
            graph = place_inputs(graph, files, spec, self.uploader)
        new = self.submitter.prepare(
            graph, spec, old.get("labels"), resubmitted_from=old["prompt_id"], inputs=files
        )
        with self.ledger.transaction() as tasks:
            stored = tasks.get(old["prompt_id"])
            if stored is None or stored.get("superseded_by"):
                action.resolved = True
                action.detail = "already resubmitted by another run"
                action.new_prompt_id = stored.get("superseded_by") if stored else None
                return
            if stored["status"] in ACTIVE:
                apply(stored, Observation("lost", stored["prompt_id"], stored["server_url"]))
            stored["superseded_by"] = new["prompt_id"]
            stored["recovered"] = {
                "at": now_iso(),
                "how": f"resubmitted to {spec.name}",
                "by": "comfyctl recover",
            }
            tasks.put(stored)
            tasks.put(new)
        try:
            result = self.submitter.send(new, graph, spec)
        except SubmitUncertain as exc:
            # It may be queued: named, and its claim kept (its record is settled later).
            action.new_prompt_id = (exc.record or new)["prompt_id"]
            raise
        except ComfyctlError:
            with self.ledger.transaction() as tasks:
                sent = tasks.get(new["prompt_id"])
                stored = tasks.get(old["prompt_id"])
                # Certainly not queued (never sent, or refused): release the claim so a
                # later run can retry. Otherwise the new job may exist: keep the claim.
                if (
                    (sent is None or sent["status"] == REJECTED)
                    and stored is not None
                    and stored.get("superseded_by") == new["prompt_id"]
                ):
                    stored["superseded_by"] = None
                    tasks.put(stored)
            raise
        if result.record["prompt_id"] != new["prompt_id"]:  # the server chose its own id
            with self.ledger.transaction() as tasks:
                stored = tasks.get(old["prompt_id"])
                if stored is not None:
                    stored["superseded_by"] = result.record["prompt_id"]
                    tasks.put(stored)
        self.resubmitted.append(result.record)
        action.resolved = True
        action.new_prompt_id = result.record["prompt_id"]
        action.detail = f"resubmitted to {spec.name} as {action.new_prompt_id}"
