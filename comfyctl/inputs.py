"""Input files (``--set NODE.INPUT=@PATH``): uploaded to the job's own server, by content.

A file goes to the server the job is bound to (``POST /upload/image``, ``type=input``,
never ``overwrite``) and the input takes the name the server answers: the server renames
a file whose name is taken by other content (``in (1).png``), so two different files
called ``in.png`` never replace each other. Which content went to which server under
which name is remembered per server URL and SHA-256, so the same file is not sent again
while the server still has it (checked with ``HEAD /view``, which costs no upload).

The memory lives behind :class:`InputMap` (``get``/``put``), kept by the ledger's store.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from comfyctl.client import ServerClient
from comfyctl.config import ServerSpec
from comfyctl.errors import InputRejected, WorkflowInvalid
from comfyctl.records import now_iso
from comfyctl.store import Store

log = logging.getLogger("comfyctl.inputs")


@dataclass(frozen=True)
class FileInput:
    """A local file for one node input; ``sha256`` and ``size`` taken when it was read."""

    node: str
    input: str
    path: Path
    sha256: str
    size: int

    def as_record(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "input": self.input,
            "path": str(self.path),
            "sha256": self.sha256,
            "size": self.size,
        }

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> FileInput:
        return cls(
            str(data["node"]),
            str(data["input"]),
            Path(data["path"]),
            str(data["sha256"]),
            int(data["size"]),
        )


@dataclass(frozen=True)
class Assignment:
    """One ``--set NODE.INPUT=VALUE``; ``value`` is a FileInput for ``@PATH``."""

    node: str
    input: str
    value: Any
    text: str


def parse_assignment(text: str) -> Assignment:
    """``NODE.INPUT=VALUE``: ``@PATH`` is a file to upload, ``@@...`` a literal ``@...``,
    else VALUE is JSON when it parses, else text."""
    target, sep, raw = text.partition("=")
    node, dot, name = target.partition(".")
    if not sep or not dot or not node or not name:
        raise WorkflowInvalid(f"--set {text!r} is not NODE.INPUT=VALUE.")
    value: Any
    if raw.startswith("@@"):
        value = raw[1:]
    elif raw.startswith("@"):
        value = read_file_input(node, name, raw[1:], text)
    else:
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
    return Assignment(node, name, value, text)


def read_file_input(node: str, name: str, path_text: str, text: str) -> FileInput:
    path = Path(path_text).expanduser()
    if not path_text:
        raise WorkflowInvalid(f"--set {text!r}: no file after '@' (use @@ for a literal @).")
    try:
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    except IsADirectoryError:
        raise InputRejected(f"--set {text!r}: {path} is a directory, not a file.") from None
    except OSError as exc:
        raise InputRejected(
            f"--set {text!r}: cannot read {path}: {exc.strerror or exc}.",
            "Use @@ for a literal '@'.",
        ) from None
    return FileInput(node, name, path.resolve(), digest.hexdigest(), size)


class InputMap(Protocol):
    """Which content (SHA-256) was uploaded to which server under which name."""

    def get(self, server_url: str, sha256: str) -> tuple[str, str] | None: ...

    def put(self, server_url: str, sha256: str, name: str, subfolder: str) -> None: ...


class LedgerInputMap:
    """The map kept by the ledger's store (``input_name``/``remember_input``), so every
    host sharing a database ledger knows what was uploaded where."""

    def __init__(self, ledger: Store) -> None:
        self.ledger = ledger

    def get(self, server_url: str, sha256: str) -> tuple[str, str] | None:
        entry = self.ledger.input_name(server_url, sha256)
        if entry is None or not isinstance(entry.get("name"), str):
            return None
        return entry["name"], str(entry.get("subfolder") or "")

    def put(self, server_url: str, sha256: str, name: str, subfolder: str) -> None:
        self.ledger.remember_input(
            server_url, sha256, {"name": name, "subfolder": subfolder, "uploaded_at": now_iso()}
        )


def input_value(name: str, subfolder: str) -> str:
    """How a loader names a file in the input folder: ``subfolder/name``."""
    return f"{subfolder}/{name}" if subfolder else name


@dataclass
class Uploader:
    inputs: InputMap
    client_for: Callable[[ServerSpec], ServerClient]
    uploaded: int = 0  # files actually sent in this process (for messages and tests)
    reused: int = 0

    def ensure(self, spec: ServerSpec, file: FileInput) -> str:
        """The value that names ``file`` on ``spec``'s server, uploading it if needed."""
        client = self.client_for(spec)
        known = self.inputs.get(spec.url, file.sha256)
        if known is not None and client.input_size(*known) == file.size:
            log.info("%s is already on %s as %s", file.path, spec.name, input_value(*known))
            self.reused += 1
            return input_value(*known)
        try:
            with open(file.path, "rb") as handle:
                if _sha256(handle) != file.sha256:
                    raise InputRejected(
                        f"{file.path} changed since it was read (node "
                        f"{file.node} input {file.input}).",
                        "Put the original file back, or submit again.",
                    )
                handle.seek(0)
                log.info("uploading %s to %s (%s)", file.path, spec.name, spec.url)
                name, subfolder = client.upload_input(file.path.name, handle)
        except OSError as exc:
            raise InputRejected(
                f"Cannot read {file.path} for node {file.node} input "
                f"{file.input}: {exc.strerror or exc}."
            ) from None
        self.inputs.put(spec.url, file.sha256, name, subfolder)
        self.uploaded += 1
        return input_value(name, subfolder)


def _sha256(handle: Any) -> str:
    digest = hashlib.sha256()
    while chunk := handle.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def place_inputs(
    graph: dict[str, Any], files: list[dict[str, Any]], spec: ServerSpec, uploader: Uploader
) -> dict[str, Any]:
    """A stored job's graph with its recorded input files put on ``spec``'s server (a
    resubmit elsewhere): each file uploaded there unless already there, each input renamed
    to the name it has there."""
    placed = {
        node: dict(body, inputs=dict(body.get("inputs") or {})) for node, body in graph.items()
    }
    for data in files:
        file = FileInput.from_record(data)
        if file.node in placed:
            placed[file.node]["inputs"][file.input] = uploader.ensure(spec, file)
    return placed
