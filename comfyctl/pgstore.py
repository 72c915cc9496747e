"""The PostgreSQL store: one ledger shared by every host that can reach the database.

Records are JSONB rows with the columns queries need (status, server, submit time)
indexed. A transaction is one database transaction holding a transaction-level advisory
lock, so read-modify-writes are serialized across processes and hosts exactly as the JSON
store's flock serializes them on one host; plain reads take no lock. Lease expiry uses the
database's clock, the one clock all hosts share. Tables are created and migrated by
comfyctl itself (``MIGRATIONS``, recorded by name in ``comfyctl_migrations``).

Needs ``psycopg`` 3 (``pip install 'comfyctl[postgres]'``), imported only when used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any

from comfyctl.backoff import Backoff
from comfyctl.errors import (
    LedgerCorrupt,
    LedgerError,
    LedgerInterrupted,
    LedgerLocked,
    LedgerUnavailable,
)
from comfyctl.store import Lease, Record, RecordsBase, check_record, mask_url, resolve_lock_timeout

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("comfyctl.pgstore")

LOCK_KEY = 0x636F6D6679  # "comfy": the advisory lock every transaction holds
MIGRATION_LOCK_KEY = LOCK_KEY + 1
DEFAULT_LOCK_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10
STATEMENT_MARGIN = 5.0  # statement_timeout = lock timeout + this: slow but not locked
CLIENT_MARGIN = 2.0  # the client stops waiting this long after statement_timeout
WATCH_EVERY = 0.25
RETRY_AFTER = 5.0  # a database given up on is not waited for again before this
PRUNE_LEASES_EVERY = 60.0  # seconds between a store's deletions of long-expired leases
EXPIRED_LEASE_GRACE = 60.0  # how long a lease has been expired before it is deleted
MIN_MASKABLE = 6  # a shorter password matches ordinary words: replacing it garbles them
PAGE = 50  # rows per page of newest(): a history page of 20 is one round trip

# Migrations as data: (name, SQL), applied once each, in order, recorded by name.
MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001-tables",
        """
        CREATE TABLE comfyctl_tasks (
            prompt_id text PRIMARY KEY,
            server_url text NOT NULL,
            status text NOT NULL,
            submitted_at text NOT NULL,
            record jsonb NOT NULL);
        CREATE INDEX comfyctl_tasks_status ON comfyctl_tasks (status, server_url);
        CREATE INDEX comfyctl_tasks_newest ON comfyctl_tasks (submitted_at DESC, prompt_id DESC);
        CREATE INDEX comfyctl_tasks_prefix ON comfyctl_tasks (prompt_id text_pattern_ops);
        CREATE TABLE comfyctl_workflows (
            sha256 text PRIMARY KEY,
            body text NOT NULL,
            used_at timestamptz NOT NULL DEFAULT now());
        CREATE TABLE comfyctl_leases (
            name text PRIMARY KEY,
            owner text NOT NULL,
            expires_at timestamptz NOT NULL);
        CREATE TABLE comfyctl_inputs (
            server_url text NOT NULL,
            sha256 text NOT NULL,
            info jsonb NOT NULL,
            PRIMARY KEY (server_url, sha256));
        CREATE TABLE comfyctl_changes (
            id int PRIMARY KEY CHECK (id = 1),
            counter bigint NOT NULL);
        INSERT INTO comfyctl_changes VALUES (1, 0);
    """,
    ),
]


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise LedgerError(
            "The ledger is a PostgreSQL database, but psycopg is not installed.",
            "Install it with: pip install 'comfyctl[postgres]'.",
        ) from None
    return psycopg


class PgRecords(RecordsBase):
    """The records as one transaction (or, read-only, the committed state) sees them.
    ``conn``: the transaction's connection; None for a read-only view, which reads on the
    store's connection of the moment (it may have been replaced since the view was made)."""

    def __init__(self, store: PostgresStore, conn: psycopg.Connection[Any] | None) -> None:
        self.store = store
        self._conn = conn
        self._writable = conn is not None
        self._cache: dict[str, Record] = {}  # read in this view: the same object each time
        self.dirty = False

    def _rows(self, sql: str, params: Any = ()) -> list[Any]:
        with self.store._lock, self.store._errors():
            conn = self._conn if self._conn is not None else self.store._connection()
            return conn.execute(sql, params).fetchall()

    def _records(self, sql: str, params: Any = ()) -> list[Record]:
        out = []
        for (record,) in self._rows(sql, params):
            check_record(self.store.describe(), str(record.get("prompt_id")), record)
            out.append(self._cache.setdefault(record["prompt_id"], record))
        return out

    def __getitem__(self, prompt_id: str) -> Record:
        if prompt_id in self._cache:
            return self._cache[prompt_id]
        found = self._records(
            "SELECT record FROM comfyctl_tasks WHERE prompt_id = %s", (prompt_id,)
        )
        if not found:
            raise KeyError(prompt_id)
        return found[0]

    def __contains__(self, prompt_id: object) -> bool:
        return isinstance(prompt_id, str) and self.get(prompt_id) is not None

    def __iter__(self) -> Iterator[str]:
        return iter([pid for (pid,) in self._rows("SELECT prompt_id FROM comfyctl_tasks")])

    def __len__(self) -> int:
        return int(self._rows("SELECT count(*) FROM comfyctl_tasks")[0][0])

    def _ids_with_prefix(self, prefix: str) -> list[str]:
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return [
            pid
            for (pid,) in self._rows(
                "SELECT prompt_id FROM comfyctl_tasks WHERE prompt_id LIKE %s LIMIT 100", (pattern,)
            )
        ]

    def select(
        self, statuses: Collection[str] | None = None, server_urls: Collection[str] | None = None
    ) -> list[Record]:
        return self._records(
            "SELECT record FROM comfyctl_tasks WHERE (%s::text[] IS NULL OR status = ANY(%s))"
            " AND (%s::text[] IS NULL OR server_url = ANY(%s))",
            (_list(statuses), _list(statuses), _list(server_urls), _list(server_urls)),
        )

    def values(self) -> list[Record]:  # type: ignore[override]
        return self._records("SELECT record FROM comfyctl_tasks")

    def newest(self) -> Iterator[Record]:
        page = self._records(
            "SELECT record FROM comfyctl_tasks ORDER BY submitted_at DESC, prompt_id DESC LIMIT %s",
            (PAGE,),
        )
        while page:
            yield from page
            last = page[-1]
            page = self._records(
                "SELECT record FROM comfyctl_tasks WHERE (submitted_at, prompt_id) < (%s, %s)"
                " ORDER BY submitted_at DESC, prompt_id DESC LIMIT %s",
                (last.get("submitted_at") or "", last["prompt_id"], PAGE * 4),
            )

    def put(self, record: Record) -> None:
        self._check_writable()
        self._rows(
            "INSERT INTO comfyctl_tasks (prompt_id, server_url, status, submitted_at, record) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (prompt_id) DO UPDATE SET "
            "server_url = EXCLUDED.server_url, status = EXCLUDED.status, "
            "submitted_at = EXCLUDED.submitted_at, record = EXCLUDED.record RETURNING 1",
            (
                record["prompt_id"],
                str(record.get("server_url") or ""),
                str(record.get("status") or ""),
                record.get("submitted_at") or "",
                _jsonb(record),
            ),
        )
        self._cache[record["prompt_id"]] = record
        self.dirty = True

    def remove(self, prompt_id: str) -> Record | None:
        self._check_writable()
        found = self._rows(
            "DELETE FROM comfyctl_tasks WHERE prompt_id = %s RETURNING record", (prompt_id,)
        )
        cached = self._cache.pop(prompt_id, None)
        if not found:
            return None
        self.dirty = True
        return cached if cached is not None else found[0][0]

    def _check_writable(self) -> None:
        if not self._writable:
            raise LedgerError(
                "The ledger was read without a transaction; it cannot be changed through this view."
            )


