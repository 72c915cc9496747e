"""Leases: exactly one comfyctl process at a time listens to a job's WebSocket.

ComfyUI 0.3.64 keeps one socket per client_id: a second connection with the job's
client_id replaces the first, which then hears nothing at all (not even broadcasts), and
when either closes, the server forgets the client_id's socket altogether. So every
process that follows a job (``watch``, ``submit --wait``, ``detect-stuck``'s listen)
first claims the job's lease ``listen:<prompt_id>`` in the ledger store. The holder
listens and writes what it hears to the store; every other process follows the job
through the store and takes the lease over when the holder's expires (a crash) or when
the holder, on this host, is no longer alive (found at once, without waiting for expiry).

The lease calls are the store contract's (``claim_lease``, ``renew_lease``,
``release_lease``, ``lease``). A store that has them is used as is; for the plain JSON
ledger they are kept here, in ``<ledger>.leases.json`` beside it, written under the
ledger's lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from comfyctl.errors import ComfyctlError

TTL = 5.0  # a holder that has not renewed for this long is taken for dead
RENEW_EVERY = 1.5


@dataclass(frozen=True)
class Lease:
    """Who holds a named lease, and until when (seconds since the epoch)."""

    name: str
    owner: str
    expires_at: float


class LeaseStore(Protocol):
    def claim_lease(self, name: str, owner: str, ttl: float) -> bool: ...

    def renew_lease(self, name: str, owner: str, ttl: float) -> bool: ...

    def release_lease(self, name: str, owner: str) -> bool: ...

    def lease(self, name: str) -> Any: ...


def listen_lease(prompt_id: str) -> str:
    return f"listen:{prompt_id}"


def new_owner(role: str) -> str:
    """``host:pid:role:nonce``: the host and pid let others on this host see that a
    holder died; the nonce keeps two leases of one process apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{role}:{uuid.uuid4().hex[:8]}"


def holder_gone(owner: str) -> bool:
    """Whether the process named by ``owner`` is on this host and no longer running."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def leases_for(ledger: Any) -> LeaseStore:
    """The store's own leases when it has them, else the JSON ledger's side file."""
    if hasattr(ledger, "claim_lease"):
        return ledger  # type: ignore[no-any-return]
    return FileLeases(ledger)


def claim(store: LeaseStore, name: str, owner: str, ttl: float = TTL) -> bool:
    """Take the lease if it is free, expired, ours, or held by a dead process here."""
    if store.claim_lease(name, owner, ttl):
        return True
    held = store.lease(name)
    if held is not None and holder_gone(held.owner):
        store.release_lease(name, held.owner)
        return store.claim_lease(name, owner, ttl)
    return False


def live_holder(store: LeaseStore, name: str) -> str | None:
    """The owner of an unexpired lease whose process is not known to be dead."""
    held = store.lease(name)
    if held is None or holder_gone(held.owner):
        return None
    return str(held.owner)


class FileLeases:
    """Leases of a JSON ledger: ``{"schema": "comfyctl.leases", "leases": {name:
    {owner, expires_at}}}`` beside it, changed under the ledger's lock and replaced
    atomically; read without the lock."""

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger
        self.path = Path(str(ledger.path) + ".leases.json")

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            doc = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # a damaged lease file only costs a takeover; it is rewritten
        leases = doc.get("leases") if isinstance(doc, dict) else None
        return leases if isinstance(leases, dict) else {}

    def _change(self, name: str, owner: str, ttl: float | None) -> bool:
        from comfyctl.ledger import atomic_write

        with self.ledger.locked():
            now = time.time()
            leases = {k: v for k, v in self._read().items()
                      if isinstance(v, dict) and float(v.get("expires_at", 0)) > now}
            held = leases.get(name)
            if held is not None and held.get("owner") != owner:
                return False
            if ttl is None:
                if held is None:
                    return False
                del leases[name]
            else:
                leases[name] = {"owner": owner, "expires_at": now + ttl}
            atomic_write(self.path, json.dumps(
                {"schema": "comfyctl.leases", "schema_version": 1, "leases": leases},
                separators=(",", ":")).encode())
            return True

    def claim_lease(self, name: str, owner: str, ttl: float) -> bool:
        return self._change(name, owner, ttl)

    renew_lease = claim_lease  # the same rule: ours, or free (expired and untaken)

    def release_lease(self, name: str, owner: str) -> bool:
        return self._change(name, owner, None)

    def lease(self, name: str) -> Lease | None:
        held = self._read().get(name)
        if not isinstance(held, dict) or float(held.get("expires_at", 0)) <= time.time():
            return None
        return Lease(name, str(held.get("owner")), float(held["expires_at"]))


def release_quietly(store: LeaseStore, name: str, owner: str) -> None:
    """Give a lease up on the way out; a failure only delays the next holder by ``TTL``."""
    with contextlib.suppress(ComfyctlError, OSError):
        store.release_lease(name, owner)
