"""Finding jobs that are stuck, lost or finished unnoticed, and repairing them.

Detection asks each job's bound server only, one status round per server, all servers
at once (``fanout``); ``classify`` then decides from the record and that server's answer
alone. Repairs re-check the record under the ledger lock before acting, so two
overlapping ``recover`` runs never act twice on one job (a resubmit claims the job by
writing ``superseded_by`` in the same transaction that writes the new job's record).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from comfyctl.client import ServerClient
from comfyctl.config import ServerSpec
from comfyctl.errors import ComfyctlError, ServerError
from comfyctl.events import from_ws_message
from comfyctl.fanout import fan_out
from comfyctl.ledger import Ledger, Record
from comfyctl.records import (
    ACTIVE,
    PENDING,
    REJECTED,
    SUBMITTING,
    SUCCESS,
    Observation,
    age_seconds,
    apply,
    now_iso,
    submitter_gone,
)
from comfyctl.records import (
    LOST as LOST_STATUS,
)
from comfyctl.submission import Submitter

log = logging.getLogger("comfyctl.stuck")

FINISHED_UNNOTICED = "finished-unnoticed"
FAILED_UNNOTICED = "failed-unnoticed"
STALLED = "stalled"
LOST_JOB = "lost"
QUEUED_TOO_LONG = "queued-too-long"
UNREACHABLE = "unreachable"
FINDING_SCHEMA = {"schema": "comfyctl.finding", "schema_version": 1}
ACTION_SCHEMA = {"schema": "comfyctl.recovery-action", "schema_version": 1}


@dataclass
class DetectOptions:
    stall_after: float = 30.0
    max_queue_age: float | None = None
    sample: float = 0.0
    # A stall suspected from the ledger's progress age is confirmed by listening this long
    # (the watcher that wrote that progress may have died while the job went on).
    confirm: float = 3.0
    deadline: float = 15.0
    # recover --resubmit also takes lost jobs someone already acknowledged.
    acknowledged_lost: bool = False


def candidates(records: list[Record], opts: DetectOptions) -> list[Record]:
    """What detection looks at: unfinished jobs, and lost jobs not yet resubmitted (a lost
    job already acknowledged by recover only when ``acknowledged_lost``)."""
    return [r for r in records if r["status"] in ACTIVE or (
        r["status"] == LOST_STATUS and not r.get("superseded_by")
        and (opts.acknowledged_lost or not r.get("recovered")))]


@dataclass
class Finding:
    record: Record
    condition: str
    detail: str
    observation: Observation | None = None

    def to_json(self) -> dict[str, Any]:
        r = self.record
        return {**FINDING_SCHEMA, "prompt_id": r["prompt_id"], "server": r["server"],
                "server_url": r["server_url"], "condition": self.condition,
                "detail": self.detail, "ledger_status": r["status"],
                "progress": r.get("progress")}


@dataclass
class Detection:
    findings: list[Finding]
    checked: int
    servers: dict[str, str | None] = field(default_factory=dict)  # url -> None ok | reason

    @property
    def all_unreachable(self) -> bool:
        return bool(self.servers) and all(v is not None for v in self.servers.values())


def classify(record: Record, obs: Observation | None, unreachable: str | None,
             opts: DetectOptions, sampled_progress: bool | None = None) -> Finding | None:
    """What is wrong with one active job, judged from its own server's answer only."""
    if unreachable is not None:
        if record["status"] == LOST_STATUS:
            return None  # nothing to learn about it while its server is down
        return Finding(record, UNREACHABLE, f"server {record['server']} is unreachable "
                                            f"({unreachable})")
    assert obs is not None
    if record["status"] == LOST_STATUS and obs.kind != "unknown" and obs.kind != "finished":
        return None  # the server knows it again: the next watch or refresh revives it
    if obs.kind == "finished":
        if obs.outcome == SUCCESS:
            count = sum(len(v) for out in (obs.outputs or {}).values() if isinstance(out, dict)
                        for v in out.values() if isinstance(v, list))
            return Finding(record, FINISHED_UNNOTICED,
                           f"the server finished it successfully ({count} output(s)); "
                           f"the ledger still says {record['status']}", obs)
        message = (obs.error or {}).get("message", obs.outcome)
        return Finding(record, FAILED_UNNOTICED, f"the server recorded {obs.outcome}: "
                                                 f"{message}".strip(), obs)
    if obs.kind == "unknown":
        if record["status"] == SUBMITTING and not submitter_gone(record):
            return None  # its submit may still be in flight
        if record["status"] == LOST_STATUS:
            return Finding(record, LOST_JOB, "recorded lost earlier and not resubmitted; "
                                             f"{record['server']} still does not know it", obs)
        return Finding(record, LOST_JOB, "not pending, not running, not in the history of "
                                         f"{record['server']} (restarted or evicted)", obs)
    if obs.kind == "running":
        return _judge_running(record, opts, sampled_progress, obs)
    if obs.kind == "queued" and opts.max_queue_age is not None:
        age = age_seconds(record.get("submitted_at"))
        if age is not None and age > opts.max_queue_age:
            where = f" at position {obs.position + 1}" if obs.position is not None else ""
            return Finding(record, QUEUED_TOO_LONG, f"queued for {age:.0f}s{where}", obs)
    return None


