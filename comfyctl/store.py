"""The ledger contract: what every store (JSON files, PostgreSQL) guarantees to its callers.

Commands and engines only see ``Store`` and ``Records``; ``open_store`` picks the
implementation from the ``--ledger`` value (a path, or a ``postgresql://`` URL).

Guarantees common to every store:

- A transaction is serializable: while it runs, no other transaction (in this or any
  other process, on any host) changes the ledger. Its puts and removes land all together
  when the ``with`` block ends normally, and not at all when it raises.
- A record is a JSON object keyed by its ``prompt_id``; it carries at least ``server_url``
  and ``status``. What a transaction reads it may change in place and ``put`` back.
- Reads outside a transaction (``load``/``get``) take no lock and see committed data.
- A ledger that cannot be read is never overwritten (LedgerCorrupt, exit 7).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, overload, runtime_checkable

from comfyctl.errors import LedgerCorrupt, TaskNotFound, UsageProblem
from comfyctl.records import STATUSES

Record = dict[str, Any]
MIN_PREFIX = 4
# How far back find() looks for a job by the id it was submitted as (see RecordsBase._renamed).
RENAMED_WITHIN = 1000


@dataclass(frozen=True)
class Lease:
    """Who holds a named lease, and until when (seconds since the epoch, store clock)."""

    name: str
    owner: str
    expires_at: float


@runtime_checkable
class Records(Protocol):
    """The ledger's records as a transaction (or a read-only snapshot) sees them."""

    @overload
    def get(self, prompt_id: str, /) -> Record | None: ...

    @overload
    def get(self, prompt_id: str, default: Record, /) -> Record: ...

    def get(self, prompt_id: str, default: Record | None = None, /) -> Record | None:
        """The record with exactly this id, or ``default``."""

    def __getitem__(self, prompt_id: str) -> Record: ...

    def __contains__(self, prompt_id: object) -> bool: ...

    def find(self, prompt_id: str) -> Record:
        """By full id or a unique prefix of at least 4 characters. TaskNotFound (exit 4),
        or UsageProblem when the prefix is ambiguous."""

    def find_all(self, prompt_ids: Iterable[str]) -> list[Record]:
        """``find`` for each id, each record once, in the order given."""

    def select(
        self, statuses: Collection[str] | None = None, server_urls: Collection[str] | None = None
    ) -> list[Record]:
        """Records with one of ``statuses`` bound to one of ``server_urls`` (None: any)."""

    def unsettled(self) -> list[Record]:
        """Every record not ``is_settled``: unfinished jobs and lost ones (resubmitted or
        not) that detect-stuck and recover look at. Its cost does not grow with history."""

    def newest(self) -> Iterator[Record]:
        """Every record, newest ``submitted_at`` first, read lazily: taking a page of 20
        costs about 20 records, not the whole history."""

    def newest_first(self) -> Iterator[str]:
        """The ids of ``newest()``."""

    def values(self) -> list[Record]:
        """Every record (the slow path: reads all history)."""

    def put(self, record: Record) -> None:
        """Insert or replace the record with ``record["prompt_id"]`` (in a transaction)."""

    def remove(self, prompt_id: str) -> Record | None:
        """Delete a record; returns it, or None if there was none (in a transaction)."""