def _hung_up(conn: psycopg.Connection[Any]) -> bool:
    """Whether the server ended an idle connection (it restarted, or an admin or a pooler
    closed it): its goodbye waits unread on the socket, and a statement sent there would
    fail. A watch keeps its connection for hours, so it is looked at before each use."""
    pg = _psycopg()
    if conn.info.transaction_status != pg.pq.TransactionStatus.IDLE:
        return False  # mid-transaction: what is there to read belongs to the transaction
    try:
        poller = select.poll()  # not select(): a descriptor may be above 1023
        poller.register(conn.fileno(), select.POLLIN)
        return bool(poller.poll(0))  # an idle session that LISTENs to nothing gets nothing
    except (OSError, ValueError, pg.Error):
        return True


def client_bound(lock_timeout: float) -> float:
    """How long a statement may go unanswered before the store stops waiting. The server's
    statement_timeout fires first, unless the server cannot run at all (a paused VM, a
    SIGSTOPped host, a network that drops packets): then only the client can end it."""
    return lock_timeout + STATEMENT_MARGIN + CLIENT_MARGIN


class _Watchdog:
    """One thread per process that ends a store's connection once a wait for the database
    has gone on for ``client_bound``: psycopg waits on the socket without a limit of its
    own. The socket is shut down, so the waiting call fails at once (LedgerUnavailable)."""

    def __init__(self) -> None:
        self._stores: weakref.WeakSet[PostgresStore] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, store: PostgresStore) -> None:
        with self._lock:
            self._stores.add(store)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pg-watchdog", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_EVERY)
            with self._lock:
                stores = list(self._stores)
            for store in stores:
                try:
                    store._cut_if_overdue(time.monotonic())
                except Exception:  # never the end of the bound for every store
                    log.debug("watchdog: %s", store.describe(), exc_info=True)