def _judge_running(record: Record, opts: DetectOptions, sampled_progress: bool | None,
                   obs: Observation) -> Finding | None:
    """Stalled only on evidence: a sample that saw nothing move, or progress a watcher
    recorded that has not changed for longer than the threshold. A job nobody recorded
    is not called stalled from its age alone (a model load reports no progress)."""
    progress = record.get("progress") or {}
    percent = float(progress.get("percent") or 0.0)
    if sampled_progress is True:
        return None
    if sampled_progress is False:
        return Finding(record, STALLED, f"nothing moved during a sample of its WebSocket "
                                        f"(last recorded {percent:.2f}%)", obs)
    age = age_seconds(progress.get("updated_at"))
    if age is not None and age > opts.stall_after:
        return Finding(record, STALLED, f"running, progress unchanged at {percent:.2f}% for "
                                        f"{age:.0f}s (threshold {opts.stall_after:g}s)", obs)
    return None


def _recently_recorded(record: Record, opts: DetectOptions) -> bool:
    """A watcher is writing this job's progress: listening as its client_id would only
    take the watcher's socket away (ComfyUI keeps one socket per client_id)."""
    age = age_seconds((record.get("progress") or {}).get("updated_at"))
    return age is not None and age <= opts.stall_after


def detect(ledger: Ledger, records: list[Record],
           client_for: Callable[[Record], ServerClient], opts: DetectOptions) -> Detection:
    """Ask every bound server about its own jobs, concurrently, and classify."""
    active = candidates(records, opts)
    groups: dict[str, list[Record]] = {}
    for record in active:
        groups.setdefault(record["server_url"], []).append(record)
    for url, group in groups.items():
        log.info("asking %s (%s) about %d job(s)", group[0]["server"], url, len(group))
    answers = fan_out(
        list(groups),
        lambda url: client_for(groups[url][0]).snapshot([r["prompt_id"] for r in groups[url]]),
        opts.deadline, name=lambda url: groups[url][0]["server"])
    _note_running(ledger, [o for a in answers.values() if a.value for o in a.value.values()])
    running = [r for url, rs in groups.items() for r in rs
               if (answers[url].value or {}).get(r["prompt_id"]) is not None
               and (answers[url].value or {})[r["prompt_id"]].kind == "running"]
    samples: dict[str, bool] = {}
    if opts.sample > 0:
        quiet = [r for r in running if not _recently_recorded(r, opts)]
        samples = sample_progress(quiet, client_for, opts.sample)

    def judge() -> list[Finding]:
        found = []
        for url, group in groups.items():
            answer = answers[url]
            for record in group:
                obs = answer.value.get(record["prompt_id"]) if answer.value else None
                reason = answer.error.reason if answer.error else None
                finding = classify(record, obs, reason, opts, samples.get(record["prompt_id"]))
                if finding is not None:
                    found.append(finding)
        return found

    findings = judge()
    suspected = [f.record for f in findings
                 if f.condition == STALLED and f.record["prompt_id"] not in samples]
    if suspected and opts.confirm > 0:
        samples.update(sample_progress(suspected, client_for, opts.confirm))
        findings = judge()
    _add_restart_evidence(findings, client_for)
    servers = {url: (a.error.reason if a.error else None) for url, a in answers.items()}
    return Detection(findings, len(active), servers)


def _add_restart_evidence(findings: list[Finding],
                          client_for: Callable[[Record], ServerClient]) -> None:
    """Say why a job is lost when the server shows it: a prompt counter below the job's
    number, or an empty queue and history, mean it restarted (rather than someone
    deleting the job or its history entry)."""
    lost: dict[str, list[Finding]] = {}
    for finding in findings:
        if finding.condition == LOST_JOB:
            lost.setdefault(finding.record["server_url"], []).append(finding)
    for group in lost.values():
        try:
            counter = client_for(group[0].record).prompt_counter()
        except ServerError:
            continue
        for finding in group:
            number = finding.record.get("number")
            if counter is None:
                finding.detail += "; its queue and history are empty: it restarted"
            elif isinstance(number, int) and counter < number:
                finding.detail += (f"; its prompt counter is at {counter}, this job was "
                                   f"number {number}: it restarted")