@runtime_checkable
class Store(Protocol):
    """A ledger: records, stored workflows, leases, per-server input names."""

    def describe(self) -> str:
        """Where the ledger is, safe to print (a database password is masked)."""

    def load(self) -> Records:
        """A read-only view of the committed records, taken without a lock."""

    def get(self, prompt_id: str) -> Record | None:
        """One committed record by exact id, without a lock."""

    def transaction(self) -> contextlib.AbstractContextManager[Records]:
        """Serializable read-modify-write (see the module docstring). Waits a bounded time
        for other transactions (LedgerLocked, exit 7)."""

    def changes(self) -> int:
        """A counter that grows with every committed transaction that changed a record:
        observers compare it with an earlier reading instead of re-reading the records."""

    def store_workflow(self, graph: dict[str, Any]) -> str:
        """Store a workflow once by content; returns ``sha256:<hex>``. Every host sharing
        the ledger can load it."""

    def load_workflow(self, ref: str) -> dict[str, Any]:
        """A stored workflow by reference; LedgerError when it is missing."""

    def prune_workflows(self, referenced: set[str], min_age: float = 3600.0) -> list[str]:
        """Remove stored workflows not in ``referenced`` and not used for ``min_age``
        seconds (a submit stores its workflow before its record); returns the removed."""

    def claim_leases(self, names: Collection[str], owner: str, ttl: float) -> set[str]:
        """Take (or renew: the same rule) each lease in ``names`` for ``ttl`` seconds from
        now if it is free, expired or already ``owner``'s; returns the names ``owner`` now
        holds. One call for many leases (a watcher renews all of its own at once). Atomic
        per name: of processes claiming one at once, exactly one gets it."""

    def release_leases(self, names: Collection[str], owner: str) -> set[str]:
        """Give up those of ``names`` that ``owner`` holds; returns them."""

    def lease(self, name: str) -> Lease | None:
        """The unexpired holder of ``name``, or None."""

    def input_name(self, server_url: str, sha256: str) -> dict[str, Any] | None:
        """What a file with this content was uploaded to ``server_url`` as (e.g.
        ``{"name": ..., "subfolder": ...}``), or None."""

    def remember_input(self, server_url: str, sha256: str, info: dict[str, Any]) -> None:
        """Record an upload (replacing an earlier entry for the same server and content)."""


class RecordsBase(Mapping[str, Record]):
    """Lookups shared by the stores' record views, built on three primitives."""

    def _ids_with_prefix(self, prefix: str) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def find(self, prompt_id: str) -> Record:
        record = self.get(prompt_id)
        if record is not None:
            return record
        if len(prompt_id) < MIN_PREFIX:
            raise TaskNotFound(prompt_id)
        matches = self._ids_with_prefix(prompt_id) or self._renamed(prompt_id)
        if len(matches) > 1:
            raise UsageProblem(
                f"{prompt_id!r} matches {len(matches)} jobs.", "Give more of the id."
            )
        if not matches:
            raise TaskNotFound(prompt_id)
        return self[matches[0]]

    def _renamed(self, prefix: str) -> list[str]:
        """The jobs submitted as an id starting with ``prefix`` that their server, an older
        one, gave ids of its own (``submitted_as``: see
        comfyctl.submission.as_the_server_has_it), among the RENAMED_WITHIN newest: what a
        script goes on with right after submitting."""
        newest = itertools.islice(self.newest(), RENAMED_WITHIN)
        return [
            r["prompt_id"] for r in newest if str(r.get("submitted_as") or "").startswith(prefix)
        ]

    def find_all(self, prompt_ids: Iterable[str]) -> list[Record]:
        found: dict[str, Record] = {}
        for prompt_id in prompt_ids:
            record = self.find(prompt_id)
            found[record["prompt_id"]] = record
        return list(found.values())

    def newest(self) -> Iterator[Record]:  # pragma: no cover - abstract
        raise NotImplementedError

    def select(
        self, statuses: Collection[str] | None = None, server_urls: Collection[str] | None = None
    ) -> list[Record]:
        raise NotImplementedError  # pragma: no cover - abstract

    def newest_first(self) -> Iterator[str]:
        return (record["prompt_id"] for record in self.newest())

    def unsettled(self) -> list[Record]:
        from comfyctl.records import ACTIVE, LOST

        return [r for r in self.select(statuses={*ACTIVE, LOST}) if not is_settled(r)]


def resolve_lock_timeout(given: float | None, default: float) -> float:
    """How long a store waits for its lock: as given, else COMFYCTL_LOCK_TIMEOUT, else
    the store's default."""
    if given is not None:
        return given
    text = os.environ.get("COMFYCTL_LOCK_TIMEOUT")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:  # also rejects NaN, with which the wait would never end
        raise UsageProblem(f"COMFYCTL_LOCK_TIMEOUT={text!r} is not a number of seconds.")
    return value


