"""Prometheus metrics about the fleet, in the text exposition format.

Nothing here asks a server on its own: the per-server facts come from the fleet probe
behind ``debug-tasks`` (``fleet.fleet_report``) and the stalled/lost/unnoticed counts from
the detection behind ``detect-stuck`` (``stuck.detect``), run at the same time, each
bounded per server by the same deadline. Names follow Prometheus conventions: a
``comfyctl_`` prefix, base units (seconds), ``_total`` only for counters (none here:
the ledger's counts fall when it is pruned, so they are gauges).
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from comfyctl.client import ServerClient
from comfyctl.config import Config, ServerSpec
from comfyctl.records import PENDING, RUNNING, STATUSES, SUBMITTING, age_seconds, parse_time
from comfyctl.render import METRICS_SCHEMA
from comfyctl.store import Record, Store
from comfyctl.stuck import (
    BLOCKED,
    FAILED_UNNOTICED,
    FINISHED_UNNOTICED,
    FORGOTTEN,
    LOST_JOB,
    QUEUED_TOO_LONG,
    STALLED,
    UNREACHABLE,
    Detection,
    DetectOptions,
    detect,
)

CONDITIONS = (
    FINISHED_UNNOTICED,
    FAILED_UNNOTICED,
    STALLED,
    LOST_JOB,
    FORGOTTEN,
    BLOCKED,
    QUEUED_TOO_LONG,
    UNREACHABLE,
)
QUANTILES = (0.5, 0.9, 0.99)


@dataclass
class Family:
    name: str
    kind: str  # gauge, summary
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def add(self, labels: dict[str, str], value: float, suffix: str = "") -> None:
        self.samples.append((self.name + suffix, labels, value))


def collect(
    config: Config,
    records: list[Record],
    ledger: Store,
    client_for_spec: Callable[[ServerSpec], ServerClient],
    spec_for_record: Callable[[Record], ServerSpec],
    client_for_record: Callable[[Record], ServerClient],
    opts: DetectOptions,
    only: set[str] | None = None,
) -> list[Family]:
    """Every metric family, from one fleet probe and one detection round at once.
    ``records``: the jobs to count; ``only``: the configured servers to show (URLs)."""
    from comfyctl.fleet import fleet_report

    found: dict[str, Any] = {}

    def run_detection() -> None:
        try:
            found["detection"] = detect(ledger, records, client_for_record, opts)
        except BaseException as exc:  # raised again in the caller's thread
            found["error"] = exc

    thread = threading.Thread(target=run_detection, daemon=True, name="detect")
    thread.start()
    report = fleet_report(config, records, client_for_spec, spec_for_record, opts.deadline, only)
    thread.join()
    if "error" in found:
        raise found["error"]
    return families(report, records, found["detection"])


def families(
    report: dict[str, Any], records: list[Record], detection: Detection | None
) -> list[Family]:
    """The metric families of one fleet report, the ledger's records and a detection."""
    up = Family(
        "comfyctl_server_up",
        "gauge",
        "1 when the server answered the probe within the timeout, else 0.",
    )
    latency = Family(
        "comfyctl_server_probe_duration_seconds",
        "gauge",
        "How long the server took to answer /system_stats.",
    )
    queue = Family(
        "comfyctl_server_queue_jobs",
        "gauge",
        "Jobs in the server's queue as the server reports it, by state.",
    )
    jobs = Family("comfyctl_jobs", "gauge", "Jobs bound to the server in the ledger, by status.")
    oldest = Family(
        "comfyctl_oldest_job_age_seconds",
        "gauge",
        "Age of the oldest running job (since it started) and pending job (since "
        "it was submitted) in the ledger; absent when there is none.",
    )
    stuck = Family(
        "comfyctl_stuck_jobs",
        "gauge",
        "Jobs detect-stuck finds, by condition (stalled, lost, finished-unnoticed, ...).",
    )
    run = Family(
        "comfyctl_job_run_seconds",
        "summary",
        "Run time of finished jobs, from the server's own start and end timestamps.",
    )
    wait = Family(
        "comfyctl_job_queue_wait_seconds",
        "summary",
        "Time finished jobs waited before they started: the server's own queue "
        "time when it gives one, else from submit.",
    )
    # One series per server name, as Prometheus wants: jobs bound to another spelling of
    # a configured server's URL (jobs.bound_to) count under its name, and the server's
    # own figures are its configured URL's probe.
    shown: dict[str, dict[str, Any]] = {}
    for server in report["servers"]:
        held = shown.get(server["name"])
        if held is None or (server["configured"] and not held["configured"]):
            shown[server["name"]] = server
    name_of = {s["url"]: s["name"] for s in report["servers"]}

    def series(record: Record) -> str:
        return str(name_of.get(record["server_url"], record["server"]))

    by_name: dict[str, list[Record]] = {}
    for record in records:
        by_name.setdefault(series(record), []).append(record)
    findings: Counter[tuple[str, str]] = Counter(
        (series(f.record), f.condition) for f in (detection.findings if detection else [])
    )
    for name, server in shown.items():
        labels = {"server": name}
        mine = by_name.get(name, [])
        up.add(labels, 1.0 if server["reachable"] else 0.0)
        if server["latency_ms"] is not None:
            latency.add(labels, server["latency_ms"] / 1000)
        if server["reachable"]:
            queue.add({**labels, "state": "running"}, server["server_running"])
            queue.add({**labels, "state": "pending"}, server["server_pending"])
        counts = Counter(r["status"] for r in mine)
        for status in STATUSES:
            jobs.add({**labels, "status": status}, counts.get(status, 0))
        running = [
            age_seconds(r.get("started_at") or r.get("submitted_at"))
            for r in mine
            if r["status"] == RUNNING
        ]
        pending = [
            age_seconds(r.get("submitted_at")) for r in mine if r["status"] in (PENDING, SUBMITTING)
        ]
        for state, ages in (("running", running), ("pending", pending)):
            known = [a for a in ages if a is not None]
            if known:
                oldest.add({**labels, "status": state}, round(max(known), 3))
        if detection is not None:
            for condition in CONDITIONS:
                stuck.add({**labels, "condition": condition}, findings[(name, condition)])
        runs, waits = _durations(mine)
        _summary(run, labels, runs)
        _summary(wait, labels, waits)
    return [up, latency, queue, jobs, oldest, stuck, run, wait]


