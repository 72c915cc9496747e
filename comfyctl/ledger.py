"""The task ledger: one JSON document, safe under concurrent processes and crashes.

Every read-modify-write holds an exclusive ``flock`` on ``<ledger>.lock`` and ends
with an atomic replace (temp file, fsync, rename, fsync of the directory), so a
SIGKILL at any instant leaves either the previous or the next complete document.
Plain reads take no lock: a rename is atomic, so a reader always sees a whole file.
A file that does not parse is never overwritten (LedgerCorrupt, exit 7).

Workflow bodies are kept out of the document, content-addressed beside it in
``workflows/<sha256>.json`` so that ``recover`` can resubmit them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import mmap
import os
import re
import tempfile
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from comfyctl.errors import (
    LedgerCorrupt,
    LedgerError,
    LedgerLocked,
    TaskNotFound,
    UsageProblem,
)
from comfyctl.records import STATUSES

SCHEMA_NAME = "comfyctl.ledger"
SCHEMA_VERSION = 1
DEFAULT_LOCK_TIMEOUT = 10.0

Record = dict[str, Any]

# The layout our writer produces: grep- and diff-friendly, and splittable without parsing.
_HEADER = (b'{"schema": "%s", "schema_version": %d, "tasks": {\n'
           % (SCHEMA_NAME.encode(), SCHEMA_VERSION))
_FOOTER = b"}}\n"
_KEY = re.compile(rb'("(?:[^"\\\n]|\\.)*"):\{')
_LINE_START = re.compile(rb'\n("(?:[^"\\\n]|\\.)*"):\{')
_NEWLINE_KEY = re.compile(rb'\n"')
_SUBMITTED_FAST = re.compile(
    rb'\n("[^"\\\n]*"):\{"prompt_id":"[^"\\\n]*","server":"[^"\\\n]*",'
    rb'"server_url":"[^"\\\n]*","client_id":"[^"\\\n]*","status":"[a-z]*",'
    rb'"submitted_at":"([^"]*)"')
_SUBMITTED = re.compile(rb'\n("(?:[^"\\\n]|\\.)*"):\{[^\n]*?"submitted_at":"([^"]*)"')
_ENCODER = json.JSONEncoder(separators=(",", ":"))
INDEX_AFTER_LOOKUPS = 16
MIN_PREFIX = 4


def _key_bytes(prompt_id: str) -> bytes:
    return json.dumps(prompt_id).encode() + b":"


def _decode_key(key: bytes) -> str:
    return key[1:-1].decode() if b"\\" not in key else json.loads(key)


def _check_record(path: Path, key: str, record: Any) -> None:
    if not isinstance(record, dict) or record.get("prompt_id") != key:
        raise LedgerCorrupt(path, f"the record under {key!r} is not a task record")
    # What every command relies on; anything else would be shown or acted on wrongly.
    if "status" in record and record["status"] not in STATUSES:
        raise LedgerCorrupt(path, f"the record {key!r} has no known status "
                                  f"({record.get('status')!r})")


class Tasks(Mapping[str, Record]):
    """The ledger's records, read lazily from the file's bytes.

    The file keeps one record per line. A command finds the lines it needs by byte search
    (in C, over a memory map), parses only those, and writes the untouched lines back as
    slices of the old file, so load, query and update stay fast on ledgers of 100,000
    records. ``put``/``remove`` mark it for writing; a record is fully checked when parsed.
    Positions are offsets in ``raw``: lines are ``"id":{...}``, separated by ",\n", between
    ``lo`` (the header's newline) and ``hi`` (just after the last line's newline).
    """

    def __init__(self, path: Path, raw: bytes | mmap.mmap = _HEADER + _FOOTER,
                 parsed: dict[str, Record] | None = None) -> None:
        self.path = path
        self._raw = raw
        self._lo, self._hi = len(_HEADER) - 1, len(raw) - len(_FOOTER)
        self._parsed: dict[str, Record] = dict(parsed or {})  # read (cache) or put
        self._changed: dict[str, None] = dict.fromkeys(parsed or {})  # put, in order
        self._removed: set[str] = set()
        self._index: dict[str, int] | None = None  # id -> where its line starts
        self._lookups = 0
        self.dirty = False

    # -- the Mapping protocol --------------------------------------------------------

    def __getitem__(self, prompt_id: str) -> Record:
        if prompt_id in self._removed:
            raise KeyError(prompt_id)
        record = self._parsed.get(prompt_id)
        if record is None:
            span = self._span(prompt_id)
            if span is None:
                raise KeyError(prompt_id)
            record = self._parse_line(prompt_id, span)
            self._parsed[prompt_id] = record
        return record

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __contains__(self, prompt_id: object) -> bool:
        if not isinstance(prompt_id, str) or prompt_id in self._removed:
            return False
        return prompt_id in self._parsed or self._span(prompt_id) is not None

    def values(self) -> list[Record]:  # type: ignore[override]
        """Every record (parses all of them: the slow path). A list, so callers may
        remove records while going through it."""
        return [self[pid] for pid in self._keys()]

    def find(self, prompt_id: str) -> Record:
        """A record by its full id, or by a unique prefix of at least 4 characters (the
        tables show 8). TaskNotFound (exit 4), or UsageProblem when the prefix is ambiguous."""
        if prompt_id in self:
            return self[prompt_id]
        matches = [pid for pid in self if pid.startswith(prompt_id)] \
            if len(prompt_id) >= MIN_PREFIX else []
        if len(matches) > 1:
            raise UsageProblem(f"{prompt_id!r} matches {len(matches)} jobs.",
                               "Give more of the id.")
        if not matches:
            raise TaskNotFound(prompt_id)
        return self[matches[0]]

    def find_all(self, prompt_ids: Iterable[str]) -> list[Record]:
        """``find`` for each id, each record once, in the order given."""
        found = {}
        for prompt_id in prompt_ids:
            record = self.find(prompt_id)
            found[record["prompt_id"]] = record
        return list(found.values())

    # -- changes ---------------------------------------------------------------------

    def put(self, record: Record) -> None:
        pid = record["prompt_id"]
        self._parsed[pid] = record
        self._changed[pid] = None
        self._removed.discard(pid)
        self.dirty = True

    def remove(self, prompt_id: str) -> Record | None:
        if prompt_id not in self:
            return None
        record = self[prompt_id]
        self._removed.add(prompt_id)
        self._parsed.pop(prompt_id, None)
        self._changed.pop(prompt_id, None)
        self.dirty = True
        return record

    # -- queries ---------------------------------------------------------------------

    def select(self, statuses: Collection[str] | None = None,
               server_urls: Collection[str] | None = None) -> list[Record]:
        """Records with one of ``statuses`` and bound to one of ``server_urls``. With
        statuses, only the lines that mention one of them are parsed."""
        if statuses is None:
            ids = self._keys()
        else:
            pattern = re.compile(b'"status":(?:' + b"|".join(
                re.escape(json.dumps(s).encode()) for s in statuses) + b")")
            hits = [self._line_id(m.start())
                    for m in pattern.finditer(self._raw, self._lo, self._hi)]
            ids = list(dict.fromkeys([h for h in hits if h is not None] + list(self._parsed)))
        return [record for record in (self[pid] for pid in ids if pid not in self._removed)
                if (statuses is None or record["status"] in statuses)
                and (server_urls is None or record["server_url"] in server_urls)]

    def newest_first(self) -> list[str]:
        """Ids by submit time, newest first, read from the lines without parsing them."""
        # Our records begin with the same fields in the same order, so a strict pattern
        # finds each stamp quickly; if it missed a line (a record edited by hand), the
        # general pattern reads them all.
        lines = len(_NEWLINE_KEY.findall(self._raw, self._lo, self._hi))
        found = list(_SUBMITTED_FAST.finditer(self._raw, self._lo, self._hi))
        if len(found) != lines:
            found = list(_SUBMITTED.finditer(self._raw, self._lo, self._hi))
        stamps, starts = {}, {}
        for match in found:
            pid = _decode_key(match.group(1))
            stamps[pid], starts[pid] = match.group(2).decode(), match.start() + 1
        if self._index is None and len(starts) == lines:
            self._index = starts  # the same pass located every line: lookups are now free
        if len(stamps) < lines:  # a line without a submit time: parsing it says what is wrong
            for pid in self._keys():
                if pid not in stamps and pid not in self._removed:
                    self[pid]
        for pid, record in self._parsed.items():
            stamps[pid] = record.get("submitted_at") or ""
        ids = [pid for pid in stamps if pid not in self._removed]
        return sorted(ids, key=stamps.__getitem__, reverse=True)

    # -- the file --------------------------------------------------------------------

    def chunks(self) -> list[bytes | memoryview]:
        """The whole document as pieces to write: runs of untouched lines are slices of
        the old file (no copy), changed and new records are re-encoded."""
        touched = sorted((span, pid) for pid in (*self._changed, *self._removed)
                         if (span := self._span(pid)) is not None)
        view = memoryview(self._raw)
        parts: list[bytes | memoryview] = []
        cursor = self._lo + 1  # start of the next line not yet emitted
        for (start, end), pid in touched:
            if cursor < start:
                parts.append(view[cursor:start - 2])  # the run before it, without ",\n"
            if pid not in self._removed:
                parts.append(self._encode(pid))
            cursor = end + 2
        if cursor < self._hi - 1:
            parts.append(view[cursor:self._hi - 1])
        parts += [self._encode(pid) for pid in self._changed if self._span(pid) is None]
        if not parts:
            return [_HEADER, _FOOTER]
        out: list[bytes | memoryview] = [_HEADER]
        for part in parts:
            out += [part, b",\n"]
        out[-1] = b"\n"
        return [*out, _FOOTER]

    def _encode(self, prompt_id: str) -> bytes:
        return _key_bytes(prompt_id) + _ENCODER.encode(self._parsed[prompt_id]).encode()

    def _span(self, prompt_id: str) -> tuple[int, int] | None:
        """Where the record's line is: its first byte, and the end of its JSON."""
        self._lookups += 1
        if self._index is None and self._lookups > INDEX_AFTER_LOOKUPS:
            self._keys()  # many lookups: one pass to index every line beats a scan each
        if self._index is not None:
            start = self._index.get(prompt_id)
            return None if start is None else self._line_span(start)
        found = self._raw.find(b"\n" + _key_bytes(prompt_id) + b"{", self._lo, self._hi)
        return None if found < 0 else self._line_span(found + 1)

    def _line_span(self, start: int) -> tuple[int, int]:
        newline = self._raw.find(b"\n", start, self._hi)
        return start, newline - (self._raw[newline - 1] == ord(","))

    def _keys(self) -> list[str]:
        if self._index is None:
            self._index = {_decode_key(match.group(1)): match.start() + 1
                           for match in _LINE_START.finditer(self._raw, self._lo, self._hi)}
        existing = [pid for pid in self._index if pid not in self._removed]
        return existing + [pid for pid in self._changed if pid not in self._index]

    def _line_id(self, position: int) -> str | None:
        """The id of the record whose line holds ``position``."""
        start = self._raw.rfind(b"\n", self._lo, position + 1) + 1
        match = _KEY.match(self._raw, start)
        return _decode_key(match.group(1)) if match else None

    def _parse_line(self, prompt_id: str, span: tuple[int, int]) -> Record:
        raw = self._raw[span[0] + len(_key_bytes(prompt_id)):span[1]]
        try:
            record: Record = json.loads(raw)  # _check_record below proves the shape
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LedgerCorrupt(self.path, f"the record {prompt_id!r} is not valid JSON: "
                                           f"{exc}") from None
        _check_record(self.path, prompt_id, record)
        return record