_NULL: type = type(None)
_STR: frozenset[type] = frozenset({str})
_OPT_STR: frozenset[type] = frozenset({str, _NULL})
_OPT_OBJ: frozenset[type] = frozenset({dict, _NULL})
_NUMBER: frozenset[type] = frozenset({int, float, bool})  # arithmetic takes a bool
# The type of each field a command reads (records.new_record's shape), by exact type:
# what JSON gives, and bool is no integer here. Not ``number`` nor the error's text: they
# come from the server as it sends them, and every reader takes any type.
_FIELD_TYPES: dict[str, frozenset[type]] = {
    "server_url": _STR,
    "server": _STR,
    "client_id": _STR,
    "submitted_at": _OPT_STR,
    "updated_at": _OPT_STR,
    "started_at": _OPT_STR,
    "finished_at": _OPT_STR,
    "progress": _OPT_OBJ,
    "progress_history": frozenset({list}),
    "outputs": frozenset({list}),
    "error": _OPT_OBJ,
    "warnings": frozenset({list}),
    "workflow": _OPT_STR,
    "resubmitted_from": _OPT_STR,
    "superseded_by": _OPT_STR,
    "recovered": _OPT_OBJ,
    "server_timing": _OPT_OBJ,
    "notified": _OPT_OBJ,
    "labels": frozenset({dict}),
    "submitter": _OPT_OBJ,
    "seen_alive": _OPT_OBJ,
    "probe": _OPT_OBJ,
    "blocked_by": _OPT_OBJ,
    "inputs": frozenset[type]({list, _NULL}),
}
_PROGRESS_TYPES = {
    "value": _NUMBER,
    "max": _NUMBER,
    "percent": _NUMBER,
    "node": _OPT_STR,
    "updated_at": _OPT_STR,
}
_OUTPUT_KEYS = ("node", "key", "filename", "subfolder", "type", "url")
_WORDS = {str: "a string", int: "an integer", dict: "an object", list: "a list"}


def check_record(where: Path | str, key: str, record: Any) -> None:
    """A record read from a store is one every command can rely on, else LedgerCorrupt:
    a hand-edited field of another type would end a command in a traceback."""
    if not isinstance(record, dict) or record.get("prompt_id") != key:
        raise LedgerCorrupt(where, f"the record under {key!r} is not a task record")
    problem = _record_problem(record)
    if problem:
        raise LedgerCorrupt(where, f"the record {key!r} {problem}")


def _record_problem(record: dict[str, Any]) -> str | None:
    """What is wrong with a record's fields, or None. Only fields present are checked
    (commands read a missing one with a default). Runs for every record read: kept cheap."""
    if "status" in record and record["status"] not in STATUSES:
        return f"has no known status ({_short(record['status'])})"
    for name, value in record.items():
        types = _FIELD_TYPES.get(name)
        if types is not None and type(value) not in types:
            return f"has {name} {_short(value)}, not {_words(types)}"
    url = record.get("server_url")
    if url is not None and not url.startswith(("http://", "https://")):
        return f"has server_url {_short(url)}, not an http(s) URL"
    progress = record.get("progress")
    if progress:
        for name, types in _PROGRESS_TYPES.items():
            if name in progress and type(progress[name]) not in types:
                return f"has progress {name} {_short(progress[name])}, not {_words(types)}"
    for output in record.get("outputs", ()):
        if type(output) is not dict:
            return f"has an output {_short(output)}, not an object"
        if not all(type(output.get(k, "")) is str for k in _OUTPUT_KEYS):
            return "has an output whose fields are not all strings"
    if not all(type(item) is dict for item in record.get("progress_history", ())):
        return "has progress_history entries that are not all objects"
    if not all(type(item) is str for item in record.get("warnings", ())):
        return "has warnings that are not all strings"
    if not all(type(v) is str for v in record.get("labels", {}).values()):
        return "has labels whose values are not all strings"
    return None


def _words(types: frozenset[type]) -> str:
    if types == _NUMBER:
        return "a number"
    words = " or ".join(sorted(_WORDS[t] for t in types if t is not _NULL))
    return words + (" or null" if _NULL in types else "")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def is_settled(record: Record) -> bool:
    """Finished for good: the server's final word, or lost, resubmitted, and its own server
    asked since (``records.superseded_unsettled``). Settled records are history; the JSON
    store moves them out of its live file."""
    from comfyctl.records import FINAL, LOST

    status = record.get("status")
    if status == LOST:
        return bool(record.get("superseded_by")) and bool(
            (record.get("recovered") or {}).get("original")
        )
    return status in FINAL


