"""A throwaway PostgreSQL server for tests and benchmarks: temp dir, free loopback port.

The machine image ships PostgreSQL 15 (``/usr/lib/postgresql/15/bin``; ``PG_BINDIR``
overrides). initdb refuses to run as root, so as root the server runs as the ``postgres``
system user. ``COMFYCTL_TEST_POSTGRES`` (a ``postgresql://`` URL of a server whose user
may create databases) replaces it with a server of your own.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

BINDIR = Path(os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin"))


def available() -> bool:
    return bool(os.environ.get("COMFYCTL_TEST_POSTGRES")) or (BINDIR / "initdb").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _parent(proc: Path) -> int | None:
    try:
        status = (proc / "status").read_text()
    except OSError:
        return None
    return next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")), None
    )


class ThrowawayPostgres:
    """``with ThrowawayPostgres() as pg:`` ``pg.url`` reaches it as a superuser with a
    password; ``pg.database()`` makes a fresh empty database and returns its URL."""

    def __init__(self, fsync: bool = False) -> None:
        self.fsync = fsync
        self.base: Path | None = None
        self.url = os.environ.get("COMFYCTL_TEST_POSTGRES", "").rstrip("/")
        self._count = 0

    def __enter__(self) -> ThrowawayPostgres:
        if self.url:
            return self
        self.base = Path(tempfile.mkdtemp(prefix="comfyctl-pg-"))
        password = secrets.token_hex(12)
        (self.base / "pw").write_text(password)
        if os.geteuid() == 0:  # initdb refuses root: run the server as postgres
            user = pwd.getpwnam("postgres")
            for path in (self.base, self.base / "pw"):
                os.chown(path, user.pw_uid, user.pw_gid)
        port = _free_port()
        self._run(
            "initdb",
            "-D",
            str(self.base / "data"),
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--pwfile",
            str(self.base / "pw"),
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "--no-sync",
        )
        self._options = f"-p {port} -k {self.base} -c listen_addresses=127.0.0.1"
        if not self.fsync:
            self._options += " -c fsync=off -c synchronous_commit=off"
        self.start()
        self.url = f"postgresql://postgres:{password}@127.0.0.1:{port}"
        return self

    def start(self) -> None:
        assert self.base is not None
        data, log = str(self.base / "data"), str(self.base / "log")
        self._run("pg_ctl", "-D", data, "-l", log, "-w", "-o", self._options, "start")

    def stop(self) -> None:
        """A fast shutdown (every session terminated); ``start`` brings it back."""
        if self.base is None:
            raise RuntimeError("a server given by COMFYCTL_TEST_POSTGRES is not ours to stop")
        self._run("pg_ctl", "-D", str(self.base / "data"), "-m", "fast", "-w", "stop")

    def _run(self, tool: str, *args: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*prefix, str(BINDIR / tool), *args], check=True, capture_output=True, cwd="/"
        )

    def restart(self) -> None:
        """Stop and start the server (fast shutdown: every session is terminated)."""
        if self.base is None:
            raise RuntimeError("a server given by COMFYCTL_TEST_POSTGRES is not ours to restart")
        data, log = str(self.base / "data"), str(self.base / "log")
        self._run("pg_ctl", "-D", data, "-l", log, "-m", "fast", "-w", "restart")

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The server and every session stopped (SIGSTOP), as a paused VM or a hung host
        looks: connections stay open, the kernel acknowledges, nobody answers."""
        if self.base is None:
            raise RuntimeError("a server given by COMFYCTL_TEST_POSTGRES is not ours to freeze")
        postmaster = int((self.base / "data" / "postmaster.pid").read_text().split()[0])
        pids = [postmaster] + [
            int(entry.name)
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and _parent(entry) == postmaster
        ]
        self._signal(pids, signal.SIGSTOP)
        try:
            yield
        finally:
            self._signal(pids, signal.SIGCONT)

    @staticmethod
    def _signal(pids: list[int], signum: int) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # a session that just ended
                os.kill(pid, signum)

    def database(self) -> str:
        import psycopg

        self._count += 1
        name = f"comfyctl_{os.getpid()}_{self._count}"
        with psycopg.connect(self.url + "/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"{self.url}/{name}"

    def __exit__(self, *exc: object) -> None:
        if self.base is None:
            return
        try:
            self._run("pg_ctl", "-D", str(self.base / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
