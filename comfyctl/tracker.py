"""Following many jobs on many servers at once.

One worker thread per server polls that server's status for its own jobs only; one
socket thread per job listens as that job's client_id. Both turn what they hear into
observations on one queue; the tracker (in the caller's thread) folds them into the
records with ``records.apply``, hands changes to a callback for display, and writes
the ledger in batches (progress at most once per ``flush_interval``, state changes at
once). A server that hangs or refuses only ever stalls its own worker.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from comfyctl.backoff import Backoff
from comfyctl.client import ServerClient
from comfyctl.errors import ComfyctlError, ServerError
from comfyctl.events import from_ws_message
from comfyctl.lease import (
    RENEW_EVERY,
    TTL,
    claim,
    leases_for,
    listen_lease,
    new_owner,
    release_quietly,
)
from comfyctl.records import (
    PENDING,
    RUNNING,
    SUBMITTING,
    SUCCESS,
    TERMINAL,
    Observation,
    age_seconds,
    apply,
    job_error,
    progress_changed_at,
    submitter_gone,
)
from comfyctl.restart import ServerLog, no_proof, read_log, restart_proof
from comfyctl.store import Record, Store
from comfyctl.supersede import reap_quietly

log = logging.getLogger("comfyctl.tracker")

# After the WebSocket says "done", the history entry can lag a little behind.
HISTORY_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
# A running job's socket that hears nothing for this long is reconnected: another
# connection as the job's client_id may have taken its events.
SOCKET_SILENCE = 10.0
# How many of each server's queued jobs are listened to before they run (see
# Tracker._start_listeners): enough to be connected before the running job ends.
LISTEN_AHEAD = 4
OBSERVE_EVERY = 0.25  # how often a follower looks at the store (the holder writes every ~1 s)
CLAIM_EVERY = 1.0  # how often a follower tries to take the lease over


@dataclass
class WatchOptions:
    poll_interval: float = 2.0
    timeout: float | None = None
    stall_timeout: float | None = None
    flush_interval: float = 1.0
    use_websocket: bool = True


@dataclass
class TrackerEvent:
    """What the display hears about: ``state``, ``progress``, ``stalled``, ``server``, and
    ``queued`` (a pending job's place in its server's queue changed: ``position``, 0 = next)."""

    kind: str
    record: Record | None = None
    server: str | None = None
    detail: str | None = None
    position: int | None = None


@dataclass
class _ServerState:
    client: ServerClient
    name: str
    prompt_ids: set[str] = field(default_factory=set)
    fetch: queue.Queue[str] = field(default_factory=queue.Queue)
    reachable: bool | None = None
    log: ServerLog | None = None  # the server's log, read when it did not know a job


class Tracker:
    def __init__(
        self,
        ledger: Store,
        records: list[Record],
        client_for: Callable[[Record], ServerClient],
        options: WatchOptions,
        on_event: Callable[[TrackerEvent], None],
        on_finished: Callable[[Record], object] | None = None,
    ) -> None:
        self.ledger = ledger
        # Told once per job that turns terminal, after it is on disk (hooks: comfyctl.hooks).
        self.on_finished = on_finished
        self.records = {r["prompt_id"]: r for r in records}
        self.options = options
        self.on_event = on_event
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.stop = threading.Event()
        self.servers: dict[str, _ServerState] = {}
        self._pending_writes: dict[str, list[Observation]] = {}
        self._stalled: set[str] = set()
        self._unknown_count: dict[str, int] = {}
        self._positions: dict[str, int | None] = {}
        self._job_stops: dict[str, threading.Event] = {}
        self._threads: list[threading.Thread] = []
        self.leases = leases_for(ledger)
        self.owner = new_owner("watch")
        self._held: dict[str, bool] = {}  # prompt_id -> we hold its listen lease
        self._seen: dict[str, tuple[Any, ...]] = {}  # what _observe last handed on
        for record in records:
            url = record["server_url"]
            if url not in self.servers:
                self.servers[url] = _ServerState(client_for(record), record["server"])
            self.servers[url].prompt_ids.add(record["prompt_id"])

    # -- public --------------------------------------------------------------------------

    def active(self) -> list[Record]:
        return [r for r in self.records.values() if r["status"] not in TERMINAL]

    def run(self) -> dict[str, Record]:
        """Follow until every job is terminal. Raises TimeoutError when ``timeout`` passes."""
        deadline = time.monotonic() + self.options.timeout if self.options.timeout else None
        try:
            self._start_threads()
            last_flush, interval = time.monotonic(), self.options.flush_interval
            while self.active():
                try:
                    item = self.inbox.get(timeout=0.2)
                except queue.Empty:
                    item = None
                if item is not None:
                    self._handle(item)
                now = time.monotonic()
                if now - last_flush >= interval:
                    self.flush()
                    last_flush = time.monotonic()
                    # Progress writes cost at most ~10% of the time, however big the
                    # ledger (state changes are still written at once).
                    interval = max(self.options.flush_interval, 10 * (last_flush - now))
                self._check_stalls()
                if deadline is not None and now >= deadline:
                    raise TimeoutError
        finally:
            self.stop.set()
            with contextlib.suppress(Exception):
                self.flush()
        return self.records

    def flush(self) -> None:
        """Write what was observed since the last flush, re-applied to the ledger's records
        (so concurrent changes by other processes, like a cancel, are respected)."""
        if not self._pending_writes:
            return
        pending, self._pending_writes = self._pending_writes, {}
        try:
            self._write(pending)
        except BaseException:  # e.g. LedgerLocked: keep them for the next flush
            for prompt_id, observations in pending.items():
                self._pending_writes.setdefault(prompt_id, [])[:0] = observations
            raise

    def _write(self, pending: dict[str, list[Observation]]) -> None:
        with self.ledger.transaction() as tasks:
            for prompt_id, observations in pending.items():
                stored = tasks.get(prompt_id)
                if stored is None:
                    continue
                state = self.servers.get(stored["server_url"])
                changed = False
                for obs in observations:
                    changed |= apply(stored, obs, state.name if state else None)
                if changed:
                    tasks.put(stored)

    # -- the loop ------------------------------------------------------------------------

    def _handle(self, item: Any) -> None:
        if isinstance(item, TrackerEvent):
            self.on_event(item)
            return
        if isinstance(item, _Followed):
            self._follow(item.record)
            return
        obs: Observation = item
        record = self.records.get(obs.prompt_id)
        if record is None or record["status"] in TERMINAL:
            return
        state = self.servers[record["server_url"]]
        if obs.kind == "done":
            state.fetch.put(obs.prompt_id)
            return
        if obs.kind == "unknown":
            obs = self._judge_unknown(record, obs)
            if obs.kind == "unknown":
                return
        else:
            self._unknown_count.pop(obs.prompt_id, None)
        if obs.kind == "queued" and self._positions.get(obs.prompt_id) != obs.position:
            self._positions[obs.prompt_id] = obs.position
            self.on_event(TrackerEvent("queued", record, position=obs.position))
        before_status = record["status"]
        if not apply(record, obs, state.name):
            return
        writes = self._pending_writes.setdefault(obs.prompt_id, [])
        if obs.kind == "progress" and writes and writes[-1].kind == "progress":
            writes[-1] = obs  # throttle: only the newest progress of a burst is written
        else:
            writes.append(obs)
        if record["status"] != before_status:
            self._stalled.discard(obs.prompt_id)
            self._start_listeners(record["server_url"])
            if record["status"] in TERMINAL:
                self._job_stops.get(obs.prompt_id, threading.Event()).set()
                self.flush()  # a finished job is on disk before anyone is told
                if self.on_finished is not None:
                    self.on_finished(record)
            self.on_event(TrackerEvent("state", record))
        else:
            self._stalled.discard(obs.prompt_id)
            self.on_event(TrackerEvent("progress", record))

    def _follow(self, stored: Record) -> None:
        """Take what the lease holder wrote (never going back: a stale copy of a job we
        already know further along is ignored)."""
        record = self.records.get(stored["prompt_id"])
        if (
            record is None
            or record["status"] in TERMINAL
            or record["server_url"] != stored.get("server_url")
        ):
            return
        if _rank(stored["status"]) < _rank(record["status"]):
            return
        before, changed = record["status"], False
        for key in _FOLLOWED:
            if key in stored and record.get(key) != stored[key]:
                record[key] = copy.deepcopy(stored[key])
                changed = True
        if not changed:
            return
        self._stalled.discard(record["prompt_id"])
        if record["status"] != before:
            self._start_listeners(record["server_url"])
            if record["status"] in TERMINAL:
                self._job_stops.get(record["prompt_id"], threading.Event()).set()
                if self.on_finished is not None:
                    self.on_finished(record)
            self.on_event(TrackerEvent("state", record))
        else:
            self.on_event(TrackerEvent("progress", record))

    def _judge_unknown(self, record: Record, obs: Observation) -> Observation:
        """The server does not know the job. Twice in a row (unless its submit may still be
        in flight) means it is gone: lost in a restart, or forgotten."""
        if record["status"] == SUBMITTING and not submitter_gone(record):
            return obs
        count = self._unknown_count.get(record["prompt_id"], 0) + 1
        self._unknown_count[record["prompt_id"]] = count
        if count < 2:
            return obs
        # Lost in a restart only on proof; else forgotten (its history or queue entry was
        # deleted), which recover does not resubmit unless asked (comfyctl.restart).
        server_log = self.servers[record["server_url"]].log
        proof = restart_proof(record, server_log, list(self.records.values()))
        return Observation(
            "lost",
            record["prompt_id"],
            record["server_url"],
            error=job_error(
                "lost" if proof else "forgotten",
                f"Server {record['server']} no longer knows this job (not queued, not running, "
                f"not in history): {proof or no_proof(record, server_log)}.",
            ),
        )

    def _check_stalls(self) -> None:
        limit = self.options.stall_timeout
        if not limit:
            return
        for record in self.active():
            if record["status"] != RUNNING or record["prompt_id"] in self._stalled:
                continue
            age = age_seconds(progress_changed_at(record))
            if age is not None and age > limit:
                self._stalled.add(record["prompt_id"])
                percent = (record.get("progress") or {}).get("percent", 0.0)
                self.on_event(
                    TrackerEvent(
                        "stalled",
                        record,
                        record["server"],
                        f"no progress for {age:.0f}s at {percent:.2f}%",
                    )
                )

    # -- threads -------------------------------------------------------------------------

    def _start_threads(self) -> None:
        log.info("following %d job(s) on %d server(s)", len(self.active()), len(self.servers))
        for url, state in self.servers.items():
            self._spawn(self._server_worker, state, name=f"poll {url}")
            self._spawn(self._history_fetcher, state, name=f"fetch {url}")
        self._start_listeners()
        if self.options.use_websocket:
            self._spawn(self._renewer, name="leases")

    def _start_listeners(self, server_url: str | None = None) -> None:
        """Per job a listener (the lease holder's socket, or a follower of what the holder
        writes), for every job that is not simply queued and for the next LISTEN_AHEAD
        queued ones of each server, in queue order. ComfyUI runs one job at a time and
        sends every change of its queue to every open socket: listening to all queued jobs
        at once costs jobs x jobs messages. Called again whenever a job's status changes."""
        for url, state in self.servers.items():
            if server_url is not None and url != server_url:
                continue
            active = [
                self.records[pid]
                for pid in state.prompt_ids
                if self.records[pid]["status"] not in TERMINAL
            ]
            queued = sorted(
                (r for r in active if r["status"] == PENDING and r.get("number") is not None),
                key=_queue_order,
            )
            later = {r["prompt_id"] for r in queued[LISTEN_AHEAD:]}
            for record in sorted(active, key=_queue_order):
                prompt_id = record["prompt_id"]
                if prompt_id in self._job_stops or prompt_id in later:
                    continue
                job_stop = self._job_stops.setdefault(prompt_id, threading.Event())
                self._spawn(
                    self._socket_worker,
                    state,
                    prompt_id,
                    record["client_id"],
                    job_stop,
                    name=f"ws {prompt_id}",
                )

    def _spawn(self, target: Callable[..., None], *args: Any, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _active_ids(self, state: _ServerState) -> list[str]:
        return [pid for pid in state.prompt_ids if self.records[pid]["status"] not in TERMINAL]

    def _server_worker(self, state: _ServerState) -> None:
        """Poll the server: the source of truth when the socket is quiet or gone."""
        while not self.stop.is_set():
            ids = self._active_ids(state)
            if not ids:
                return
            try:
                observations = state.client.snapshot(ids)
            except ServerError as exc:
                self._server_state(state, False, exc.reason)
            except Exception as exc:  # a bug must not silently end this server's polling
                log.warning("polling %s failed: %r", state.name, exc)
                self._server_state(state, False, type(exc).__name__)
            else:
                reached = state.reachable is not True  # for the first time, or again
                self._server_state(state, True, None)
                if any(o.kind == "unknown" for o in observations.values()):
                    state.log = read_log(state.client)  # read before the loop judges them
                for obs in observations.values():
                    self.inbox.put(obs)
                if reached:
                    reap_quietly(self.ledger, state.client)
            self.stop.wait(self.options.poll_interval)

    def _server_state(self, state: _ServerState, reachable: bool, reason: str | None) -> None:
        previous, state.reachable = state.reachable, reachable
        if previous == reachable or (previous is None and reachable):
            return
        self.inbox.put(
            TrackerEvent(
                "server",
                None,
                state.name,
                "reachable again" if reachable else f"unreachable ({reason})",
            )
        )

    def _history_fetcher(self, state: _ServerState) -> None:
        """After a WebSocket end-of-run signal, read the outcome from the history."""
        while not self.stop.is_set():
            try:
                prompt_id = state.fetch.get(timeout=0.2)
            except queue.Empty:
                continue
            for delay in HISTORY_RETRY_DELAYS:
                if self.stop.is_set():
                    return
                try:
                    obs = state.client.status(prompt_id)
                except Exception:
                    break  # the poller reports the server, and will see the outcome too
                if obs.kind == "finished":
                    self.inbox.put(obs)
                    break
                self.stop.wait(delay)

    def _socket_worker(
        self, state: _ServerState, prompt_id: str, client_id: str, job_stop: threading.Event
    ) -> None:
        """Hold the job's lease and listen as its client_id (reconnecting with backoff when
        the socket drops); while another process holds it, follow the job through what
        that process writes to the store, and take over when it is gone."""
        name = listen_lease(prompt_id)
        backoff, last_claim = Backoff(0.5, 10.0), 0.0
        try:
            while not (self.stop.is_set() or job_stop.is_set()):
                if not self._held.get(prompt_id):
                    # Claimed first: the usual watcher holds every lease, and then never
                    # needs to read the store for what someone else heard.
                    if self.options.use_websocket and time.monotonic() - last_claim >= CLAIM_EVERY:
                        last_claim = time.monotonic()
                        self._try_claim(prompt_id, name)
                    if not self._held.get(prompt_id):
                        self._observe(prompt_id)
                        self.stop.wait(OBSERVE_EVERY)
                        continue
                if self._listen(state, prompt_id, client_id, job_stop):
                    backoff.reset()
                self.stop.wait(backoff.wait())
        finally:
            if self._held.pop(prompt_id, False):
                release_quietly(self.leases, name, self.owner)

    def _try_claim(self, prompt_id: str, name: str) -> None:
        try:
            taken = claim(self.leases, name, self.owner)
        except ComfyctlError as exc:  # e.g. LedgerLocked: try again later
            log.debug("lease %s: %s", name, exc)
            return
        if taken:
            log.info("holding the lease of %s (%s)", prompt_id, self.owner)
            self._held[prompt_id] = True

    def _renewer(self) -> None:
        """Keep every lease this tracker holds alive; a lease someone else took (we were
        too slow to renew) is given up, so two processes never listen to one job."""
        while not self.stop.wait(RENEW_EVERY):
            for prompt_id in [p for p, held in list(self._held.items()) if held]:
                try:
                    kept = self.leases.renew_lease(listen_lease(prompt_id), self.owner, TTL)
                except ComfyctlError as exc:
                    log.debug("renewing the lease of %s: %s", prompt_id, exc)
                    continue
                if not kept:
                    log.info("lost the lease of %s to another process", prompt_id)
                    self._held[prompt_id] = False

    def _observe(self, prompt_id: str) -> None:
        """One look at the store: hand a change the holder wrote to the loop."""
        try:
            stored = self.ledger.get(prompt_id)
        except ComfyctlError:
            return
        if stored is None:
            return
        view = _followed_view(stored)
        if view != self._seen.get(prompt_id):
            self._seen[prompt_id] = view
            self.inbox.put(_Followed(stored))

    def _listen(
        self, state: _ServerState, prompt_id: str, client_id: str, job_stop: threading.Event
    ) -> bool:
        """One connection, while we hold the lease. False when it could not be made."""
        import websocket

        try:
            sock = state.client.connect_ws(client_id)
        except ServerError:
            return False
        log.info("listening for %s on %s as its client_id", prompt_id, state.name)
        sock.settimeout(0.5)
        heard = time.monotonic()
        # Once this connection heard execution_start it hears every output too, so
        # execution_success alone is the whole outcome (no /history read per job).
        heard_start, start_timing = False, None
        try:
            while not (self.stop.is_set() or job_stop.is_set()) and self._held.get(prompt_id):
                try:
                    frame = sock.recv()
                except websocket.WebSocketTimeoutException:
                    # A socket of this client_id opened elsewhere (an older comfyctl, a
                    # holder that lost its lease late) takes the events, and its closing
                    # makes the server forget ours: a running job whose socket stays quiet
                    # gets a fresh connection (the server re-sends its current node).
                    if (
                        time.monotonic() - heard > SOCKET_SILENCE
                        and self.records[prompt_id]["status"] == RUNNING
                    ):
                        break
                    continue
                heard = time.monotonic()
                if not isinstance(frame, str):
                    continue  # binary preview frames
                try:
                    msg = json.loads(frame)
                except ValueError:
                    continue
                obs = (
                    from_ws_message(msg, state.client.url, prompt_id)
                    if isinstance(msg, dict)
                    else None
                )
                if obs is None:
                    continue
                if obs.kind == "running":
                    heard_start, start_timing = True, obs.timing
                elif obs.kind == "succeeded":
                    if not heard_start:  # outputs came before this connection: ask /history
                        obs = Observation("done", prompt_id, state.client.url, source="ws")
                    else:
                        timing = {**(obs.timing or {}), **(start_timing or {})}
                        timing["finished_at"] = (obs.timing or {}).get("finished_at")
                        obs = Observation(
                            "finished",
                            prompt_id,
                            state.client.url,
                            source="ws",
                            outcome=SUCCESS,
                            timing=timing if any(timing.values()) else None,
                        )
                self.inbox.put(obs)
        except (OSError, websocket.WebSocketException) as exc:
            log.debug("socket for %s dropped: %s", prompt_id, type(exc).__name__)
        finally:
            # Closed before the lease goes: the server must forget this socket before the
            # next holder connects, or its cleanup would forget the next one's.
            with contextlib.suppress(Exception):
                sock.close()
        return True


class _Followed:
    """A job's record as the lease holder wrote it to the store."""

    def __init__(self, record: Record) -> None:
        self.record = record


_FOLLOWED = (
    "status",
    "started_at",
    "finished_at",
    "number",
    "progress",
    "progress_history",
    "outputs",
    "error",
)


def _queue_order(record: Record) -> tuple[bool, float]:
    """The order a server runs its queue in (by prompt number; unnumbered ones last)."""
    number = record.get("number")
    return (number is None, number if isinstance(number, (int, float)) else 0)


_RANK = {SUBMITTING: 0, PENDING: 1, RUNNING: 2}


def _followed_view(record: Record) -> tuple[Any, ...]:
    progress = record.get("progress") or {}
    return (
        record.get("status"),
        progress.get("value"),
        progress.get("max"),
        progress.get("node"),
        progress.get("updated_at"),
        len(record.get("outputs") or []),
        bool(record.get("error")),
    )


def _rank(status: str) -> int:
    return _RANK.get(status, 3)
