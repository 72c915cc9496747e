"""Whether a comfyctl process named in the ledger is still running.

A process is named ``where:pid``. ``where`` is the hostname plus a token of the PID space
the pid belongs to (the machine's boot id and the PID namespace): containers can share
a hostname (host networking, ``unshare --pid``) but not their pids, so a pid written in
another PID space says nothing here, and a process there is never taken for dead from
here — its lease expires, its write-ahead record goes stale, as any remote one's.
"""

from __future__ import annotations

import hashlib
import os
import socket
from functools import cache
from pathlib import Path


@cache
def _where() -> str:
    try:
        parts = [
            Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
            os.readlink("/proc/self/ns/pid"),
        ]
    except OSError:  # not Linux: the hostname alone names the PID space
        return socket.gethostname()
    token = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}/{token}"


def this_process() -> str:
    """This process's name, ``where:pid``."""
    return f"{_where()}:{os.getpid()}"


def gone(process: str) -> bool:
    """Whether ``process`` (a ``where:pid`` name, maybe followed by ``:...``) is in this PID
    space and no longer running. Anything else — another host, another PID space, an
    older comfyctl's name, a malformed one — is not known to be gone."""
    where, _, rest = process.partition(":")
    pid_text = rest.partition(":")[0]
    if where != _where() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # running, as another user
        return False
    return False
