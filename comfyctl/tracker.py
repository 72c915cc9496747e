"""Following many jobs on many servers at once.

Per server, one thread polls that server's status for its own jobs only, and one connector
opens the WebSockets of its jobs (one per job, as the job's client_id: ComfyUI sends a job's
events only there). One listen loop reads every server's sockets, without ever waiting on
one. What they hear becomes observations on one queue; the tracker (in the caller's thread)
folds them into the records with ``records.apply``, hands changes to a callback for
display, and writes the ledger in batches (progress at most once per ``flush_interval``,
state changes at once). A server that hangs or refuses only ever stalls its own threads.
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import logging
import queue
import selectors
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from comfyctl import ws
from comfyctl.backoff import Backoff
from comfyctl.client import ServerClient
from comfyctl.errors import ComfyctlError, LedgerInterrupted, ServerError
from comfyctl.events import from_ws_text
from comfyctl.lease import (
    RENEW_EVERY,
    TTL,
    claim_all,
    leases_for,
    listen_lease,
    new_owner,
    release_quietly,
)
from comfyctl.records import (
    FINAL,
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
ANNOUNCE_WITHIN = 0.25  # an ended job is written and told about at most this much later
# After a read, what comes in this long is read together: a burst of frames costs one
# wake-up of the loop and of the tracker instead of one per frame.
READ_GAP = 0.05
# How long the end waits for the listen loop and the connectors to close their sockets
# and give their leases up (one round, a handshake; a store that does not answer is not
# waited for longer).
LISTENER_END = 2.0


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
    prompt_ids: set[str] = field(default_factory=set)  # its jobs not yet ended here
    # For its fetcher: a job whose outcome to read (its id), a crashed submit's record to
    # settle (see Tracker._judge_unknown), or None (the end).
    fetch: queue.Queue[str | Record | None] = field(default_factory=queue.Queue)
    # The listen loop's (Tracker._listen_loop, one for all servers): this server's jobs
    # handed to it and the ones it looks after. Its connector's (Tracker._connector): jobs
    # to connect, and jobs connected (or not), handed back under ``handoff``.
    joining: queue.Queue[_Listening] = field(default_factory=queue.Queue)
    listening: dict[str, _Listening] = field(default_factory=dict)
    to_connect: queue.Queue[_Listening | None] = field(default_factory=queue.Queue)
    connected: queue.Queue[tuple[_Listening, ws.WebSocket | None]] = field(
        default_factory=queue.Queue
    )
    handoff: threading.Lock = field(default_factory=threading.Lock)
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
        on_drained: Callable[[], object] | None = None,
    ) -> None:
        self.ledger = ledger
        # Told once per job that turns terminal, after it is on disk (hooks: comfyctl.hooks).
        self.on_finished = on_finished
        # Called when everything heard so far is handled: the display flushes its lines
        # then, once per wake-up rather than once per event.
        self.on_drained = on_drained
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
        self._ended: list[Record] = []  # ended, not yet on disk nor announced
        self._open = {r["prompt_id"] for r in records if r["status"] not in TERMINAL}
        self._releasing: set[str] = set()  # leases of ended jobs, given up by _renew
        self._releasing_lock = threading.Lock()
        self._last_stall_check = 0.0
        self._ended_at = 0.0
        self._threads: list[threading.Thread] = []  # every thread started (tests join them)
        self._closers: list[threading.Thread] = []  # the threads that hold sockets
        self._write_interrupted = False  # the last flush's write was (see flush)
        self.leases = leases_for(ledger)
        self.owner = new_owner("watch")
        self._held: dict[str, bool] = {}  # prompt_id -> we hold its listen lease
        self._claiming = threading.Lock()  # see _claim
        self._seen: dict[str, tuple[Any, ...]] = {}  # what _observe last handed on
        self._settling: set[str] = set()  # crashed submits handed to their fetcher
        self._selector = selectors.DefaultSelector()  # the listen loop's sockets
        for record in records:
            url = record["server_url"]
            if url not in self.servers:
                self.servers[url] = _ServerState(client_for(record), record["server"])
            self.servers[url].prompt_ids.add(record["prompt_id"])

    # -- public --------------------------------------------------------------------------

    def listened(self) -> set[str]:
        """The unfinished jobs given to a listen loop (see _start_listeners)."""
        return {pid for pid, ended in list(self._job_stops.items()) if not ended.is_set()}

    def active(self) -> list[Record]:
        return [r for r in self.records.values() if r["status"] not in TERMINAL]

    def run(self) -> dict[str, Record]:
        """Follow until every job is terminal. Raises TimeoutError when ``timeout`` passes."""
        deadline = time.monotonic() + self.options.timeout if self.options.timeout else None
        interrupted = False
        try:
            self._start_threads()
            last_flush, interval = time.monotonic(), self.options.flush_interval
            while self._open:
                due = self._ended_at + ANNOUNCE_WITHIN - time.monotonic() if self._ended else 0.2
                try:
                    item = self.inbox.get(timeout=min(0.2, max(due, 0.0)))
                except queue.Empty:
                    item = None
                if item is not None:
                    self._handle(item)
                now = time.monotonic()
                # Jobs that end near each other share one write (the last one's at once).
                if self._ended and (not self._open or now - self._ended_at >= ANNOUNCE_WITHIN):
                    self._announce()  # progress pending is written with them
                    last_flush = time.monotonic()
                elif now - last_flush >= interval:
                    self.flush()
                    last_flush = time.monotonic()
                    # Progress writes cost at most ~10% of the time, however big the
                    # ledger (ended jobs are written within ANNOUNCE_WITHIN regardless).
                    interval = max(self.options.flush_interval, 10 * (last_flush - now))
                self._check_stalls()
                if self.inbox.empty():
                    if self.on_drained is not None:
                        self.on_drained()
                    if item is not None and self._open:
                        # What the listen loop hears next is handled together: one
                        # wake-up per READ_GAP, not one per batch it read.
                        time.sleep(READ_GAP)
                if deadline is not None and now >= deadline:
                    self._announce()
                    raise TimeoutError
            self._announce()
            if self.on_drained is not None:
                self.on_drained()
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            self.stop.set()
            for state in self.servers.values():
                state.fetch.put(None)  # fetchers and connectors wait for this, not on a timer
                state.to_connect.put(None)
            # After Ctrl-C, not for longer than the sockets: a database that is down or
            # frozen would hold the writes up to its bound (17 s), and what they held is
            # the servers' to tell again.
            until = time.monotonic() + LISTENER_END if interrupted else None
            last = self._spawn(self._last_writes, until, name="last writes")
            last.join(None if until is None else max(until - time.monotonic(), 0.0))
            if self.on_drained is not None:  # lines before the error that ends the run
                with contextlib.suppress(Exception):
                    self.on_drained()
        return self.records

    def _last_writes(self, until: float | None) -> None:
        """What was heard and not yet written; then the listen loop and the connectors close
        their sockets and give their leases up as they end (a round; a handshake in flight),
        waited for until ``until`` (None: LISTENER_END after the writes): a process that
        exits before would leave the leases to expire, keeping a watcher in another PID
        space or on another host waiting."""
        with contextlib.suppress(Exception):
            self.flush()
        until = time.monotonic() + LISTENER_END if until is None else until
        for thread in self._closers:
            thread.join(max(until - time.monotonic(), 0.0))
        self._release_ended()  # their sockets are closed already

    def _announce(self) -> None:
        """Tell about the jobs that ended, once they are on disk: one write for all that
        ended within ANNOUNCE_WITHIN of each other, not one per job."""
        if not self._ended:
            return
        self.flush()
        ended, self._ended, self._ended_at = self._ended, [], 0.0
        for record in ended:
            if self.on_finished is not None:
                self.on_finished(record)
            self.on_event(TrackerEvent("state", record))

    def flush(self) -> None:
        """Write what was observed since the last flush, re-applied to the ledger's records
        (so concurrent changes by other processes, like a cancel, are respected)."""
        if not self._pending_writes:
            return
        pending, self._pending_writes = self._pending_writes, {}
        try:
            self._write(pending)
        except BaseException as exc:  # e.g. LedgerLocked: keep them for the next flush
            for prompt_id, observations in pending.items():
                self._pending_writes.setdefault(prompt_id, [])[:0] = observations
            if isinstance(exc, LedgerInterrupted) and not self._write_interrupted:
                # The database went away mid-write (a restart): made again by the next
                # flush, which waits for it to come back; a second failure ends the run.
                self._write_interrupted = True
                log.info("ledger write interrupted, to be made again: %s", exc)
                return
            raise
        self._write_interrupted = False

    def _write(self, pending: dict[str, list[Observation]]) -> None:
        decided = []  # ended by another process: a cancel, say
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
                elif stored["status"] in FINAL:
                    decided.append(stored)
        for stored in decided:
            self._decided_elsewhere(stored)

    def _decided_elsewhere(self, stored: Record) -> None:
        """The stored record is final and took none of what this tracker heard: another
        process ended the job (a cancel stops it on its server, which then tells this
        tracker an interrupt, or nothing at all). The ledger's outcome is the one shown."""
        record = self.records.get(stored["prompt_id"])
        if record is None or record["status"] == stored["status"]:
            return
        was_open = record["status"] not in TERMINAL
        record.update(copy.deepcopy(stored))
        if was_open:
            self._ended_now(record)
            self._ended.append(record)  # announced with the next ones that end
            self._ended_at = self._ended_at or time.monotonic()

    # -- the loop ------------------------------------------------------------------------

    def _handle(self, item: Any) -> None:
        if isinstance(item, list):  # what one wake-up of the listen loop heard
            for obs in item:
                self._observed(obs)
        elif isinstance(item, Observation):
            self._observed(item)
        elif isinstance(item, TrackerEvent):
            self.on_event(item)
        elif isinstance(item, _Followed):
            self._follow(item.record)
        elif isinstance(item, _Settled):
            self._settled(item)

    def _observed(self, obs: Observation) -> None:
        record = self.records.get(obs.prompt_id)
        if record is None or record["status"] in TERMINAL:
            return
        if record["status"] == SUBMITTING and obs.source == "ws":
            # Not known to be on its server under this id yet (an older server gives one
            # of its own): a socket's message without a prompt_id (a reconnect's
            # executing) could be the job under another id. Its poll decides.
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
            if before_status != RUNNING:  # it left the queue: which jobs are next changed
                self._start_listeners(record["server_url"])
            if record["status"] in TERMINAL:
                self._ended_now(record)
                self._ended.append(record)  # told about once it is on disk: _announce
                self._ended_at = self._ended_at or time.monotonic()
                return
            self.on_event(TrackerEvent("state", record))
        else:
            self._stalled.discard(obs.prompt_id)
            self.on_event(TrackerEvent("progress", record))

    def _ended_now(self, record: Record) -> None:
        """A job turned terminal: its listener stops, the loop's count of open ones drops,
        its server's list of jobs to look after shrinks (a terminal job never revives)."""
        self._open.discard(record["prompt_id"])
        self.servers[record["server_url"]].prompt_ids.discard(record["prompt_id"])
        self._job_stops.get(record["prompt_id"], threading.Event()).set()

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
            if before != RUNNING:  # it left the queue: which jobs are next changed
                self._start_listeners(record["server_url"])
            if record["status"] in TERMINAL:
                self._ended_now(record)
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
        if record["status"] == SUBMITTING:  # its submitter is gone: settled by its fetcher
            if record["prompt_id"] not in self._settling:
                self._settling.add(record["prompt_id"])
                self.servers[record["server_url"]].fetch.put(copy.deepcopy(record))
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

    def _settled(self, item: _Settled) -> None:
        """A crashed submit's record as its server's fetcher settled it: never arrived, or
        found under the id an older server gave it, followed under that id from now on.
        Changed in place: the caller's list holds the same record."""
        self._settling.discard(item.prompt_id)
        record, stored = self.records.get(item.prompt_id), item.record
        if record is None or record["status"] != SUBMITTING:
            return
        if stored is None:  # another process moved it, and the server does not say where
            log.info("%s was settled by another process", item.prompt_id)
            self._ended_now(record)
            return
        if stored["status"] == SUBMITTING:
            return  # not settled: the next poll that does not find it hands it over again
        state = self.servers[record["server_url"]]
        if stored["prompt_id"] != item.prompt_id:
            # The new id first: the poller, reading these from its thread, finds one.
            self.records[stored["prompt_id"]] = record
            state.prompt_ids.add(stored["prompt_id"])
            self._ended_now(record)  # as the old id: its listener and lease go
            del self.records[item.prompt_id]
            self._unknown_count.pop(item.prompt_id, None)
        record.update(stored)
        if record["status"] in TERMINAL:
            self._ended_now(record)
            if self.on_finished is not None:
                self.on_finished(record)
        else:
            self._open.add(record["prompt_id"])
            if self.options.use_websocket:
                self._claim([record["prompt_id"]])
            self._start_listeners(record["server_url"])
        self.on_event(TrackerEvent("state", record))

    def _check_stalls(self) -> None:
        limit = self.options.stall_timeout
        if not limit or time.monotonic() - self._last_stall_check < 0.5:
            return
        self._last_stall_check = time.monotonic()
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
            self._closers.append(self._spawn(self._connector, state, name=f"connect {url}"))
        self._closers.append(self._spawn(self._listen_loop, name="listen"))
        if self.options.use_websocket:
            # Every job's lease at once, in one store call (a job near the end of a queue
            # is listened to once it nears its head, its lease already held).
            self._claim(sorted(self._open))
        self._spawn(self._store_keeper, name="leases")
        self._start_listeners()

    def _start_listeners(self, server_url: str | None = None) -> None:
        """Per job a listener (the lease holder's socket, or a follower of what the holder
        writes), for every job that is not simply queued and for the next LISTEN_AHEAD
        queued ones of each server, in queue order. ComfyUI runs one job at a time and
        sends every change of its queue to every open socket: listening to all queued jobs
        at once costs jobs x jobs messages. Called again whenever a job's status changes."""
        for url, state in self.servers.items():
            if server_url is not None and url != server_url:
                continue
            active = [self.records[pid] for pid in self._active_ids(state)]
            queued = [r for r in active if r["status"] == PENDING and r.get("number") is not None]
            waiting = {r["prompt_id"] for r in queued}
            next_up = {r["prompt_id"] for r in heapq.nsmallest(LISTEN_AHEAD, queued, _queue_order)}
            new = [
                r
                for r in active
                if r["prompt_id"] not in self._job_stops
                and (r["prompt_id"] not in waiting or r["prompt_id"] in next_up)
            ]
            for record in sorted(new, key=_queue_order):
                prompt_id = record["prompt_id"]
                job_stop = self._job_stops.setdefault(prompt_id, threading.Event())
                log.debug("to listen for %s (%s)", prompt_id, record["status"])
                state.joining.put(_Listening(prompt_id, record["client_id"], job_stop))

    def _spawn(self, target: Callable[..., None], *args: Any, name: str) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def _active_ids(self, state: _ServerState) -> list[str]:
        # Copies first: the tracker's thread takes ended jobs out meanwhile, and moves an
        # adopted job to its new id (added before the old one goes: one more read finds it).
        for _ in range(2):
            ids = tuple(state.prompt_ids)
            found = [(pid, self.records.get(pid)) for pid in ids]
            if all(record is not None for _, record in found):
                break
        return [
            pid for pid, record in found if record is not None and record["status"] not in TERMINAL
        ]

    def _server_worker(self, state: _ServerState) -> None:
        """Poll the server: the source of truth when the socket is quiet or gone."""
        left_to_socket: set[str] = set()
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
                    # A job's socket that heard its start tells its end with its last
                    # progress, a moment after the server's history has it: this poll
                    # leaves it to the socket; the next one does not wait any longer.
                    pid = obs.prompt_id
                    told = pid not in left_to_socket and _socket_tells_end(state, pid)
                    if obs.kind == "finished" and told:
                        left_to_socket.add(pid)
                        continue
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
        """After a WebSocket end-of-run signal, read the outcome from the history; and
        settle the crashed submits' records handed over."""
        while (prompt_id := state.fetch.get()) is not None:  # None: the tracker stopped
            if isinstance(prompt_id, dict):
                self._settle(state, prompt_id)
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

    def _settle(self, state: _ServerState, record: Record) -> None:
        from comfyctl.submission import settle_submitting

        prompt_id = record["prompt_id"]
        stored: Record | None = record
        try:
            if not settle_submitting(self.ledger, lambda r: state.client, [record]):
                stored = self.ledger.get(prompt_id)  # settled by another process, or not yet
            if stored is None:  # moved by another process to the id its server gave it
                theirs = state.client.find_by_client_ids([record["client_id"]])
                found = theirs.get(record["client_id"])
                stored = self.ledger.get(found) if found else None
        except Exception as exc:  # the poller reports the server; the next poll tries again
            log.debug("settling %s failed: %r", prompt_id, exc)
            stored = record
        self.inbox.put(_Settled(prompt_id, stored))

    def _listen_loop(self) -> None:
        """Every job this tracker listens to, on every server, in one thread: keeps one
        WebSocket per job whose lease it holds (as the job's client_id, reconnecting with
        backoff when it drops) and reads whichever has a frame. One thread for all
        servers: what they send at about the same time is one wake-up of this loop and of
        the tracker, not one per server. It never waits on a server nor on the store: each
        server's connector makes its connections (a server slow to answer holds up only
        its own jobs), the leases thread makes the store calls (_store_keeper: claims,
        and following the jobs another process holds), and sockets are read without
        blocking. A socket left unread would also hold up the server: ComfyUI sends every
        client's messages from one loop, which waits while a socket's buffer is full."""
        try:
            while not self.stop.is_set():
                try:
                    self._listen_round()
                except Exception as exc:  # a bug must not silently deafen the jobs
                    log.warning("listening failed: %r", exc)
                    self.stop.wait(1.0)
        finally:
            self._claiming.acquire()  # a claim in flight now lets go of its leases itself
            for state in self.servers.values():
                for job in _drain(state.joining):  # handed over, never taken in: let go too
                    state.listening[job.prompt_id] = job
                with state.handoff:  # from here on, each connector closes what it connects
                    for job, sock in _drain(state.connected):
                        job.connecting = False
                        _close_quietly(sock)
                    for job in _drain(state.to_connect):
                        if job is None:
                            state.to_connect.put(None)  # for the connector: the end
                        else:
                            job.connecting = False  # never connected: let go of below
                # A job being connected right now is its connector's to let go of.
                self._let_go([j for j in state.listening.values() if not j.connecting], now=True)
            self._release_ended()  # what this loop let go of after the tracker's last call
            self._selector.close()
            self._claiming.release()

    def _listen_round(self) -> None:
        now = time.monotonic()
        for state in self.servers.values():
            jobs = state.listening
            for job in _drain(state.joining):
                jobs[job.prompt_id] = job
            for job, sock in _drain(state.connected):
                self._take_connection(state, job, sock)
            ended = [job for job in jobs.values() if job.stop.is_set()]
            for job in ended:
                del jobs[job.prompt_id]
            self._let_go(ended)
        for state in self.servers.values():
            for job in state.listening.values():
                self._keep_connected(state, job, now)
        selector = self._selector
        if not selector.get_map():
            self.stop.wait(0.1)
            return
        # Frames for a while, then the bookkeeping above again (not once per frame); what
        # one wake-up brought goes to the tracker in one batch.
        until = now + 0.05
        while (left := until - time.monotonic()) > 0 and selector.get_map():
            batch = [
                obs for key, _ in selector.select(timeout=left) for obs in self._read(*key.data)
            ]
            if batch:
                self.inbox.put(batch)
                time.sleep(READ_GAP)

    def _keep_connected(self, state: _ServerState, job: _Listening, now: float) -> None:
        if job.connecting:
            return  # its server's connector has it
        held = self._held.get(job.prompt_id)
        if job.sock is not None:
            # A socket of this client_id opened elsewhere (an older comfyctl, a holder that
            # lost its lease late) takes the events, and its closing makes the server forget
            # ours: a running job whose socket stays quiet gets a fresh connection (the
            # server re-sends its current node).
            silent = (
                now - job.heard > SOCKET_SILENCE
                and self.records[job.prompt_id]["status"] == RUNNING
            )
            if not held or silent:
                self._hang_up(job)
                job.next_connect = now + job.backoff.wait()
            return
        if held and now >= job.next_connect:
            job.connecting = True
            state.to_connect.put(job)

    def _connector(self, state: _ServerState) -> None:
        """Connect the jobs the listen loop hands over, for one server (a connection waits
        for the server's handshake reply, up to its connect timeout)."""
        while (job := state.to_connect.get()) is not None:  # None: the tracker stopped
            sock = None
            # Asked again now: the job may have waited behind others' slow handshakes.
            if not (self.stop.is_set() or job.stop.is_set()) and self._held.get(job.prompt_id):
                sock = self._connect(state, job)
            with state.handoff:
                if not self.stop.is_set():
                    state.connected.put((job, sock))
                    continue
            # The listen loop has stopped: close first, then give up the lease (_let_go).
            _close_quietly(sock)
            if self._held.pop(job.prompt_id, False):
                release_quietly(self.leases, {listen_lease(job.prompt_id)}, self.owner)

    def _connect(self, state: _ServerState, job: _Listening) -> ws.WebSocket | None:
        try:
            return state.client.connect_ws(job.client_id)
        except ServerError:
            return None
        except Exception as exc:  # a bug must not silently end this server's connections
            log.warning("connecting to %s failed: %r", state.name, exc)
            return None

    def _take_connection(
        self, state: _ServerState, job: _Listening, sock: ws.WebSocket | None
    ) -> None:
        """What the connector made of ``job``'s connection: a socket to read, or a retry."""
        job.connecting = False
        now = time.monotonic()
        if sock is None:
            job.next_connect = now + job.backoff.wait()
            return
        if job.stop.is_set() or not self._held.get(job.prompt_id):
            _close_quietly(sock)  # it ended, or its lease went, while connecting
            return
        job.sock = sock
        log.info("listening for %s on %s as its client_id", job.prompt_id, state.name)
        job.backoff.reset()
        job.heard, job.heard_start, job.start_timing = now, False, None
        job.sock.settimeout(0.0)  # a read takes what has arrived: it never waits
        self._selector.register(job.sock.sock, selectors.EVENT_READ, (state, job))
        if job.sock.pending() and (heard := self._read(state, job)):
            self.inbox.put(heard)  # frames that came with the handshake reply

    def _read(self, state: _ServerState, job: _Listening) -> list[Observation]:
        """What the messages a readable socket brought say (all that it holds: one read)."""
        if job.sock is None:
            return []
        try:
            messages = job.sock.read()
        except (OSError, ws.WebSocketError) as exc:
            log.debug("socket for %s dropped: %s", job.prompt_id, type(exc).__name__)
            self._hang_up(job)
            job.next_connect = time.monotonic() + job.backoff.wait()
            return []
        if messages:
            job.heard = time.monotonic()
        heard = []
        for message in messages:
            # Binary messages are previews: nothing about the job's state.
            if isinstance(message, str) and (obs := self._heard(state, job, message)):
                heard.append(obs)
        return heard

    def _heard(self, state: _ServerState, job: _Listening, frame: str) -> Observation | None:
        obs = from_ws_text(frame, state.client.url, job.prompt_id)
        if obs is None:
            return None
        if obs.kind == "running":
            # From execution_start on, this connection hears every output too, so
            # execution_success alone is the whole outcome (no /history read per job).
            job.heard_start, job.start_timing = True, obs.timing
        elif obs.kind == "succeeded":
            if not job.heard_start:  # outputs came before this connection: ask /history
                return Observation("done", job.prompt_id, state.client.url, source="ws")
            timing = {
                "created_at": None,
                "started_at": (job.start_timing or {}).get("started_at"),
                "finished_at": (obs.timing or {}).get("finished_at"),
            }
            return Observation(
                "finished",
                job.prompt_id,
                state.client.url,
                source="ws",
                outcome=SUCCESS,
                timing=timing if any(timing.values()) else None,
            )
        return obs

    def _hang_up(self, job: _Listening) -> None:
        if job.sock is None:
            return
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(job.sock.sock)
        _close_quietly(job.sock)
        job.sock = None

    def _let_go(self, jobs: list[_Listening], now: bool = False) -> None:
        """Close the jobs' sockets, then give up their leases: ``now``, or with the next
        renewal (one store call for all that ended meanwhile; nobody needs an ended job's
        lease). Closed first: the server must forget a socket before the next holder
        connects, or its cleanup would forget the next one's."""
        if not jobs:
            return  # most rounds: nothing ended
        for job in jobs:
            self._hang_up(job)
        held = {listen_lease(j.prompt_id) for j in jobs if self._held.pop(j.prompt_id, False)}
        if now and held:
            release_quietly(self.leases, held, self.owner)
        else:
            self._release_later(held)

    def _release_later(self, names: set[str]) -> None:
        """Leases to give up with the next renewal (see _release_ended)."""
        with self._releasing_lock:
            self._releasing |= names

    def _release_ended(self) -> None:
        with self._releasing_lock:
            names, self._releasing = self._releasing, set()
        if names:
            release_quietly(self.leases, names, self.owner)

    def _claim(self, prompt_ids: list[str]) -> None:
        # Under _claiming: what is held when the listen loop ends is let go of there; a
        # claim that comes back after the end gives its leases up itself.
        with self._claiming:
            if self.stop.is_set():
                return
            try:
                names = [listen_lease(pid) for pid in prompt_ids]
                won = claim_all(self.leases, names, self.owner)
            except ComfyctlError as exc:  # e.g. LedgerLocked: try again later
                log.debug("leases: %s", exc)
                return
            if self.stop.is_set():
                release_quietly(self.leases, won, self.owner)
                return
            for pid in prompt_ids:
                if listen_lease(pid) in won:
                    log.info("holding the lease of %s (%s)", pid, self.owner)
                    self._held[pid] = True

    def _store_keeper(self) -> None:
        """What the listen loop needs of the store, in a thread of its own: a store call
        takes as long as the store does (PostgreSQL's one connection is also the ledger
        writes', which may wait on another host's row lock), and the sockets are read on
        time all the while. Every OBSERVE_EVERY: the jobs another process holds are looked
        at in the store and their leases tried again every CLAIM_EVERY; every RENEW_EVERY,
        the leases this tracker holds are renewed (one call) and ended ones given up."""
        renewed = time.monotonic()
        while not self.stop.wait(OBSERVE_EVERY):
            try:
                now = time.monotonic()
                if now - renewed >= RENEW_EVERY:
                    renewed = now
                    self._renew()
                self._follow_others(now)
            except Exception as exc:  # a bug must not silently end the renewals
                log.warning("keeping the leases failed: %r", exc)

    def _follow_others(self, now: float) -> None:
        """The listened jobs whose lease this tracker does not hold: claimed again every
        CLAIM_EVERY, and what their holder wrote handed on."""
        listened = [job for s in self.servers.values() for job in list(s.listening.values())]
        due = [
            job
            for job in listened
            if not self._held.get(job.prompt_id) and now - job.last_claim >= CLAIM_EVERY
        ]
        if due and self.options.use_websocket:
            for job in due:
                job.last_claim = now
            self._claim([job.prompt_id for job in due])
        following = [job.prompt_id for job in listened if not self._held.get(job.prompt_id)]
        if following:
            self._observe(following)

    def _renew(self) -> None:
        """Keep every lease this tracker holds alive, all in one store call; a lease
        someone else took (we were too slow to renew) is given up, so two processes never
        listen to one job."""
        self._release_ended()
        # Under _claiming, as claims are: a renewal still in flight as the listen loop
        # ends would take back a lease it has just given up, and leave it to expire.
        with self._claiming:
            held = [pid for pid, mine in list(self._held.items()) if mine]
            if not held or self.stop.is_set():
                return
            try:
                names = [listen_lease(p) for p in held]
                kept = self.leases.claim_leases(names, self.owner, TTL)
            except ComfyctlError as exc:
                log.debug("renewing leases: %s", exc)
                return
        for pid in held:
            if listen_lease(pid) not in kept and self._held.get(pid):
                log.info("lost the lease of %s to another process", pid)
                self._held[pid] = False

    def _observe(self, prompt_ids: list[str]) -> None:
        """One look at the store for the jobs another process listens to: hand on what
        its holder wrote."""
        try:
            records = self.ledger.load()
            found = [(pid, records.get(pid)) for pid in prompt_ids]
        except ComfyctlError:
            return
        for pid, stored in found:
            if stored is None:
                continue
            view = _followed_view(stored)
            if view != self._seen.get(pid):
                self._seen[pid] = view
                self.inbox.put(_Followed(stored))


