"""Leases: exactly one comfyctl process at a time listens to a job's WebSocket.

ComfyUI 0.3.64 keeps one socket per client_id: a second connection with the job's
client_id replaces the first, which then hears nothing at all (not even broadcasts), and
when either closes, the server forgets the client_id's socket altogether. So every
process that follows a job (``watch``, ``submit --wait``, ``detect-stuck``'s listen)
first claims the job's lease ``listen:<prompt_id>`` in the ledger store. The holder
listens and writes what it hears to the store; every other process follows the job
through the store and takes the lease over when the holder's expires (a crash) or when
the holder, on this host and in its PID space, is no longer alive (found at once,
without waiting for expiry).

The lease calls are the store contract's (``claim_leases``, ``release_leases``, ``lease``;
see ``store.py``): a watcher of many jobs claims, renews and releases them in one call.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Collection
from typing import Any, Protocol

from comfyctl.errors import ComfyctlError
from comfyctl.liveness import gone, this_process
from comfyctl.store import Lease as Lease  # the lease a store reports

TTL = 5.0  # a holder that has not renewed for this long is taken for dead
RENEW_EVERY = 1.5


class LeaseStore(Protocol):
    def claim_leases(self, names: Collection[str], owner: str, ttl: float) -> set[str]: ...

    def release_leases(self, names: Collection[str], owner: str) -> set[str]: ...

    def lease(self, name: str) -> Any: ...


def listen_lease(prompt_id: str) -> str:
    return f"listen:{prompt_id}"


def new_owner(role: str) -> str:
    """``where:pid:role:nonce``: the process's name (``liveness``) lets others in its PID
    space see that a holder died; the nonce keeps two leases of one process apart."""
    return f"{this_process()}:{role}:{uuid.uuid4().hex[:8]}"


def leases_for(ledger: Any) -> LeaseStore:
    """The store's leases (every store has them: the Store contract)."""
    return ledger  # type: ignore[no-any-return]


def claim(store: LeaseStore, name: str, owner: str, ttl: float = TTL) -> bool:
    """Take the lease if it is free, expired, ours, or held by a dead process here."""
    return name in claim_all(store, [name], owner, ttl)


def claim_all(store: LeaseStore, names: Collection[str], owner: str, ttl: float = TTL) -> set[str]:
    """``claim`` for many leases in one store call (plus one per lease someone else holds,
    to see whether its holder is a dead process here)."""
    won = store.claim_leases(names, owner, ttl)
    for name in set(names) - won:
        held = store.lease(name)
        if held is not None and gone(held.owner):
            store.release_leases([name], held.owner)
            won |= store.claim_leases([name], owner, ttl)
    return won


def live_holder(store: LeaseStore, name: str) -> str | None:
    """The owner of an unexpired lease whose process is not known to be dead."""
    held = store.lease(name)
    if held is None or gone(held.owner):
        return None
    return str(held.owner)


def release_quietly(store: LeaseStore, names: Collection[str], owner: str) -> None:
    """Give leases up on the way out; a failure only delays the next holder by ``TTL``."""
    with contextlib.suppress(ComfyctlError, OSError):
        store.release_leases(names, owner)