_WATCHDOG = _Watchdog()


def interrupt_waits(interruption: type[BaseException] = KeyboardInterrupt) -> bool:
    """For the CLI's SIGINT/SIGTERM handler: cut the main thread's wait for the database,
    which then ends with ``interruption``; False when it was not waiting on one. Raised
    inside psycopg's wait instead, an interrupt is followed by a cancel over a new
    connection, which a frozen server leaves unanswered for up to 10 s."""
    main = threading.main_thread().ident
    # Not waited for: the handler runs in the main thread, which may hold them itself.
    if not _WATCHDOG._lock.acquire(blocking=False):
        return False
    try:
        stores = list(_WATCHDOG._stores)
    finally:
        _WATCHDOG._lock.release()
    return any([store._interrupt(main or 0, interruption) for store in stores])


def _shut(conn: psycopg.Connection[Any]) -> bool:
    """Shut a connection's socket down: whoever waits on it is answered at once. False
    when it is closed or lost already (its waiter is answered)."""
    try:
        if conn.closed:
            return False
        sock = socket.socket(fileno=os.dup(conn.fileno()))
    except Exception:
        return False
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the server
    finally:
        sock.close()
    return True


def _list(values: Collection[str] | None) -> list[str] | None:
    return None if values is None else list(values)


def _jsonb(value: Any) -> Any:
    from psycopg.types.json import Jsonb

    return Jsonb(value)