def _durations(records: list[Record]) -> tuple[list[float], list[float]]:
    runs, waits = [], []
    for record in records:
        timing = record.get("server_timing") or {}
        started, finished = (
            parse_time(timing.get("started_at")),
            parse_time(timing.get("finished_at")),
        )
        created = parse_time(timing.get("created_at")) or parse_time(record.get("submitted_at"))
        if started and finished:
            runs.append(max(0.0, (finished - started).total_seconds()))
        if started and created:
            waits.append(max(0.0, (started - created).total_seconds()))
    return runs, waits


def _summary(family: Family, labels: dict[str, str], values: list[float]) -> None:
    ordered = sorted(values)
    for q in QUANTILES:
        value = (
            ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] if ordered else math.nan
        )
        family.add({**labels, "quantile": f"{q:g}"}, value)
    family.add(labels, sum(ordered), "_sum")
    family.add(labels, len(ordered), "_count")


def metrics_json(families: list[Family]) -> dict[str, Any]:
    """The families as one JSON document (``metrics --json``); a value that is not a finite
    number (an empty summary's quantile) is null, as JSON has no NaN."""
    return {
        **METRICS_SCHEMA,
        "families": [
            {
                "name": f.name,
                "type": f.kind,
                "help": f.help,
                "samples": [
                    {
                        "name": name,
                        "labels": labels,
                        "value": value if math.isfinite(value) else None,
                    }
                    for name, labels, value in f.samples
                ],
            }
            for f in families
        ],
    }


def exposition(families: list[Family]) -> str:
    """The Prometheus text exposition format (version 0.0.4)."""
    lines = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for name, labels, value in family.samples:
            text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
            lines.append(
                f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}"
            )
    return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if float(value).is_integer() else repr(round(float(value), 6))
