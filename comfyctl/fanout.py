"""Asking many servers at once, each bounded by a deadline.

Each server gets its own daemon thread, so a server that hangs costs at most the
deadline and never delays the answers of the others (nor the process exit).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from comfyctl.errors import ComfyctlError, ServerError, ServerTimeout

K = TypeVar("K")
T = TypeVar("T")


@dataclass
class Answer(Generic[T]):
    value: T | None = None
    error: ServerError | None = None
    seconds: float = 0.0


def fan_out(
    keys: Iterable[K], ask: Callable[[K], T], deadline: float, name: Callable[[K], str] = str
) -> dict[K, Answer[T]]:
    """``ask(key)`` for every key concurrently; after ``deadline`` seconds the ones still
    running are answered with ServerTimeout."""
    answers: dict[K, Answer[T]] = {}
    lock = threading.Lock()
    threads = []

    def run(key: K) -> None:
        started = time.monotonic()
        try:
            answer: Answer[T] = Answer(value=ask(key))
        except ServerError as exc:
            answer = Answer(error=exc)
        except ComfyctlError as exc:  # e.g. an unset ${VAR} in this server's config
            answer = Answer(error=ServerError(name(key), exc.message))
        answer.seconds = time.monotonic() - started
        with lock:
            answers.setdefault(key, answer)

    for key in keys:
        thread = threading.Thread(target=run, args=(key,), daemon=True, name=f"ask {key}")
        thread.start()
        threads.append((key, thread))
    end = time.monotonic() + deadline
    for _, thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    with lock:
        for key, _ in threads:
            answers.setdefault(
                key, Answer(error=ServerTimeout(name(key), "timeout"), seconds=deadline)
            )
        return dict(answers)
