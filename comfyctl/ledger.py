"""The JSON store: plain JSON files whose write cost follows the unsettled jobs, not history.

Files, beside each other (for ``ledger.json``; see ARCHITECTURE.md):

- ``ledger.json``, the live document: unsettled jobs (and the recently finished), the
  change counter, and the name of the current history manifest. It is the only file
  that is ever rewritten, and its replacement (by rename) commits every transaction.
- ``ledger-history/``: finished jobs, in segments of up to ``SEGMENT_SIZE`` records, and
  the manifest that lists them (record counts, status counts, servers, submit-time range).
  These files never change once written: a change writes a new file under a new name, and
  files no manifest refers to any more are deleted an hour later.
- ``ledger.json.leases.json``: leases. ``inputs.json``: the per-server input map.
  ``workflows/<sha256>.json``: stored workflows.

Every read-modify-write holds an exclusive ``flock`` on ``ledger.json.lock`` and ends with
atomic replaces (temp file, fsync, rename), so a SIGKILL at any instant leaves the previous
or the next state. Reads take no lock. A file that does not parse is never overwritten
(LedgerCorrupt, exit 7).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import heapq
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from comfyctl.backoff import Backoff
from comfyctl.errors import LedgerCorrupt, LedgerError, LedgerInaccessible, LedgerLocked
from comfyctl.store import (
    MIN_PREFIX,
    Lease,
    Record,
    RecordsBase,
    check_record,
    is_settled,
    resolve_lock_timeout,
)

__all__ = ["MIN_PREFIX", "SCHEMA_NAME", "SCHEMA_VERSION", "Ledger", "Record", "atomic_write"]

SCHEMA_NAME = "comfyctl.ledger"
SCHEMA_VERSION = 2
DEFAULT_LOCK_TIMEOUT = 10.0
SEGMENT_SIZE = 1000  # records per history file: a page of history reads one or two
MOVE_AT = 32  # settled records gathered in the live file before they move to history
RECENT = 600.0  # seconds a settled record stays live (hooks claim it, history shows it)
_T = TypeVar("_T")
RETIRED_GRACE = 3600.0  # seconds a replaced history file stays for readers that hold it


def _stamp(record: Record) -> str:
    return record.get("submitted_at") or ""


def _read_json(path: Path, missing_ok: bool = False) -> Any:
    """A file parsed strictly; LedgerCorrupt naming it when it is not JSON."""
    raw = _read_bytes(path, missing_ok)
    return None if raw is None else _parse_json(path, raw)


def _read_bytes(path: Path, missing_ok: bool = False) -> bytes | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise
    except IsADirectoryError:
        raise LedgerCorrupt(path, "it is a directory") from None
    except OSError as exc:
        raise _inaccessible(path, exc) or LedgerCorrupt(path, exc.strerror or str(exc)) from None
    if not raw or raw.isspace():
        raise LedgerCorrupt(path, "it is empty")
    return raw


# Errors that say the ledger's place is wrong (not its data, nor a full disk).
_LOCATION_ERRNOS = {errno.ENOTDIR, errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS}


def _inaccessible(path: Path, exc: OSError) -> LedgerInaccessible | None:
    """``exc`` as LedgerInaccessible when it says the ledger's place is wrong, naming
    what is wrong with it in a few words."""
    if exc.errno not in _LOCATION_ERRNOS:
        return None
    why = f"{exc.filename or path} cannot be created or opened ({exc.strerror or exc})"
    if exc.errno == errno.ENOTDIR:
        for parent in path.parents:  # the nearest one that exists is the culprit
            if parent.exists() or parent.is_symlink():
                why = f"{parent} is not a directory" if not parent.is_dir() else str(exc)
                break
    return LedgerInaccessible(path, why)


def _parse_json(path: Path, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LedgerCorrupt(path, f"not valid JSON: {exc}") from None
    except RecursionError:
        raise LedgerCorrupt(path, "it is nested too deeply") from None


def _tasks_document(head: dict[str, Any], texts: dict[str, str]) -> bytes:
    """``head`` then ``"tasks"``, one record (its JSON text) per line: grep-, diff- and
    jq-friendly."""
    start = json.dumps(head)[:-1] + (', "tasks": {' if head else '{"tasks": {')
    lines = ",\n".join([_key(pid) + text for pid, text in texts.items()])
    return "".join((start, "\n", lines, "\n}}\n") if lines else (start, "}}\n")).encode()


@functools.lru_cache(maxsize=65536)
def _key(prompt_id: str) -> str:
    """A record's line start; the same ids are written again with every commit."""
    return json.dumps(prompt_id) + ":"


