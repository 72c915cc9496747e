"""``-v``: what comfyctl does, logged to stderr with configured secrets redacted.

Its own module so that ``logging`` is imported only when asked for (``--help`` and
completion stay fast).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from comfyctl.errors import ComfyctlError


class RedactingFilter(logging.Filter):
    """Keeps configured secrets out of --verbose output."""

    def __init__(self, secrets: Callable[[], list[str]]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        try:
            secrets = self.secrets()
        except ComfyctlError:  # an unreadable config: nothing of it can be in a message
            secrets = []
        for secret in secrets:
            message = message.replace(secret, "***")
        record.msg, record.args = message, None
        return True


def log_to_stderr(verbose: int, secrets: Callable[[], list[str]]) -> Callable[[], None]:
    """Logs comfyctl's INFO (DEBUG with ``verbose`` > 1) to stderr; returns the undo, so
    in-process runs (tests, library use) do not pile up handlers."""
    logger = logging.getLogger("comfyctl")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter(secrets))
    handler.setFormatter(logging.Formatter("comfyctl: %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)

    def detach() -> None:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)

    return detach
