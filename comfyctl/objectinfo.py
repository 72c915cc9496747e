"""A server's node catalogue (``GET /object_info``), cached per server and version.

Converting a UI-format workflow needs the bound server's input specs (widget order,
which inputs are widgets); checking a workflow needs its lists and ranges. A real
server's ``/object_info`` is megabytes, so conversion reads a cached copy, keyed by the
server's canonical URL and its ``comfyui_version``, and refetches when it is older than
a day or lacks a node the workflow needs (a custom node installed since). ``validate``
always asks the server: model files and input images come and go.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfyctl.client import ServerClient
from comfyctl.config import ServerSpec
from comfyctl.errors import ServerFailed
from comfyctl.ledger import atomic_write

log = logging.getLogger("comfyctl.objectinfo")

CACHE_SCHEMA = "comfyctl.object_info"
MAX_AGE = 24 * 3600.0


@dataclass
class Catalogue:
    """One server's ``/object_info`` as fetched at ``fetched_at``."""

    server: str
    server_url: str
    version: str
    nodes: dict[str, Any]
    fetched_at: float

    def get(self, class_type: str) -> dict[str, Any] | None:
        info = self.nodes.get(class_type)
        return info if isinstance(info, dict) else None


def default_cache_dir() -> Path:
    override = os.environ.get("COMFYCTL_CACHE_DIR")
    if override:
        return Path(override)
    from platformdirs import user_cache_path

    return user_cache_path("comfyctl")


class ObjectInfoCache:
    def __init__(self, directory: Path, client_for: Callable[[ServerSpec], ServerClient]) -> None:
        self.directory = directory / "object_info"
        self.client_for = client_for
        self._memo: dict[str, Catalogue] = {}
        self._fetched: set[str] = set()  # asked the server in this process

    def get(
        self, spec: ServerSpec, fresh: bool = False, needs: set[str] | None = None
    ) -> Catalogue:
        """The server's catalogue; from the cache unless ``fresh``, stale, or missing any
        class in ``needs``."""
        memo = self._memo.get(spec.url)
        if memo is not None and (
            spec.url in self._fetched or (not fresh and (not needs or needs <= memo.nodes.keys()))
        ):
            return memo
        client = self.client_for(spec)
        version = _version(client)
        path = (
            self.directory / f"{hashlib.sha256(spec.url.encode()).hexdigest()[:16]}"
            f"-{_safe(version)}.json"
        )
        if not fresh:
            cached = self._read(path, spec)
            if (
                cached is not None
                and time.time() - cached.fetched_at < MAX_AGE
                and (not needs or needs <= cached.nodes.keys())
            ):
                self._memo[spec.url] = cached
                return cached
        log.info("fetching /object_info from %s (%s)", spec.name, spec.url)
        catalogue = Catalogue(spec.name, spec.url, version, client.object_info(), time.time())
        try:
            atomic_write(
                path,
                json.dumps(
                    {
                        "schema": CACHE_SCHEMA,
                        "server_url": spec.url,
                        "version": version,
                        "fetched_at": catalogue.fetched_at,
                        "object_info": catalogue.nodes,
                    },
                    separators=(",", ":"),
                ).encode(),
            )
        except OSError as exc:  # a cache that cannot be written only costs time
            log.info("cannot write the object_info cache %s: %s", path, exc)
        self._memo[spec.url] = catalogue
        self._fetched.add(spec.url)
        return catalogue

    def _read(self, path: Path, spec: ServerSpec) -> Catalogue | None:
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        if (
            not isinstance(data, dict)
            or data.get("schema") != CACHE_SCHEMA
            or data.get("server_url") != spec.url
            or not isinstance(data.get("object_info"), dict)
        ):
            return None
        return Catalogue(
            spec.name,
            spec.url,
            str(data.get("version")),
            data["object_info"],
            float(data.get("fetched_at") or 0),
        )


def _version(client: ServerClient) -> str:
    """``system_stats``' comfyui_version: a new release may change node specs."""
    try:
        system = client.system_stats().get("system")
    except ServerFailed:  # no /system_stats (a proxy, an odd build): version unknown
        return "unknown"
    version = system.get("comfyui_version") if isinstance(system, dict) else None
    return str(version) if version else "unknown"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in text)[:40]