@dataclass
class _Listening:
    """A job a server's listen loop looks after, and its socket while we hold its lease."""

    prompt_id: str
    client_id: str
    stop: threading.Event  # set when the job ended
    sock: ws.WebSocket | None = None
    next_connect: float = 0.0
    backoff: Backoff = field(default_factory=lambda: Backoff(0.5, 10.0))
    last_claim: float = float("-inf")
    heard: float = 0.0
    heard_start: bool = False  # this connection heard execution_start
    connecting: bool = False  # handed to its server's connector
    start_timing: dict[str, str | None] | None = None


@dataclass
class _Settled:
    """A crashed submit's record ``prompt_id`` as the ledger has it after its fetcher
    tried to settle it (None: no longer under that id)."""

    prompt_id: str
    record: Record | None


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


def _socket_tells_end(state: _ServerState, prompt_id: str) -> bool:
    """Whether the job has a socket that heard it start, so that will tell its end (the
    poller asks the listen loop's own records: one lookup, safe from another thread)."""
    job = state.listening.get(prompt_id)
    return job is not None and job.sock is not None and job.heard_start


def _drain(items: queue.Queue[Any]) -> list[Any]:
    taken = []
    while not items.empty():
        taken.append(items.get())
    return taken


def _close_quietly(sock: ws.WebSocket | None) -> None:
    if sock is not None:
        with contextlib.suppress(Exception):
            sock.close()


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
