"""Saving outputs from a job's own server, without ever writing outside the target directory.

Files land in ``DIR/<server name>/<subfolder>/<filename>``. Names come from the server
and are not trusted: ``..``, absolute paths, backslashes and NUL bytes are neutralised,
and the final path is checked to be inside DIR.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import requests

from comfyctl.client import ServerClient
from comfyctl.errors import ComfyctlError, ExitCode

_UNSAFE = re.compile(r"[\x00-\x1f]")


class UnsafeOutputPath(ComfyctlError):
    pass


class DownloadFailed(ComfyctlError):
    """Some outputs could not be saved; ``failures`` names each file and why. The message
    names the files only: each reason is a sentence of its own, told as it happens."""

    exit_code = ExitCode.FAILED

    def __init__(
        self,
        failures: list[tuple[str, str]],
        done: list[tuple[Path, str]] | None = None,
        hint: str | None = None,
    ) -> None:
        shown = ", ".join(name for name, _ in failures[:5])
        more = f" and {len(failures) - 5} more" if len(failures) > 5 else ""
        super().__init__(f"{len(failures)} download(s) failed: {shown}{more}.", hint)
        self.failures = failures
        self.done = done or []


def _safe_part(part: str) -> str:
    part = _UNSAFE.sub("", part).strip()
    return "" if part in ("", ".", "..") else part


def safe_relative(server: str, subfolder: str, filename: str) -> Path:
    """The path below DIR for one output; every component is a plain name."""
    folders = [_safe_part(p) for p in re.split(r"[\\/]", subfolder or "")]
    name_parts = [p for p in (_safe_part(x) for x in re.split(r"[\\/]", filename or "")) if p]
    name = name_parts[-1] if name_parts else "output"
    server_dir = _safe_part(server.replace("/", "_").replace(":", "_")) or "server"
    return Path(server_dir, *[f for f in folders if f], name)


def target_path(root: Path, server: str, output: dict[str, Any]) -> Path:
    relative = safe_relative(server, output.get("subfolder", ""), output.get("filename", ""))
    base = root.resolve()
    target = (base / relative).resolve()
    if base != target and base not in target.parents:
        raise UnsafeOutputPath(f"Refusing to write {output.get('filename')!r} outside {root}.")
    return target


def download_outputs(
    client: ServerClient, record: dict[str, Any], root: Path, overwrite: bool = False
) -> list[tuple[Path, str]]:
    """Fetch every output of ``record`` from its bound server; returns (path, "saved" or
    "exists"). Every file is tried; then DownloadFailed names each one that failed."""
    results = []
    failures: list[tuple[str, str]] = []
    for output in record.get("outputs", []):
        name = str(output.get("filename"))
        try:
            target = target_path(root, record["server"], output)
            if target.exists() and not overwrite:
                results.append((target, "exists"))
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            _fetch(client, output, target)
        except ComfyctlError as exc:
            failures.append((name, str(exc)))
            continue
        except requests.exceptions.RequestException as exc:  # its text may hold the URL
            failures.append((name, f"the transfer broke off ({type(exc).__name__})"))
            continue
        except OSError as exc:  # e.g. a full disk, or DIR not writable
            where = exc.filename or root
            failures.append((name, f"{exc.strerror or exc} ({where})"))
            continue
        results.append((target, "saved"))
    if failures:
        raise DownloadFailed(
            [(f"{n} (job {record['prompt_id']})", why) for n, why in failures], results
        )
    return results


def _fetch(client: ServerClient, output: dict[str, Any], target: Path) -> None:
    with client.view(output) as resp:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".download.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in resp.iter_content(chunk_size=65536):
                    handle.write(chunk)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