def _record_text(record: Record) -> str:
    return json.dumps(record, separators=(",", ":"))


def _settled_at(record: Record) -> str | None:
    """When a settled record settled (what decides when it moves to history); None for one
    that is not settled."""
    if not is_settled(record):
        return None
    return str(record.get("updated_at") or record.get("finished_at") or "")


_TASKS_OPEN = ', "tasks": {'


def _parse_by_line(raw: bytes) -> tuple[dict[str, Any], dict[str, str]] | None:
    """A document in the layout ``_tasks_document`` writes, parsed a record per line, with
    each record's text kept for the next write; None for any other layout (a file a person
    reformatted), which is then parsed whole."""
    try:
        lines = raw.decode().split("\n")
        while lines and not lines[-1]:
            lines.pop()
        if len(lines) < 2 or not lines[0].endswith(_TASKS_OPEN) or lines[-1] != "}}":
            return None
        doc = json.loads(lines[0][: -len(_TASKS_OPEN)] + "}")
        tasks: dict[str, Any] = {}
        texts: dict[str, str] = {}
        for line in lines[1:-1]:
            end = line.find('":', 1)
            key = line[1:end]
            if not line.startswith('"') or end < 0 or "\\" in key or '"' in key:
                return None
            text = line[end + 2 :].removesuffix(",")
            tasks[key] = json.loads(text)
            texts[key] = text
    except ValueError:  # also UnicodeDecodeError; then parsed whole, and judged there
        return None
    if not isinstance(doc, dict):
        return None
    doc["tasks"] = tasks
    return doc, texts


class _Live:
    """The live document as one view sees it. Each record is kept as its JSON text and
    parsed when asked for (a transaction touching two jobs parses two), beside when it
    settled, which is all a commit needs to know of the others. Written back, a record
    nobody put is its text as read."""

    def __init__(
        self, doc: dict[str, Any] | None = None, texts: dict[str, str] | None = None
    ) -> None:
        doc = doc or {}
        texts = texts or {}  # each record's JSON text as read (_parse_by_line)
        self.parsed: dict[str, Record] = dict(doc.get("tasks", {}))  # handed out so far
        self.texts = {pid: texts.get(pid) or _record_text(r) for pid, r in self.parsed.items()}
        self.settled_at = {pid: _settled_at(r) for pid, r in self.parsed.items()}
        self.version: int = doc.get("schema_version", SCHEMA_VERSION)
        self.changes: int = doc.get("changes", 0)
        self.history: str | None = doc.get("history")
        self.history_last: str = doc.get("history_last", "")
        self.raw: bytes | None = None  # the file as read, kept only while it awaits migration

    def copy(self) -> _Live:
        """A view of the same document with nothing parsed yet (records handed out by
        one view are its own to change)."""
        other = _Live()
        other.texts, other.settled_at = dict(self.texts), dict(self.settled_at)
        other.version, other.changes = self.version, self.changes
        other.history, other.history_last = self.history, self.history_last
        return other

    def record(self, prompt_id: str) -> Record | None:
        return self._parsed(prompt_id) if prompt_id in self.texts else None

    def records(self) -> dict[str, Record]:
        return {pid: self._parsed(pid) for pid in self.texts}

    def put(self, record: Record) -> None:
        pid = record["prompt_id"]
        self.parsed[pid], self.texts[pid] = record, _record_text(record)
        self.settled_at[pid] = _settled_at(record)

    def pop(self, prompt_id: str) -> tuple[Record, str]:
        record = self._parsed(prompt_id)
        del self.parsed[prompt_id], self.settled_at[prompt_id]
        return record, self.texts.pop(prompt_id)

    def _parsed(self, prompt_id: str) -> Record:
        record = self.parsed.get(prompt_id)
        if record is None:
            record = self.parsed[prompt_id] = json.loads(self.texts[prompt_id])
        return record

    def document(self) -> bytes:
        head = {
            "schema": SCHEMA_NAME,
            "schema_version": SCHEMA_VERSION,
            "changes": self.changes,
            "history": self.history,
            "history_last": self.history_last,
        }
        return _tasks_document(head, self.texts)