_QUERY_PASSWORD = re.compile(r"(?i)(password=)[^&\s]*")


def _userinfo(url: str) -> tuple[str, str, str] | None:
    """``url`` as (scheme://, userinfo, @host...), or None without userinfo. Split at the
    LAST '@': a password may hold '@', '/' or '#' unencoded, the host never does."""
    head, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if not sep or at < 0:
        return None
    return head + sep, rest[:at], rest[at:]


def mask_url(url: str) -> str:
    """A database URL with its password replaced by ***, whatever characters it holds:
    everything after the userinfo's first ':' goes, and any ``password=`` parameter."""
    url = _QUERY_PASSWORD.sub(r"\1***", url)
    parts = _userinfo(url)
    if parts is None:
        return url
    head, userinfo, host = parts
    user, colon, _ = userinfo.partition(":")
    return head + user + (":***" if colon else "") + host


_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def check_database_url(url: str) -> None:
    """Refuse a URL whose userinfo holds characters a URL cannot carry unencoded (libpq
    would misparse it and echo a piece of the password in its error)."""
    parts = _userinfo(url)
    if parts is None:
        return
    userinfo = parts[1]
    if any(c in userinfo for c in "@/?#[]") or _PERCENT.search(userinfo):
        raise UsageProblem(
            f"The ledger URL {mask_url(url)} cannot be read: the password in the URL must be "
            "percent-encoded.",
            "Encode it ('@' as %40, '/' as %2F, '#' as %23, ':' as %3A, '%' as %25), or leave "
            "it out of the URL and set PGPASSWORD.",
        )


def is_database_url(spec: str) -> bool:
    return spec.startswith(("postgresql://", "postgres://"))


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# Typos of a PostgreSQL URL (postgresql//, postgresql:/, Postgres:...): as a path each
# would be a JSON ledger in folders named after the password.
_LIKE_DATABASE_URL = re.compile(r"(?i)\s*postgres(?:ql)?(?::|//)")
# A libpq keyword string: nothing but key=value pairs, one of them a connection key.
_KEYWORDS = re.compile(r"\s*(?:[A-Za-z_]+\s*=\s*(?:'(?:[^'\\]|\\.)*'|\S*)\s*)+")
_CONNECTION_KEY = re.compile(
    r"(?i)(?:^|\s)(?:host|hostaddr|port|dbname|user|password|passfile|service|sslmode)\s*="
)
LEDGER_FORMS = "a JSON file path or a postgresql:// (or postgres://) URL"


def _looks_like_database(text: str) -> bool:
    if _LIKE_DATABASE_URL.match(text):
        return True
    return bool(_KEYWORDS.fullmatch(text)) and bool(_CONNECTION_KEY.search(text))


def open_store(spec: str | Path) -> Store:
    """The store for a ``--ledger`` value: a ``postgresql://`` URL, else a JSON file path.
    Any other URL is refused: as a path it would become a file named after it."""
    text = str(spec)
    if not text:
        raise UsageProblem(
            "The --ledger value is empty.",
            f"Give {LEDGER_FORMS}, or leave --ledger out to use COMFYCTL_LEDGER, the "
            "config's ledger or the default.",
        )
    if isinstance(spec, str) and not is_database_url(text) and _looks_like_database(text):
        # never echoed: it may hold a password
        raise UsageProblem(
            "The ledger value looks like a PostgreSQL connection but is not a postgresql:// URL.",
            "Write it as postgresql://user:password@host:port/dbname (or postgres://) in "
            "--ledger, COMFYCTL_LEDGER or the config's ledger.",
        )
    if is_database_url(text):
        from comfyctl.pgstore import PostgresStore

        check_database_url(text)
        return PostgresStore(text)
    if isinstance(spec, str) and _URL.match(text):
        scheme = text.split("://", 1)[0]  # the rest may hold a password
        raise UsageProblem(
            f"A ledger cannot be a {scheme}:// URL: it is {LEDGER_FORMS}.",
            "Check --ledger, COMFYCTL_LEDGER or the config's ledger.",
        )
    from comfyctl.ledger import Ledger

    return Ledger(Path(text))
