"""The fleet report behind ``debug-tasks``: every server probed at once, anomalies named.

Servers are those configured plus any the ledger binds jobs to. Each is probed in its
own thread with a deadline, so one dead or hanging server never delays the others.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from comfyctl.client import QueueItem, ServerClient
from comfyctl.config import Config, ServerSpec, server_name_for_url
from comfyctl.fanout import fan_out
from comfyctl.jobs import by_server as group_by_server
from comfyctl.records import ACTIVE, RUNNING, SUCCESS, age_seconds, parse_time
from comfyctl.render import REPORT_SCHEMA
from comfyctl.restart import ServerLog, no_proof, read_log, restart_proof
from comfyctl.store import Record

log = logging.getLogger("comfyctl.fleet")


@dataclass
class Probe:
    """What one server said about itself and about the ledger's active jobs on it."""

    latency_ms: float
    version: str | None
    running: list[str]
    pending: list[str]
    unknown: list[str] = field(default_factory=list)
    running_items: list[QueueItem] = field(default_factory=list)
    log: ServerLog | None = None


def probe(client: ServerClient, active_ids: list[str]) -> Probe:
    log.info("probing %s (%s)", client.spec.name, client.url)
    started = time.monotonic()
    stats = client.system_stats()
    latency = (time.monotonic() - started) * 1000
    version = (stats.get("system") or {}).get("comfyui_version")
    queue = client.queue()
    queued = {item.prompt_id for item in queue.running + queue.pending}
    unknown = (
        [
            pid
            for pid, obs in client.snapshot([p for p in active_ids if p not in queued]).items()
            if obs.kind == "unknown"
        ]
        if active_ids
        else []
    )
    return Probe(
        round(latency, 1),
        version,
        [i.prompt_id for i in queue.running],
        [i.prompt_id for i in queue.pending],
        unknown,
        queue.running,
        read_log(client) if unknown else None,
    )


def fleet_report(
    config: Config,
    records: list[Record],
    client_for_spec: Callable[[ServerSpec], ServerClient],
    spec_for_record: Callable[[Record], ServerSpec],
    deadline: float,
    only: set[str] | None = None,
) -> dict[str, Any]:
    """``records``: the jobs to report (a --server filter is the caller's: jobs.bound_to);
    ``only``: the configured servers to report (URLs), None for all. A server the
    records are bound to is reported too, configured or not."""
    specs = {s.url: s for s in config.servers.values() if only is None or s.url in only}
    for record in records:
        specs.setdefault(record["server_url"], spec_for_record(record))
    by_server: dict[str, list[Record]] = {url: [] for url in specs} | group_by_server(records)
    active = {url: [r for r in rs if r["status"] in ACTIVE] for url, rs in by_server.items()}
    known = {r["prompt_id"] for r in records}
    answers = fan_out(
        list(specs),
        lambda url: probe(client_for_spec(specs[url]), [r["prompt_id"] for r in active[url]]),
        deadline,
        name=lambda url: specs[url].name,
    )
    servers, jobs, anomalies = [], [], []
    for url, spec in specs.items():
        answer, mine = answers[url], by_server.get(url, [])
        result: Probe | None = answer.value
        oldest = min(active[url], key=lambda r: r.get("submitted_at") or "", default=None)
        servers.append(
            {
                "name": spec.name,
                "url": url,
                "configured": spec.configured,
                "reachable": result is not None,
                "reason": answer.error.reason if answer.error else None,
                "latency_ms": result.latency_ms if result else None,
                "version": result.version if result else None,
                "server_running": len(result.running) if result else None,
                "server_pending": len(result.pending) if result else None,
                "ledger_counts": dict(Counter(r["status"] for r in mine)),
                "oldest_active": oldest["prompt_id"] if oldest else None,
                "oldest_active_age_s": _round(age_seconds(oldest["submitted_at"]))
                if oldest
                else None,
            }
        )
        if result is not None:
            anomalies += _server_anomalies(spec, result, mine, records)
            anomalies += _foreign_jobs(spec, result, mine, known)
        for record in active[url]:
            row = _job_row(record, result)
            jobs.append(row)
            if row["server_status"] == "finished":
                anomalies.append(
                    {
                        "kind": "finished-unnoticed",
                        "server": spec.name,
                        "prompt_id": record["prompt_id"],
                        "detail": f"{spec.name} finished it but the ledger says "
                        f"{record['status']}; 'comfyctl recover' records it",
                    }
                )
    anomalies += _binding_anomalies(config, records)
    anomalies += _slow_jobs(records)
    anomalies += _ran_twice(records)
    return {**REPORT_SCHEMA, "servers": servers, "jobs": jobs, "anomalies": anomalies}


def _job_row(record: Record, result: Probe | None) -> dict[str, Any]:
    progress = record.get("progress") or {}
    position, server_says = None, None
    if result is not None:
        pid = record["prompt_id"]
        if pid in result.running:
            position, server_says = 0, "running"
        elif pid in result.pending:
            position, server_says = result.pending.index(pid) + 1, "pending"
        else:  # not queued: finished (in its history) or unknown to it
            server_says = "unknown" if pid in result.unknown else "finished"
    return {
        "prompt_id": record["prompt_id"],
        "server": record["server"],
        "server_url": record["server_url"],
        "status": record["status"],
        "server_status": server_says,
        "percent": progress.get("percent"),
        "node": progress.get("node"),
        "progress_age_s": _round(age_seconds(progress.get("updated_at"))),
        "queue_position": position,
    }