class Ledger:
    def __init__(self, path: Path, lock_timeout: float | None = None) -> None:
        self.path = Path(path)
        env_timeout = os.environ.get("COMFYCTL_LOCK_TIMEOUT")
        self.lock_timeout = lock_timeout if lock_timeout is not None else (
            _seconds(env_timeout) if env_timeout else DEFAULT_LOCK_TIMEOUT
        )
        self._thread_lock = threading.Lock()

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @property
    def workflow_dir(self) -> Path:
        return self.path.parent / "workflows"

    # -- reading -------------------------------------------------------------------------

    def load(self) -> Tasks:
        """All records (parsed lazily), read without the lock: the file is always whole
        (writers replace it by rename, so the mapped old file stays valid)."""
        try:
            with open(self.path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                raw = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except FileNotFoundError:
            return Tasks(self.path)
        except IsADirectoryError:
            raise LedgerCorrupt(self.path, "it is a directory") from None
        except OSError as exc:
            raise LedgerCorrupt(self.path, exc.strerror or str(exc)) from None
        tasks = self._split(raw)  # (not `or`: the truth of a Mapping is its length)
        return tasks if tasks is not None else self._parse(bytes(raw))

    def get(self, prompt_id: str) -> Record | None:
        return self.load().get(prompt_id)

    def _split(self, raw: bytes | mmap.mmap) -> Tasks | None:
        """The fast path for our own layout: header line, one record per line, footer.
        None for any other layout (hand-edited, pretty-printed), which then gets a full,
        strict parse and is rewritten in our layout on the next change."""
        size = len(raw)
        if size < len(_HEADER) + len(_FOOTER) or raw[:len(_HEADER)] != _HEADER \
                or raw[size - len(_FOOTER):] != _FOOTER or raw[size - len(_FOOTER) - 1] != 10:
            return None
        if size > len(_HEADER) + len(_FOOTER) and not _KEY.match(raw, len(_HEADER)):
            return None
        return Tasks(self.path, raw)

    def _parse(self, raw: bytes) -> Tasks:
        if not raw.strip():
            raise LedgerCorrupt(self.path, "it is empty")
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LedgerCorrupt(self.path, f"not valid JSON: {exc}") from None
        except RecursionError:
            raise LedgerCorrupt(self.path, "it is nested too deeply") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), dict):
            raise LedgerCorrupt(self.path, "it is not a comfyctl ledger")
        version = doc.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise LedgerCorrupt(
                self.path, f"schema_version {version!r} is not one this comfyctl reads"
            )
        tasks = doc["tasks"]
        for key, record in tasks.items():
            _check_record(self.path, key, record)
        return Tasks(self.path, parsed=tasks)

    # -- writing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the cross-process lock (bounded wait, then LedgerLocked)."""
        deadline = time.monotonic() + self.lock_timeout
        with self._thread_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                delay = 0.002
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise LedgerLocked(self.path, self.lock_timeout) from None
                        time.sleep(delay)
                        delay = min(delay * 2, 0.05)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the flock

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tasks]:
        """Lock, read, let the caller change records, write atomically if anything changed."""
        with self.locked():
            tasks = self.load()
            yield tasks
            if tasks.dirty:
                self._write(tasks)

    def _write(self, tasks: Tasks) -> None:
        # Ledger writes happen only under the lock: a temp file seen now is a killed writer's.
        prefix = f".{self.path.name}."
        for stale in self.path.parent.iterdir():
            if stale.name.startswith(prefix) and stale.name.endswith(".tmp"):
                stale.unlink(missing_ok=True)
        atomic_write(self.path, tasks.chunks())

    # -- workflows -----------------------------------------------------------------------

    def store_workflow(self, graph: dict[str, Any]) -> str:
        """Store a workflow once by content; returns its reference ``sha256:<hex>``."""
        data = json.dumps(graph, sort_keys=True, separators=(",", ":")).encode("utf-8")
        digest = hashlib.sha256(data).hexdigest()
        target = self.workflow_dir / f"{digest}.json"
        try:
            os.utime(target)  # fresh mtime: a concurrent prune leaves it alone
        except FileNotFoundError:
            atomic_write(target, data)
        return f"sha256:{digest}"

    def load_workflow(self, ref: str) -> dict[str, Any]:
        digest = ref.split(":", 1)[-1]
        try:
            workflow: dict[str, Any] = json.loads(
                (self.workflow_dir / f"{digest}.json").read_bytes())
        except (OSError, ValueError) as exc:
            raise LedgerError(
                f"The stored workflow {ref} is missing or unreadable ({exc}).",
                "It cannot be resubmitted; submit the workflow file again.",
            ) from None
        return workflow

    def prune_workflows(self, referenced: set[str], min_age: float = 3600.0) -> list[str]:
        """Remove stored workflows no record refers to; returns the removed references.
        Recently used files are kept: a submit stores its workflow before its record."""
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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:  # also rejects NaN, with which the wait would never end
        raise UsageProblem(f"COMFYCTL_LOCK_TIMEOUT={text!r} is not a number of seconds.")
    return value


def atomic_write(path: Path, data: bytes | list[bytes | memoryview], mode: int = 0o600) \
        -> None:
    """Write ``data`` (bytes, or pieces) to ``path`` so that readers see the old or the new
    file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            for piece in [data] if isinstance(data, bytes) else data:
                handle.write(piece)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
