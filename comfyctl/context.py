"""The per-invocation context: paths and settings, with config, ledger and clients made lazily.

Building it costs nothing (no file or network access), so --help and completion stay fast.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from comfyctl.config import Config, ServerSpec
from comfyctl.errors import UsageProblem
from comfyctl.store import Record, Store, open_store

if TYPE_CHECKING:
    from comfyctl.client import ServerClient
    from comfyctl.hooks import Webhook
    from comfyctl.inputs import Uploader
    from comfyctl.objectinfo import ObjectInfoCache

APP_NAME = "comfyctl"


def default_config_path() -> Path:
    from platformdirs import user_config_path

    return user_config_path(APP_NAME) / "config.toml"


def default_ledger_path() -> Path:
    from platformdirs import user_data_path

    return user_data_path(APP_NAME) / "ledger.json"


@dataclass
class AppContext:
    config_path: Path | None = None
    config_required: bool = False
    ledger_path: Path | str | None = None  # --ledger / COMFYCTL_LEDGER: a path or a URL
    verbose: int = 0
    color: bool = True
    timeout: float | None = None  # a per-run bound on every server's timeouts
    _config: Config | None = field(default=None, repr=False)
    _ledger: Store | None = field(default=None, repr=False)
    _clients: dict[str, ServerClient] = field(default_factory=dict, repr=False)
    _object_info: ObjectInfoCache | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            path = self.config_path or default_config_path()
            self._config = Config.load(path, required=self.config_required)
        return self._config

    @property
    def ledger(self) -> Store:
        """The store named by --ledger (or COMFYCTL_LEDGER), else the config's ``ledger``,
        else the JSON file in the user data dir. Opening it touches nothing yet."""
        if self._ledger is None:
            location = self.ledger_path  # "" (an empty --ledger) is refused by open_store
            if location is None:
                location = self.config.ledger or default_ledger_path()
            elif self.config_required:
                # Read all the same: a config named by --config or COMFYCTL_CONFIG must
                # exist, and a typo in its name must not go unnoticed.
                _ = self.config
            self._ledger = open_store(location)
        return self._ledger

    def use_ledger(self, location: Path | str) -> None:
        """From now on, the store at ``location`` (the demo's throwaway ledger)."""
        self.ledger_path, self._ledger = location, None

    @property
    def object_info(self) -> ObjectInfoCache:
        """Each server's /object_info, cached per server and version (COMFYCTL_CACHE_DIR)."""
        from comfyctl.objectinfo import ObjectInfoCache, default_cache_dir

        if self._object_info is None:
            self._object_info = ObjectInfoCache(default_cache_dir(), self.client)
        return self._object_info

    def uploader(self) -> Uploader:
        """Uploads ``@PATH`` inputs to a job's server, remembering what each server has."""
        from comfyctl.inputs import LedgerInputMap, Uploader

        return Uploader(LedgerInputMap(self.ledger), self.client)

    def client(self, spec: ServerSpec) -> ServerClient:
        from comfyctl.client import ServerClient

        if spec.problem is not None:  # e.g. an unset ${VAR}: reported when the server is used
            raise spec.problem
        if self.timeout is not None:
            spec = replace(
                spec,
                timeout=min(spec.timeout, self.timeout),
                connect_timeout=min(spec.connect_timeout, self.timeout),
            )
        if spec.url not in self._clients:
            self._clients[spec.url] = ServerClient(spec)
        return self._clients[spec.url]

    def spec_for_record(self, record: Record) -> ServerSpec:
        """The job's bound server. The binding is the URL recorded at submit; the config
        only contributes credentials and timeouts for that same URL."""
        url = record["server_url"]
        named = self.config.servers.get(record["server"])
        if named is not None and named.url == url:
            return named
        for spec in self.config.servers.values():
            if spec.url == url:
                return spec
        return ServerSpec(name=record["server"], url=url, configured=False)

    def client_for_record(self, record: Record) -> ServerClient:
        return self.client(self.spec_for_record(record))

    def webhooks_for(self, record: Record) -> list[Webhook]:
        """The configured webhook for a job: its server's own, else the global one."""
        from comfyctl.hooks import Webhook

        spec = self.spec_for_record(record)
        if spec.webhook:
            return [Webhook(spec.webhook, spec.webhook_secret)]
        if self.config.webhook:
            return [Webhook(self.config.webhook, self.config.webhook_secret)]
        return []

    def on_servers(self, names: tuple[str, ...]) -> Callable[[Record], bool] | None:
        """What every --server filter keeps: the jobs of the servers named
        (``jobs.bound_to``); None when none is named."""
        if not names:
            return None
        from comfyctl.jobs import bound_to

        return bound_to([spec.url for spec in self.servers(names)], names)

    def jobs_on(self, names: tuple[str, ...], records: Iterable[Record]) -> list[Record]:
        """The ``records`` of the servers named (``on_servers``); all when none is named."""
        keep = self.on_servers(names)
        return [r for r in records if keep is None or keep(r)]

    def servers(self, names: tuple[str, ...] | list[str]) -> list[ServerSpec]:
        """The servers named on the command line, else the default one."""
        if names:
            specs: dict[str, ServerSpec] = {}
            for name in names:
                spec = self.config.resolve(name)
                specs.setdefault(spec.url, spec)
            return list(specs.values())
        default = self.config.default(os.environ.get("COMFYCTL_SERVER"))
        if default is None:
            raise UsageProblem(
                "No server given and no default server is configured.",
                "Pass --server NAME|URL, set COMFYCTL_SERVER, or set default_server in "
                f"{self.config_path or default_config_path()}.",
            )
        return [default]
