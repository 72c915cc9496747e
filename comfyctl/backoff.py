"""Doubling delays between attempts: the one retry schedule of every loop that retries
(HTTP reads, webhooks, a dropped WebSocket, the ledger lock)."""

from __future__ import annotations


class Backoff:
    """``wait()`` gives ``first``, then twice the last, up to ``most``; ``reset()`` after a
    success starts over."""

    def __init__(self, first: float, most: float) -> None:
        self.first, self.most = first, most
        self.upcoming = first  # the delay the next ``wait()`` returns

    def wait(self) -> float:
        delay = self.upcoming
        self.upcoming = min(delay * 2, self.most)
        return delay

    def reset(self) -> None:
        self.upcoming = self.first