class _History:
    """The finished segments one view reads: the manifest, then segments on demand."""

    def __init__(self, store: Ledger, manifest_name: str | None) -> None:
        self.store = store
        self.name = manifest_name
        self._manifest: dict[str, Any] | None = (
            None if manifest_name else {"next": 1, "segments": []}
        )
        self._segments: dict[str, dict[str, Record]] = {}

    @property
    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            assert self.name is not None
            path = self.store.history_dir / self.name
            doc = self.store._read_history_file(path)
            if (
                not isinstance(doc, dict)
                or not isinstance(doc.get("segments"), list)
                or not isinstance(doc.get("next"), int)
            ):
                raise LedgerCorrupt(path, "it is not a comfyctl history manifest")
            self._manifest = doc
        return self._manifest

    @property
    def entries(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.manifest["segments"]
        return entries

    def segment(self, entry: dict[str, Any]) -> dict[str, Record]:
        name = entry["file"]
        if name not in self._segments:
            path = self.store.history_dir / name
            doc = self.store._read_history_file(path)
            tasks = doc.get("tasks") if isinstance(doc, dict) else None
            if not isinstance(tasks, dict):
                raise LedgerCorrupt(path, "it is not a comfyctl history segment")
            for key, record in tasks.items():
                check_record(path, key, record)
            self._segments[name] = tasks
        return self._segments[name]

    def containing(self, text: str) -> Iterator[dict[str, Any]]:
        """Segments whose bytes mention ``text`` (a JSON-escaped id or id prefix)."""
        needle = text.encode()
        for entry in reversed(self.entries):
            if entry["file"] in self._segments:
                yield entry
                continue
            path = self.store.history_dir / entry["file"]
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                raise _Stale from None
            if needle in raw:
                yield entry


class _Stale(Exception):
    """A history file this view refers to was replaced and deleted: read the ledger again."""


class Tasks(RecordsBase):
    """The JSON store's records as one transaction or snapshot sees them.

    Reads go to the live document first, then to history segments (found through the
    manifest without parsing the others). ``put``/``remove`` collect changes that the
    store writes when the transaction ends.
    """

    def __init__(self, store: Ledger, live: _Live, writable: bool) -> None:
        self.store = store
        self.path = store.path
        self._live = live
        self._history = _History(store, live.history)
        self._writable = writable
        self._puts: dict[str, Record] = {}
        self._removed: set[str] = set()
        self._origin: dict[str, str] = {}  # id -> the history segment holding it
        self.dirty = False

    # -- lookups ------------------------------------------------------------------------

    def _lookup(self, prompt_id: str) -> Record | None:
        if prompt_id in self._removed:
            return None
        record = self._puts.get(prompt_id) or self._live.record(prompt_id)
        return record if record is not None else self._from_history(prompt_id)

    def __getitem__(self, prompt_id: str) -> Record:
        record = self._lookup(prompt_id)
        if record is None:
            raise KeyError(prompt_id)
        return record

    def __contains__(self, prompt_id: object) -> bool:
        return isinstance(prompt_id, str) and self._lookup(prompt_id) is not None

    def __iter__(self) -> Iterator[str]:
        return iter([record["prompt_id"] for record in self.values()])

    def __len__(self) -> int:
        return len(self.values())

    def _current_live(self) -> dict[str, Record]:
        live = {pid: r for pid, r in self._live.records().items() if pid not in self._removed}
        live.update(self._puts)
        return live

    def _current_ids(self) -> list[str]:
        ids = [pid for pid in self._live.texts if pid not in self._removed]
        return ids + [pid for pid in self._puts if pid not in self._live.texts]

    def _from_history(self, prompt_id: str) -> Record | None:
        if self._live.history is None:
            return None
        for entry in self._history.containing(json.dumps(prompt_id)):
            record = self._history.segment(entry).get(prompt_id)
            if record is not None:
                self._origin[prompt_id] = entry["file"]
                return record
        return None

    def _ids_with_prefix(self, prefix: str) -> list[str]:
        ids = [pid for pid in self._current_ids() if pid.startswith(prefix)]
        if self._live.history is not None:
            escaped = json.dumps(prefix)[:-1]  # an opening quote, no closing one
            for entry in self._history.containing(escaped):
                for pid in self._history.segment(entry):
                    if (
                        pid.startswith(prefix)
                        and pid not in self._removed
                        and pid not in self._puts
                    ):
                        self._origin[pid] = entry["file"]
                        ids.append(pid)
        return ids

    def _history_records(self, wanted: Callable[[dict[str, Any]], bool]) -> Iterator[Record]:
        """Records of the segments ``wanted`` picks (by manifest entry), minus this view's
        own changes."""
        if self._live.history is None:
            return
        for entry in self._history.entries:
            if wanted(entry):
                for pid, record in self._history.segment(entry).items():
                    if pid not in self._removed and pid not in self._puts:
                        self._origin[pid] = entry["file"]
                        yield record

    def select(
        self, statuses: Collection[str] | None = None, server_urls: Collection[str] | None = None
    ) -> list[Record]:
        def keep(record: Record) -> bool:
            return (statuses is None or record.get("status") in statuses) and (
                server_urls is None or record.get("server_url") in server_urls
            )

        def wanted(entry: dict[str, Any]) -> bool:
            return (statuses is None or bool(set(entry["statuses"]) & set(statuses))) and (
                server_urls is None or bool(set(entry["servers"]) & set(server_urls))
            )

        found = [r for r in self._current_live().values() if keep(r)]
        return found + [r for r in self._history_records(wanted) if keep(r)]

    def values(self) -> list[Record]:  # type: ignore[override]
        return list(self._current_live().values()) + list(self._history_records(lambda e: True))

    def newest(self) -> Iterator[Record]:
        # A merge: records wait in a heap; before the newest waiting one is handed out,
        # every segment that may hold something newer (by its range) is read into it.
        heap = [(_Newer(_stamp(r)), _Newer(pid), r) for pid, r in self._current_live().items()]
        heapq.heapify(heap)
        entries = sorted(
            self._history.entries if self._live.history else [],
            key=lambda e: e["last"],
            reverse=True,
        )
        index = 0
        while heap or index < len(entries):
            while index < len(entries) and (not heap or entries[index]["last"] >= str(heap[0][0])):
                for pid, record in self._history.segment(entries[index]).items():
                    if pid not in self._removed and pid not in self._puts:
                        self._origin[pid] = entries[index]["file"]
                        heapq.heappush(heap, (_Newer(_stamp(record)), _Newer(pid), record))
                index += 1
            if heap:
                yield heapq.heappop(heap)[2]

    # -- changes ------------------------------------------------------------------------

    def put(self, record: Record) -> None:
        self._check_writable()
        pid = record["prompt_id"]
        if pid not in self._live.texts and pid not in self._origin and pid not in self._puts:
            self._locate(pid, _stamp(record))
        self._puts[pid] = record
        self._removed.discard(pid)
        self.dirty = True

    def remove(self, prompt_id: str) -> Record | None:
        self._check_writable()
        record = self._lookup(prompt_id)
        if record is None:
            return None
        self._puts.pop(prompt_id, None)
        self._removed.add(prompt_id)
        self.dirty = True
        return record

    def _locate(self, prompt_id: str, stamp: str) -> None:
        """Whether a record put without being read first is already in history: only the
        segments whose submit-time range covers its ``submitted_at`` can hold it (a new
        job is newer than all history, so nothing is read)."""
        if self._live.history is None or stamp > self._live.history_last:
            return
        for entry in self._history.entries:
            if entry["first"] <= stamp <= entry["last"] and prompt_id in self._history.segment(
                entry
            ):
                self._origin[prompt_id] = entry["file"]
                return

    def _check_writable(self) -> None:
        if not self._writable:
            raise LedgerError(
                "The ledger was read without a transaction; it cannot be changed through this view."
            )


class _Newer(str):
    """Orders strings backwards, so that heapq (a min-heap) hands out the newest first."""

    __slots__ = ()

    def __lt__(self, other: str) -> bool:
        return str.__gt__(self, other)


def _entry(name: str, records: dict[str, Record]) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for record in records.values():
        statuses[record.get("status", "")] = statuses.get(record.get("status", ""), 0) + 1
    stamps = [_stamp(r) for r in records.values()]
    return {
        "file": name,
        "count": len(records),
        "first": min(stamps),
        "last": max(stamps),
        "statuses": statuses,
        "servers": sorted({str(r.get("server_url")) for r in records.values()}),
    }


class _Seen(NamedTuple):
    """The live file as this process last read or wrote it, and that reading."""

    raw: bytes
    live: _Live  # copied for each view


class Ledger:
    """The JSON store (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        lock_timeout: float | None = None,
        segment_size: int = SEGMENT_SIZE,
        move_at: int = MOVE_AT,
    ) -> None:
        self.path = Path(path)
        self.segment_size, self.move_at = segment_size, move_at
        self.lock_timeout = resolve_lock_timeout(lock_timeout, DEFAULT_LOCK_TIMEOUT)
        self._thread_locks: dict[Path, threading.RLock] = {}  # per lock file
        self._seen: _Seen | None = None  # the live file as last read or written (_read_live)

    def describe(self) -> str:
        return str(self.path)

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @property
    def workflow_dir(self) -> Path:
        return self.path.parent / "workflows"

    @property
    def history_dir(self) -> Path:
        return self.path.with_name(self.path.stem + "-history")

    @property
    def inputs_path(self) -> Path:
        return self.path.parent / "inputs.json"

    # -- reading ------------------------------------------------------------------------

    def _read_live(self) -> _Live:
        """The live document. A file byte for byte the one this process last read or
        wrote is not parsed again: that reading is reused."""
        raw = _read_bytes(self.path, missing_ok=True)
        if raw is None:
            return _Live()
        seen = self._seen
        if seen is not None and seen.raw == raw:
            return seen.live.copy()
        live = self._parse_live(raw)
        self._remember(live, raw)
        return live

    def _remember(self, live: _Live, raw: bytes) -> None:
        if live.version == SCHEMA_VERSION:
            self._seen = _Seen(raw, live.copy())

    def _parse_live(self, raw: bytes) -> _Live:
        by_line = _parse_by_line(raw)
        doc, texts = by_line if by_line is not None else (_parse_json(self.path, raw), {})
        if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), dict):
            raise LedgerCorrupt(self.path, "it is not a comfyctl ledger")
        version = doc.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise LedgerCorrupt(
                self.path, f"schema_version {version!r} is not one this comfyctl reads"
            )
        if version > SCHEMA_VERSION:
            raise LedgerCorrupt(
                self.path,
                f"schema_version {version} was written by a newer "
                "comfyctl; upgrade comfyctl to use it",
            )
        for key, record in doc["tasks"].items():
            check_record(self.path, key, record)
        live = _Live(doc, texts)
        live.version = version
        if version < SCHEMA_VERSION:
            live.raw = raw  # the migration's backup, and proof that it is still the file
        return live

    def _read_history_file(self, path: Path) -> Any:
        try:
            return _read_json(path)
        except FileNotFoundError:
            raise _Stale from None

    def load(self) -> Tasks:
        """A read-only view of the committed records, read without the lock."""
        live = self._read_live()
        if live.version < SCHEMA_VERSION:
            live = self._migrated(live)
        return _Retrying(self, live)

    def get(self, prompt_id: str) -> Record | None:
        return self.load().get(prompt_id)

    def changes(self) -> int:
        return self._read_live().changes

    # -- writing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the cross-process lock (bounded wait, then LedgerLocked)."""
        with self._flocked(self.lock_path):
            yield

    @contextlib.contextmanager
    def _flocked(self, lock_path: Path) -> Iterator[None]:
        """Hold ``lock_path``'s flock: this process's threads queue on a thread lock first
        (flock does not order them), other processes are waited for a bounded time."""
        deadline = time.monotonic() + self.lock_timeout
        with self._thread_locks.setdefault(lock_path, threading.RLock()):
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as exc:
                raise _inaccessible(self.path, exc) or exc from None
            try:
                backoff = Backoff(0.002, 0.05)
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise LedgerLocked(self.path, self.lock_timeout) from None
                        time.sleep(backoff.wait())
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the flock

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tasks]:
        """Lock, read, let the caller change records, write atomically if anything changed."""
        with self.locked():
            live = self._current_locked()
            tasks = Tasks(self, live, writable=True)
            yield tasks
            if tasks.dirty:
                self._commit(tasks)

    def _current_locked(self) -> _Live:
        live = self._read_live()
        if live.version < SCHEMA_VERSION:
            self._migrate_locked(live)  # what it wrote is ``live``: not read back
        return live

    def _commit(self, tasks: Tasks) -> None:
        live = tasks._live
        edits: dict[str, dict[str, Record | None]] = {}  # segment -> id -> record or removal
        for pid in tasks._removed:
            if pid in live.texts:
                live.pop(pid)
            elif pid in tasks._origin:
                edits.setdefault(tasks._origin[pid], {})[pid] = None
        for pid, record in tasks._puts.items():
            origin = tasks._origin.get(pid)
            if origin is not None and pid not in live.texts:
                edits.setdefault(origin, {})[pid] = record if is_settled(record) else None
                if not is_settled(record):
                    live.put(record)
            else:
                live.put(record)  # encoded again; what was not put is written as read
        cutoff = (datetime.now(timezone.utc) - timedelta(seconds=RECENT)).isoformat(
            timespec="milliseconds"
        )
        settled = [pid for pid, at in live.settled_at.items() if at is not None and at < cutoff]
        moving, known = {}, {}
        if len(settled) >= self.move_at:
            for pid in settled:
                moving[pid], known[pid] = live.pop(pid)
        live.changes += 1
        self._clear_temp_files(self.path.parent, f".{self.path.name}.", exact=True)
        if edits or moving:
            self._write_history(tasks._history, live, edits, moving, known)
        document = live.document()
        atomic_write(self.path, document)
        self._remember(live, document)

    def _write_history(
        self,
        history: _History,
        live: _Live,
        edits: dict[str, dict[str, Record | None]],
        moving: dict[str, Record],
        known: dict[str, str] | None = None,
    ) -> None:
        """New segment files for the changed ones (and the tail that takes ``moving``),
        then a new manifest; the caller's rename of the live file commits them.
        ``known``: records' text as read, for those unchanged since (see _tasks_document)."""
        manifest = history.manifest
        entries: list[dict[str, Any]] = list(manifest["segments"])
        size = self.segment_size
        tail = entries[-1] if entries and entries[-1]["count"] < size else None
        if moving and tail is not None:
            edits.setdefault(tail["file"], {}).update(moving)
            moving = {}
        seq = manifest["next"]
        kept, retired = [], []
        for entry in entries:
            change = edits.get(entry["file"])
            if change is None:
                kept.append(entry)
                continue
            retired.append(entry["file"])
            records = dict(history.segment(entry))
            for pid, record in change.items():
                if record is None:
                    records.pop(pid, None)
                else:
                    records[pid] = record
            ordered = sorted(records.items(), key=lambda item: _stamp(item[1]))
            for start in range(0, len(ordered), size):
                kept.append(self._write_segment(seq, dict(ordered[start : start + size]), known))
                seq += 1
        ordered = sorted(moving.items(), key=lambda item: _stamp(item[1]))
        for start in range(0, len(ordered), size):
            kept.append(self._write_segment(seq, dict(ordered[start : start + size]), known))
            seq += 1
        if live.history:
            retired.append(live.history)
        name = f"manifest-{seq:06d}.json"
        atomic_write(
            self.history_dir / name,
            json.dumps(
                {
                    "schema": "comfyctl.ledger-history",
                    "schema_version": SCHEMA_VERSION,
                    "next": seq + 1,
                    "segments": kept,
                },
                indent=1,
            ).encode(),
        )
        now = time.time()
        for old in retired:  # retired now: readers holding them get RETIRED_GRACE
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.history_dir / old, (now, now))
        self._collect_garbage({name, *(e["file"] for e in kept)}, now)
        live.history = name
        live.history_last = max((e["last"] for e in kept), default="")

    def _write_segment(
        self, seq: int, records: dict[str, Record], known: dict[str, str] | None = None
    ) -> dict[str, Any]:
        name = f"segment-{seq:06d}.json"
        head = {"schema": "comfyctl.ledger-segment", "schema_version": SCHEMA_VERSION}
        known = known or {}
        texts = {pid: known.get(pid) or _record_text(r) for pid, r in records.items()}
        atomic_write(self.history_dir / name, _tasks_document(head, texts))
        return _entry(name, records)

    def _collect_garbage(self, referenced: set[str], now: float) -> None:
        self._clear_temp_files(self.history_dir, ".")
        for path in self.history_dir.iterdir():
            if path.name not in referenced and path.suffix == ".json":
                with contextlib.suppress(FileNotFoundError):
                    if now - path.stat().st_mtime > RETIRED_GRACE:
                        path.unlink()

    @staticmethod
    def _clear_temp_files(folder: Path, prefix: str, exact: bool = False) -> None:
        # Written only under the lock: a temp file of these seen now is a killed writer's.
        # ``exact``: only atomic_write's names for ``prefix`` itself (then 8 random
        # characters): the leases file beside the ledger is written under its own lock.
        if not folder.is_dir():
            return
        for stale in folder.iterdir():
            name = stale.name
            if not (name.startswith(prefix) and name.endswith(".tmp")):
                continue
            if not exact or "." not in name[len(prefix) : -len(".tmp")]:
                stale.unlink(missing_ok=True)

    # -- migrations ---------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring an older ledger up to this schema (under the lock; a backup is kept)."""
        self._migrated(None)

    def _migrated(self, seen: _Live | None) -> _Live:
        """The live document brought up to this schema, under the lock. ``seen``: the old
        one as read without the lock, used when the file is still byte for byte what it
        was (a big old ledger is parsed once, not again under the lock)."""
        with self.locked():
            raw = _read_bytes(self.path, missing_ok=True)
            if seen is not None and seen.raw is not None and seen.raw == raw:
                live = seen
            else:  # changed meanwhile (another process may have migrated it already)
                live = _Live() if raw is None else self._parse_live(raw)
            if live.version < SCHEMA_VERSION:
                self._migrate_locked(live)
            return live

    def _migrate_locked(self, live: _Live) -> None:
        """Each step in turn, on ``live`` (read under the lock); then written, and ``live``
        is what is on disk. A step changes records through ``live.put`` and ``live.pop``
        (a record it does not change is written as the text it was read from)."""
        backup = self.path.with_name(f"{self.path.name}.schema-{live.version}.bak")
        atomic_write(backup, live.raw if live.raw is not None else self.path.read_bytes())
        for step in MIGRATIONS[live.version - 1 :]:
            step(self, live)
            live.version += 1
        atomic_write(self.path, live.document())
        live.raw = None

    # -- leases -------------------------------------------------------------------------

    @property
    def leases_path(self) -> Path:
        return self.path.with_name(self.path.name + ".leases.json")

    def _read_leases(self) -> dict[str, dict[str, Any]]:
        try:
            doc = json.loads(self.leases_path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # a damaged lease file only costs a takeover; it is rewritten
        leases = doc.get("leases") if isinstance(doc, dict) else None
        if not isinstance(leases, dict):
            return {}
        return {
            k: v
            for k, v in leases.items()
            if isinstance(v, dict) and isinstance(v.get("expires_at"), (int, float))
        }

    def _leases(self, change: Callable[[dict[str, dict[str, Any]], float], set[str]]) -> set[str]:
        # A file and a lock of their own: leases are renewed every few seconds and must not
        # wait for record transactions. Not fsynced: after a crash a lease is at worst
        # missing, which only lets the next holder in sooner (a dead holder's would expire).
        with self._flocked(self.leases_path.with_name(self.leases_path.name + ".lock")):
            now = time.time()
            leases = {k: v for k, v in self._read_leases().items() if v["expires_at"] > now}
            done = change(leases, now)
            if done:
                document = {"schema": "comfyctl.leases", "schema_version": 1, "leases": leases}
                atomic_write(
                    self.leases_path,
                    json.dumps(document, separators=(",", ":")).encode(),
                    durable=False,
                )
            return done

    def claim_leases(self, names: Collection[str], owner: str, ttl: float) -> set[str]:
        def claim(leases: dict[str, dict[str, Any]], now: float) -> set[str]:
            won = {n for n in names if leases.get(n, {}).get("owner", owner) == owner}
            for name in won:
                leases[name] = {"owner": owner, "expires_at": now + ttl}
            return won

        return self._leases(claim)

    def release_leases(self, names: Collection[str], owner: str) -> set[str]:
        def release(leases: dict[str, dict[str, Any]], now: float) -> set[str]:
            mine = {n for n in names if leases.get(n, {}).get("owner") == owner}
            for name in mine:
                del leases[name]
            return mine

        return self._leases(release)

    def lease(self, name: str) -> Lease | None:
        held = self._read_leases().get(name)
        if held is None or held["expires_at"] <= time.time():
            return None
        return Lease(name, str(held.get("owner")), float(held["expires_at"]))

    # -- the input map ------------------------------------------------------------------

    def _read_inputs(self) -> dict[str, dict[str, Any]]:
        try:
            doc = json.loads(self.inputs_path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # a lost map only costs uploads; the next change rewrites it
        servers = doc.get("servers") if isinstance(doc, dict) else None
        return servers if isinstance(servers, dict) else {}

    def input_name(self, server_url: str, sha256: str) -> dict[str, Any] | None:
        entry = self._read_inputs().get(server_url, {}).get(sha256)
        return entry if isinstance(entry, dict) else None

    def remember_input(self, server_url: str, sha256: str, info: dict[str, Any]) -> None:
        with self.locked():
            servers = self._read_inputs()
            servers.setdefault(server_url, {})[sha256] = info
            atomic_write(
                self.inputs_path,
                json.dumps(
                    {"schema": "comfyctl.inputs", "schema_version": 1, "servers": servers},
                    indent=1,
                    sort_keys=True,
                ).encode(),
            )

    # -- workflows ----------------------------------------------------------------------

    def store_workflow(self, graph: dict[str, Any]) -> str:
        data = json.dumps(graph, sort_keys=True, separators=(",", ":")).encode("utf-8")
        digest = hashlib.sha256(data).hexdigest()
        target = self.workflow_dir / f"{digest}.json"
        try:
            try:
                os.utime(target)  # fresh mtime: a concurrent prune leaves it alone
            except FileNotFoundError:
                atomic_write(target, data)
        except OSError as exc:
            if problem := _inaccessible(self.path, exc):
                raise problem from None
            if exc.filename:
                raise
            # Some calls (utime) do not say where: name the folder they were working in.
            raise OSError(exc.errno, exc.strerror, str(self.workflow_dir)) from None
        return f"sha256:{digest}"

    def load_workflow(self, ref: str) -> dict[str, Any]:
        digest = ref.split(":", 1)[-1]
        try:
            workflow: dict[str, Any] = json.loads(
                (self.workflow_dir / f"{digest}.json").read_bytes()
            )
        except (OSError, ValueError) as exc:
            raise LedgerError(
                f"The stored workflow {ref} is missing or unreadable ({exc}).",
                "It cannot be resubmitted; submit the workflow file again.",
            ) from None
        return workflow

    def prune_workflows(self, referenced: set[str], min_age: float = 3600.0) -> list[str]:
        removed: list[str] = []
        if not self.workflow_dir.is_dir():
            return removed
        now = time.time()
        for path in self.workflow_dir.glob("*.json"):
            ref = f"sha256:{path.stem}"
            if ref not in referenced and now - path.stat().st_mtime > min_age:
                path.unlink(missing_ok=True)
                removed.append(ref)
        return removed


class _Retrying(Tasks):
    """A snapshot view: should a history file it refers to be gone (replaced more than an
    hour ago), it reads the ledger again and retries, instead of failing."""

    def __init__(self, store: Ledger, live: _Live) -> None:
        super().__init__(store, live, writable=False)

    def _again(self, call: Callable[[], _T]) -> _T:
        for _ in range(3):
            try:
                return call()
            except _Stale:
                self.__init__(self.store, self.store._read_live())  # type: ignore[misc]
        raise LedgerCorrupt(self.store.history_dir, "a file its manifest lists is missing")

    def _lookup(self, prompt_id: str) -> Record | None:
        return self._again(lambda: Tasks._lookup(self, prompt_id))

    def _ids_with_prefix(self, prefix: str) -> list[str]:
        return self._again(lambda: Tasks._ids_with_prefix(self, prefix))

    def select(
        self, statuses: Collection[str] | None = None, server_urls: Collection[str] | None = None
    ) -> list[Record]:
        return self._again(lambda: Tasks.select(self, statuses, server_urls))

    def values(self) -> list[Record]:  # type: ignore[override]
        return self._again(lambda: Tasks.values(self))

    def newest(self) -> Iterator[Record]:
        handed = 0
        for _ in range(3):
            try:
                for i, record in enumerate(Tasks.newest(self)):
                    if i >= handed:  # after a retry, skip what was already handed out
                        handed += 1
                        yield record
                return
            except _Stale:
                self.__init__(self.store, self.store._read_live())  # type: ignore[misc]
        raise LedgerCorrupt(self.store.history_dir, "a file its manifest lists is missing")


def _schema1_to_2(store: Ledger, live: _Live) -> None:
    """Schema 1 kept every record in one file: settled ones move to history segments
    (no record changes: each is written as the text it was read from)."""
    settled, texts = {}, {}
    for pid in [pid for pid, at in live.settled_at.items() if at is not None]:
        settled[pid], texts[pid] = live.pop(pid)
    if settled:
        store._write_history(_History(store, None), live, {}, settled, texts)


# Migrations as data: MIGRATIONS[n - 1] turns schema n into n + 1 (recorded by the
# document's schema_version; the old file is kept as <ledger>.schema-<n>.bak).
MIGRATIONS: list[Callable[[Ledger, _Live], None]] = [_schema1_to_2]


def atomic_write(
    path: Path, data: bytes | list[bytes | memoryview], mode: int = 0o600, durable: bool = True
) -> None:
    """Write ``data`` (bytes, or pieces) to ``path`` so that readers see the old or the new
    file, never a mix; ``durable``: on disk (fsynced) before it returns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            for piece in [data] if isinstance(data, bytes) else data:
                handle.write(piece)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if not durable:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