def _server_anomalies(
    spec: ServerSpec, result: Probe, mine: list[Record], everything: list[Record]
) -> list[dict[str, Any]]:
    """Jobs the server does not know: lost in a restart only on proof (see
    ``comfyctl.restart``), else forgotten (deleted from its queue or history)."""
    found: list[dict[str, Any]] = []
    by_id = {r["prompt_id"]: r for r in mine}
    for pid in result.unknown:
        record = by_id.get(pid)
        proof = restart_proof(record, result.log, everything) if record else None
        if proof is not None:
            found.append(
                {
                    "kind": "lost-in-restart",
                    "server": spec.name,
                    "prompt_id": pid,
                    "detail": f"the ledger thinks it is active but {spec.name} does not "
                    f"know it: {proof}",
                }
            )
        else:
            why = no_proof(record, result.log) if record else "no record"
            found.append(
                {
                    "kind": "unknown-to-server",
                    "server": spec.name,
                    "prompt_id": pid,
                    "detail": f"the ledger thinks it is active but {spec.name} does not "
                    f"know it (not queued, not in history); {why}",
                }
            )
    return found


def _foreign_jobs(
    spec: ServerSpec, result: Probe, mine: list[Record], known: set[str]
) -> list[dict[str, Any]]:
    """A job comfyctl did not submit that is running while ours wait behind it."""
    waiting = [r for r in mine if r["prompt_id"] in result.pending and r["status"] in ACTIVE]
    found: list[dict[str, Any]] = []
    for item in result.running_items:
        if item.prompt_id in known or not waiting:
            continue
        # detect-stuck dates it on the jobs it blocks (ComfyUI 0.3.64 gives no start time).
        seen = [
            b["first_seen"]
            for r in waiting
            if (b := r.get("blocked_by") or {}).get("prompt_id") == item.prompt_id
        ]
        held = age_seconds(min(seen)) if seen else None
        how_long = (
            f"running for at least {held:.0f}s"
            if held is not None
            else "running for an unknown time (detect-stuck times it)"
        )
        found.append(
            {
                "kind": "foreign-job-blocking",
                "server": spec.name,
                "prompt_id": item.prompt_id,
                "client_id": item.client_id,
                "running_for_s": _round(held),
                "blocked": len(waiting),
                "detail": f"{item.prompt_id} was not submitted by comfyctl (not in the "
                f"ledger; client_id {item.client_id or 'none'}); {how_long}; "
                f"{len(waiting)} of our job(s) wait behind it",
            }
        )
    return found


def _binding_anomalies(config: Config, records: list[Record]) -> list[dict[str, Any]]:
    found = []
    for record in records:
        if record["status"] not in ACTIVE:
            continue
        name, url = record["server"], record["server_url"]
        configured = config.servers.get(name)
        if configured is not None and configured.url != url:
            found.append(
                {
                    "kind": "server-url-changed",
                    "server": name,
                    "prompt_id": record["prompt_id"],
                    "detail": f"bound to {url}, but {name} is now configured as "
                    f"{configured.url}; comfyctl keeps using {url}",
                }
            )
        elif configured is None and name != server_name_for_url(url):
            found.append(
                {
                    "kind": "server-not-configured",
                    "server": name,
                    "prompt_id": record["prompt_id"],
                    "detail": f"bound to {name} ({url}), which is no longer configured",
                }
            )
    return found


RAN_TWICE_SHOWN = 7 * 86400  # how long after its end a job that ran twice is shown


def _ran_twice(records: list[Record]) -> list[dict[str, Any]]:
    """Resubmitted jobs whose original ran to its end anyway (supersede: the server was
    unreachable, not gone); shown for a week after the original ended."""
    found = []
    for record in records:
        ended = age_seconds(record.get("finished_at"))
        if (record.get("recovered") or {}).get("original") == "ran" and (
            ended is None or ended < RAN_TWICE_SHOWN
        ):
            found.append(
                {
                    "kind": "ran-twice",
                    "server": record["server"],
                    "prompt_id": record["prompt_id"],
                    "detail": f"ran to its end ({record['status']}) on {record['server']} "
                    f"although it had been resubmitted as {record['superseded_by']}",
                }
            )
    return found


def _slow_jobs(records: list[Record]) -> list[dict[str, Any]]:
    """Running jobs that have run far longer than finished jobs usually take."""
    durations = []
    for record in records:
        start, end = parse_time(record.get("started_at")), parse_time(record.get("finished_at"))
        if record["status"] == SUCCESS and start and end:
            durations.append((end - start).total_seconds())
    if len(durations) < 3:
        return []
    typical = statistics.median(durations)
    limit = max(3 * typical, typical + 60)
    found = []
    for record in records:
        elapsed = age_seconds(record.get("started_at"))
        if record["status"] == RUNNING and elapsed is not None and elapsed > limit:
            found.append(
                {
                    "kind": "running-long",
                    "server": record["server"],
                    "prompt_id": record["prompt_id"],
                    "detail": f"running for {elapsed:.0f}s; finished jobs typically take "
                    f"{typical:.0f}s",
                }
            )
    return found


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
