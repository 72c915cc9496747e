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
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from comfyctl.errors import LedgerCorrupt, LedgerError, LedgerLocked, UsageProblem

SCHEMA_NAME = "comfyctl.ledger"
SCHEMA_VERSION = 1
DEFAULT_LOCK_TIMEOUT = 10.0

Record = dict[str, Any]


class Tasks:
    """The records of one transaction; ``put``/``remove`` mark it for writing."""

    def __init__(self, records: dict[str, Record]) -> None:
        self.records = records
        self.dirty = False

    def get(self, prompt_id: str) -> Record | None:
        return self.records.get(prompt_id)

    def put(self, record: Record) -> None:
        self.records[record["prompt_id"]] = record
        self.dirty = True

    def remove(self, prompt_id: str) -> Record | None:
        self.dirty = True
        return self.records.pop(prompt_id, None)

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self.records

    def __len__(self) -> int:
        return len(self.records)

    def values(self) -> Iterator[Record]:
        return iter(list(self.records.values()))


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

    def load(self) -> dict[str, Record]:
        """All records, read without the lock (the file is always complete)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except IsADirectoryError:
            raise LedgerCorrupt(self.path, "it is a directory") from None
        except OSError as exc:
            raise LedgerCorrupt(self.path, exc.strerror or str(exc)) from None
        return self._parse(raw)

    def get(self, prompt_id: str) -> Record | None:
        return self.load().get(prompt_id)

    def _parse(self, raw: bytes) -> dict[str, Record]:
        if not raw.strip():
            raise LedgerCorrupt(self.path, "it is empty")
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LedgerCorrupt(self.path, f"not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), dict):
            raise LedgerCorrupt(self.path, "it is not a comfyctl ledger")
        version = doc.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise LedgerCorrupt(
                self.path, f"schema_version {version!r} is not one this comfyctl reads"
            )
        tasks = doc["tasks"]
        for key, record in tasks.items():
            if not isinstance(record, dict) or record.get("prompt_id") != key:
                raise LedgerCorrupt(self.path, f"the record under {key!r} is not a task record")
        return tasks

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
            tasks = Tasks(self.load())
            yield tasks
            if tasks.dirty:
                self._write(tasks.records)

    def _write(self, records: dict[str, Record]) -> None:
        # One record per line: cheap to write, and grep/diff-friendly.
        head = json.dumps({"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION})[:-1]
        lines = [
            json.dumps(pid) + ":" + json.dumps(rec, separators=(",", ":"))
            for pid, rec in records.items()
        ]
        body = head + ', "tasks": {\n' + ",\n".join(lines) + "\n}}\n"
        # Ledger writes happen only under the lock: a temp file seen now is a killed writer's.
        prefix = f".{self.path.name}."
        for stale in self.path.parent.iterdir():
            if stale.name.startswith(prefix) and stale.name.endswith(".tmp"):
                stale.unlink(missing_ok=True)
        atomic_write(self.path, body.encode("utf-8"))

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
            return json.loads((self.workflow_dir / f"{digest}.json").read_bytes())
        except (OSError, ValueError) as exc:
            raise LedgerError(
                f"The stored workflow {ref} is missing or unreadable ({exc}).",
                "It cannot be resubmitted; submit the workflow file again.",
            ) from None

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


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
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