class PostgresStore:
    """The PostgreSQL store (see the module docstring)."""

    def __init__(self, url: str, lock_timeout: float | None = None) -> None:
        self.url = url
        self.lock_timeout = resolve_lock_timeout(lock_timeout, DEFAULT_LOCK_TIMEOUT)
        self.bound = client_bound(self.lock_timeout)
        self._conn: psycopg.Connection[Any] | None = None
        # One connection, one user at a time: every use of it holds this lock.
        self._lock = threading.RLock()
        # When the lock holder's wait for the database began (None: not waiting, e.g. the
        # caller's own time inside a transaction), and the connection the watchdog shut;
        # both read by the watchdog, so changed (and the connection closed) under this.
        self._wait_lock = threading.Lock()
        self._waiting_since: float | None = None
        self._waiter: int | None = None  # the thread that waits (its ident)
        self._cut: psycopg.Connection[Any] | None = None
        # Ctrl-C (or SIGTERM) cut the main thread's wait: what the wait ends with instead
        # of the database's error (see interrupt_waits).
        self._interrupted: type[BaseException] | None = None
        # A connection that worked was lost (a restart): when the database stopped
        # answering, and the last time connecting failed (then, its error).
        self._down_since: float | None = None
        self._failed: tuple[float, str] | None = None
        self._pruned_at = float("-inf")  # see _prune_leases

    def describe(self) -> str:
        return mask_url(self.url)

    # -- connection and errors ----------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Database errors as one sentence each (exit 7), never naming the password. The
        block is a wait for the database, bounded by the watchdog (``client_bound``)."""
        psycopg = _psycopg()
        outer = self._waiting_since  # a wait that began outside: the same wait
        self._set_waiting(time.monotonic() if outer is None else outer, threading.get_ident())
        _WATCHDOG.watch(self)
        try:
            yield
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
            # lock_timeout or statement_timeout (see _connection): the database did not
            # answer within the store's bounds
            raise LedgerLocked(self.describe(), self.lock_timeout) from None
        except psycopg.errors.UndefinedTable:
            raise LedgerCorrupt(self.describe(), "its comfyctl tables are missing") from None
        except psycopg.OperationalError as exc:
            self._raise_interrupt()
            cut, worked = self._cut is not None, self._conn is not None
            reason = f"it did not answer within {self.bound:g} s" if cut else self._reason(exc)
            error = (LedgerInterrupted if worked and not cut else LedgerUnavailable)(
                self.describe(), reason
            )
            self._drop()
            if worked:  # it worked, and stopped: a restart, a freeze
                self._down_since = self._down_since or self._waiting_since
                # A cut has waited ``bound`` already: the next calls are not made to wait.
                self._failed = (time.monotonic(), reason) if cut else None
            raise error from None
        except psycopg.Error as exc:
            raise LedgerError(
                f"The ledger database {self.describe()} failed: {self._reason(exc)}."
            ) from None
        finally:
            self._set_waiting(outer)
            # Ctrl-C cut this wait, or came as it ended: said now, however else it ended.
            self._raise_interrupt()

    @contextlib.contextmanager
    def _callers_time(self) -> Iterator[None]:
        """Inside a transaction, the caller's own work: not a wait for the database."""
        self._set_waiting(None)
        try:
            yield
        finally:
            self._set_waiting(time.monotonic())  # what follows (COMMIT) is one

    def _set_waiting(self, since: float | None, waiter: int | None = None) -> None:
        with self._wait_lock:
            self._waiting_since = since
            self._waiter = waiter or self._waiter

    def _interrupt(self, thread: int, interruption: type[BaseException]) -> bool:
        """Cut ``thread``'s wait for the database, if it is waiting on it; the wait then
        ends with ``interruption`` (see interrupt_waits)."""
        if not self._wait_lock.acquire(blocking=False):  # held by the signalled thread
            return False
        try:
            if self._waiting_since is None or self._waiter != thread or self._conn is None:
                return False
            self._interrupted = interruption
            if not _shut(self._conn):
                self._interrupted = None
                return False
            return True
        finally:
            self._wait_lock.release()

    def _raise_interrupt(self) -> None:
        if threading.get_ident() != threading.main_thread().ident:
            return  # only the main thread's waits are cut (interrupt_waits)
        interruption, self._interrupted = self._interrupted, None
        if interruption is not None:
            self._drop()  # shut: no rollback is sent over it, none waited for
            raise interruption

    def _cut_if_overdue(self, now: float) -> None:
        """The watchdog's look: shut the connection of a wait older than ``bound``."""
        with self._wait_lock:
            since, conn = self._waiting_since, self._conn
            if since is None or conn is None or conn is self._cut or now - since <= self.bound:
                return
            self._cut = conn
            _shut(conn)

    def _reason(self, exc: Exception) -> str:
        """libpq's first line, with the URL and passwords taken out; without libpq's words
        when a password is too short to be taken out reliably and appears in them."""
        text = (str(exc).strip().splitlines() or ["no reason given"])[0]
        text = text.replace(self.url, self.describe())
        for secret in sorted(self._secrets(), key=len, reverse=True):
            if len(secret) < MIN_MASKABLE:
                if secret in text:
                    return "the database's reason is not shown: it may contain the password"
            else:
                text = text.replace(secret, "***")
        return text.rstrip(".")

    def _secrets(self) -> list[str]:
        from urllib.parse import unquote, urlsplit

        found = [os.environ.get("PGPASSWORD") or ""]
        with contextlib.suppress(ValueError):
            password = urlsplit(self.url).password or ""
            found += [password, unquote(password)]
        return [s for s in found if s]

    def _drop(self) -> None:
        with self._wait_lock:  # not closed while the watchdog shuts it (its fd reused)
            conn, self._conn, self._cut = self._conn, None, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None:
            if not self._conn.closed and not _hung_up(self._conn):
                return self._conn
            self._down_since = self._down_since or time.monotonic()  # ended by the server
            self._failed = None
        self._drop()
        if self._down_since is None:
            return self._connect(self.bound)  # a first one: a wrong URL is said at once
        conn = self._reconnect(self._down_since)
        if self._waiting_since is not None:
            self._set_waiting(time.monotonic())  # the statement's wait starts now
        return conn

    def _reconnect(self, down_since: float) -> psycopg.Connection[Any]:
        if self._failed is not None and time.monotonic() - self._failed[0] < RETRY_AFTER:
            raise LedgerUnavailable(self.describe(), self._failed[1])  # given up on just now
        # The database was there and stopped answering: a restart takes a moment, waited
        # for up to ``bound`` since it stopped (then once more every RETRY_AFTER).
        backoff = Backoff(0.2, 1.0)
        while True:
            remaining = down_since + self.bound - time.monotonic()
            try:
                conn = self._connect(remaining)
            except LedgerUnavailable as exc:
                remaining = down_since + self.bound - time.monotonic()
                if remaining <= 0:
                    self._failed = (time.monotonic(), exc.reason)
                    raise
                time.sleep(min(backoff.wait(), remaining))
                continue
            self._down_since = self._failed = None
            return conn

    def _connect(self, within: float) -> psycopg.Connection[Any]:
        pg = _psycopg()
        with self._errors():
            try:
                conn: psycopg.Connection[Any] = pg.connect(
                    self.url,
                    autocommit=True,
                    # libpq's bound on connecting, per address it tries (whole seconds,
                    # 2 at least); the watchdog's starts once there is a connection
                    connect_timeout=max(2, min(CONNECT_TIMEOUT, round(within))),
                    application_name="comfyctl",
                )
            except pg.ProgrammingError:
                # libpq could not parse the URL; its message quotes a piece of it
                raise LedgerUnavailable(
                    self.describe(), "libpq cannot parse its URL; check its spelling"
                ) from None
            with self._wait_lock:
                self._conn = conn  # watched from here on
            try:
                # Every statement bounded, reads outside a transaction too: without a
                # session timeout, a table another session locks makes a command wait.
                conn.execute(
                    f"SET lock_timeout = {self._ms(self.lock_timeout)}; "
                    f"SET statement_timeout = {self._ms(self.lock_timeout + STATEMENT_MARGIN)}"
                )
                self._migrate(conn)
            except BaseException:  # not set up (a newer schema, a lock, Ctrl-C): not used
                self._drop()
                raise
        return conn

    @staticmethod
    def _ms(seconds: float) -> int:
        return max(1, int(seconds * 1000))  # PostgreSQL reads 0 as "no timeout"

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        """Apply the migrations this database lacks; refuse one a newer comfyctl made."""
        known = [name for name, _ in MIGRATIONS]
        applied = self._applied(conn)
        if applied == known:
            return
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS comfyctl_migrations (name text PRIMARY "
                "KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied = self._applied(conn)
            newer = [name for name in applied if name not in known]
            if newer:
                raise LedgerCorrupt(
                    self.describe(),
                    f"its schema ({newer[-1]}) was written "
                    "by a newer comfyctl; upgrade comfyctl to use it",
                )
            for name, sql in MIGRATIONS:
                if name not in applied:
                    conn.execute(sql)
                    conn.execute("INSERT INTO comfyctl_migrations (name) VALUES (%s)", (name,))

    @staticmethod
    def _applied(conn: psycopg.Connection[Any]) -> list[str]:
        exists = conn.execute("SELECT to_regclass('comfyctl_migrations')").fetchone()
        if exists is None or exists[0] is None:
            return []
        return [
            name
            for (name,) in conn.execute(
                "SELECT name FROM comfyctl_migrations ORDER BY name"
            ).fetchall()
        ]

    def _one(self, sql: str, params: Any = ()) -> Any:
        with self._lock, self._errors():
            row = self._connection().execute(sql, params).fetchone()
            return None if row is None else row[0]

    # -- records ------------------------------------------------------------------------

    def load(self) -> PgRecords:
        with self._lock:
            self._connection()  # an unusable database is said here, not at the first read
        return PgRecords(self, None)

    def get(self, prompt_id: str) -> Record | None:
        record: Record | None = self._one(
            "SELECT record FROM comfyctl_tasks WHERE prompt_id = %s", (prompt_id,)
        )
        if record is not None:
            check_record(self.describe(), prompt_id, record)
        return record

    @contextlib.contextmanager
    def transaction(self) -> Iterator[PgRecords]:
        with self._lock:
            conn = self._connection()
            with self._errors(), conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = {self._ms(self.lock_timeout)}")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                tasks = PgRecords(self, conn)
                with self._callers_time():
                    yield tasks
                if tasks.dirty:
                    conn.execute("UPDATE comfyctl_changes SET counter = counter + 1")
                    conn.execute("NOTIFY comfyctl_changes")  # for observers that LISTEN

    def changes(self) -> int:
        return int(self._one("SELECT counter FROM comfyctl_changes"))

    # -- workflows ----------------------------------------------------------------------

    def store_workflow(self, graph: dict[str, Any]) -> str:
        import hashlib

        data = json.dumps(graph, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(data.encode("utf-8")).hexdigest()
        self._one(
            "INSERT INTO comfyctl_workflows (sha256, body) VALUES (%s, %s) "
            "ON CONFLICT (sha256) DO UPDATE SET used_at = now() RETURNING 1",
            (digest, data),
        )
        return f"sha256:{digest}"

    def load_workflow(self, ref: str) -> dict[str, Any]:
        body = self._one(
            "SELECT body FROM comfyctl_workflows WHERE sha256 = %s", (ref.split(":", 1)[-1],)
        )
        if body is None:
            raise LedgerError(
                f"The stored workflow {ref} is missing from {self.describe()}.",
                "It cannot be resubmitted; submit the workflow file again.",
            )
        workflow: dict[str, Any] = json.loads(body)
        return workflow

    def prune_workflows(self, referenced: set[str], min_age: float = 3600.0) -> list[str]:
        keep = [ref.split(":", 1)[-1] for ref in referenced]
        with self._lock, self._errors():
            rows = (
                self._connection()
                .execute(
                    "DELETE FROM comfyctl_workflows WHERE sha256 <> ALL(%s) AND "
                    "used_at < now() - %s * interval '1 second' RETURNING sha256",
                    (keep, min_age),
                )
                .fetchall()
            )
        return [f"sha256:{digest}" for (digest,) in rows]

    # -- leases -------------------------------------------------------------------------

    def claim_leases(self, names: Collection[str], owner: str, ttl: float) -> set[str]:
        # One statement: of claims racing on one name, the row lock lets exactly one win.
        won = self._lease_rows(
            "INSERT INTO comfyctl_leases AS l (name, owner, expires_at) "
            "SELECT unnest(%s::text[]), %s, now() + %s * interval '1 second' "
            "ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, "
            "expires_at = EXCLUDED.expires_at "
            "WHERE l.owner = EXCLUDED.owner OR l.expires_at <= now() RETURNING name",
            names,
            owner,
            ttl,
        )
        self._prune_leases()
        return won

    def _prune_leases(self) -> None:
        """Delete lease rows long expired (a killed holder never releases its own), now and
        then: rows another session holds are skipped, and a conflict is left for the next
        time (a statement of its own: one inside the claim could deadlock with others)."""
        now = time.monotonic()
        if now - self._pruned_at < PRUNE_LEASES_EVERY:
            return
        self._pruned_at = now
        errors = _psycopg().errors
        quietly = contextlib.suppress(
            errors.DeadlockDetected, errors.LockNotAvailable, errors.SerializationFailure
        )
        with self._lock, self._errors(), quietly:
            self._connection().execute(
                "DELETE FROM comfyctl_leases WHERE name IN (SELECT name FROM comfyctl_leases "
                "WHERE expires_at <= now() - %s * interval '1 second' FOR UPDATE SKIP LOCKED)",
                (EXPIRED_LEASE_GRACE,),
            )

    def release_leases(self, names: Collection[str], owner: str) -> set[str]:
        return self._lease_rows(
            "DELETE FROM comfyctl_leases WHERE name = ANY(%s) AND owner = %s RETURNING name",
            names,
            owner,
        )

    def _lease_rows(self, sql: str, names: Collection[str], *params: Any) -> set[str]:
        """The names ``sql`` (its first parameter: the names) returned. Names sorted, so
        two batches that overlap lock their rows in the same order."""
        if not names:
            return set()
        with self._lock, self._errors():
            rows = self._connection().execute(sql, (sorted(set(names)), *params)).fetchall()
        return {row[0] for row in rows}

    def lease(self, name: str) -> Lease | None:
        with self._lock, self._errors():
            row = (
                self._connection()
                .execute(
                    "SELECT owner, extract(epoch FROM expires_at) FROM comfyctl_leases "
                    "WHERE name = %s AND expires_at > now()",
                    (name,),
                )
                .fetchone()
            )
        return None if row is None else Lease(name, row[0], float(row[1]))

    # -- the input map ------------------------------------------------------------------

    def input_name(self, server_url: str, sha256: str) -> dict[str, Any] | None:
        info: dict[str, Any] | None = self._one(
            "SELECT info FROM comfyctl_inputs WHERE server_url = %s AND sha256 = %s",
            (server_url, sha256),
        )
        return info

    def remember_input(self, server_url: str, sha256: str, info: dict[str, Any]) -> None:
        self._one(
            "INSERT INTO comfyctl_inputs (server_url, sha256, info) VALUES (%s, %s, %s) "
            "ON CONFLICT (server_url, sha256) DO UPDATE SET info = EXCLUDED.info "
            "RETURNING 1",
            (server_url, sha256, _jsonb(info)),
        )