def _note_running(ledger: Ledger, observations: list[Observation]) -> None:
    """Record when a job was first seen running, so a later run can age its stall.
    Only queued/running facts are written: outcomes are left for ``recover``."""
    updates = [o for o in observations if o.kind in ("queued", "running")]
    if not updates:
        return
    with ledger.transaction() as tasks:
        for obs in updates:
            stored = tasks.get(obs.prompt_id)
            if stored is not None and stored["status"] in (SUBMITTING, PENDING, LOST_STATUS) \
                    and apply(stored, obs):
                tasks.put(stored)


def sample_progress(records: list[Record], client_for: Callable[[Record], ServerClient],
                    seconds: float) -> dict[str, bool]:
    """Listen on each job's WebSocket (as its client_id) for ``seconds``: did it move?"""
    import websocket

    moved: dict[str, bool] = {}

    def listen(record: Record) -> None:
        end = time.monotonic() + seconds
        seen = False
        try:
            sock = client_for(record).connect_ws(record["client_id"])
        except ServerError:
            return
        try:
            while not seen and time.monotonic() < end:
                sock.settimeout(max(0.05, end - time.monotonic()))
                try:
                    frame = sock.recv()
                except websocket.WebSocketTimeoutException:
                    break
                msg = json.loads(frame) if isinstance(frame, str) else None
                # What a reconnect replays (the current node, without a prompt_id) is not
                # movement; progress, a new node, an output or the end are.
                if isinstance(msg, dict) and (msg.get("data") or {}).get("prompt_id"):
                    seen = from_ws_message(msg, record["server_url"],
                                           record["prompt_id"]) is not None
        except (OSError, ValueError, websocket.WebSocketException):
            return
        finally:
            sock.close()
        moved[record["prompt_id"]] = seen

    threads = [threading.Thread(target=listen, args=(r,), daemon=True) for r in records]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 5)
    return moved


# -- repair --------------------------------------------------------------------------------


@dataclass
class RepairOptions:
    resubmit: bool = False
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
        return {**ACTION_SCHEMA, "prompt_id": r["prompt_id"], "server": r["server"],
                "server_url": r["server_url"], "condition": self.finding.condition,
                "action": self.action, "resolved": self.resolved, "detail": self.detail,
                "new_prompt_id": self.new_prompt_id}


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
        elif condition == STALLED and opts.interrupt_stalled:
            actions.append(Action(finding, "interrupt-resubmit" if opts.resubmit else
                                  "interrupt"))
        elif condition == UNREACHABLE and opts.to is not None and opts.resubmit:
            actions.append(Action(finding, "resubmit"))
        else:
            actions.append(Action(finding, "none", detail="reported only"))
    return actions


class Repairer:
    def __init__(self, ledger: Ledger, client_for_record: Callable[[Record], ServerClient],
                 client_for_spec: Callable[[ServerSpec], ServerClient],
                 spec_for_record: Callable[[Record], ServerSpec],
                 on_finished: Callable[[Record], object] | None = None) -> None:
        self.ledger = ledger
        self.on_finished = on_finished  # told of each job a repair leaves terminal
        self.client_for_record = client_for_record
        self.submitter = Submitter(ledger, client_for_spec)
        self.spec_for_record = spec_for_record

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
        obs = Observation("lost", action.finding.record["prompt_id"],
                          action.finding.record["server_url"])
        self._apply(action, obs, "lost")

    def _apply(self, action: Action, obs: Observation | None, how: str) -> None:
        assert obs is not None
        pid = action.finding.record["prompt_id"]
        with self.ledger.transaction() as tasks:
            stored = tasks.get(pid)
            if stored is None or stored["status"] not in (*ACTIVE, LOST_STATUS) \
                    or stored.get("recovered"):
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
        new = self.submitter.prepare(graph, spec, old.get("labels"),
                                     resubmitted_from=old["prompt_id"])
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
            stored["recovered"] = {"at": now_iso(), "how": f"resubmitted to {spec.name}",
                                   "by": "comfyctl recover"}
            tasks.put(stored)
            tasks.put(new)
        try:
            result = self.submitter.send(new, graph, spec)
        except ComfyctlError:
            with self.ledger.transaction() as tasks:
                sent = tasks.get(new["prompt_id"])
                stored = tasks.get(old["prompt_id"])
                # Certainly not queued (never sent, or refused): release the claim so a
                # later run can retry. Otherwise the new job may exist: keep the claim.
                if (sent is None or sent["status"] == REJECTED) and stored is not None \
                        and stored.get("superseded_by") == new["prompt_id"]:
                    stored["superseded_by"] = None
                    tasks.put(stored)
            raise
        if result.record["prompt_id"] != new["prompt_id"]:  # the server chose its own id
            with self.ledger.transaction() as tasks:
                stored = tasks.get(old["prompt_id"])
                if stored is not None:
                    stored["superseded_by"] = result.record["prompt_id"]
                    tasks.put(stored)
        action.resolved = True
        action.new_prompt_id = result.record["prompt_id"]
        action.detail = f"resubmitted to {spec.name} as {action.new_prompt_id}"

