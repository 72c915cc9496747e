"""Server definitions and the TOML config file.

A config file looks like::

    default_server = "gpu1"

    [servers.gpu1]
    url = "https://gpu1.example.com/comfy"   # http(s), host, port, optional path prefix
    headers = { "X-Team" = "render" }
    username = "alice"
    password = "${GPU1_PASSWORD}"             # ${VAR} is read from the environment
    token = "${GPU1_TOKEN}"                    # appended as ?token=... to HTTP and WebSocket URLs
    webhook = "https://hooks.example.com/x"    # POSTed each finished job of this server
    webhook_secret = "${HOOK_SECRET}"          # signs it (X-Comfyctl-Signature)
    verify = true                              # false, or a CA bundle path
    timeout = 10                               # read timeout, seconds
    connect_timeout = 3

A top-level ``webhook``/``webhook_secret`` applies to jobs of every server that has none
of its own. Wherever a server name is accepted a bare URL works too. Secrets (password,
token, header values, webhook URLs and secrets) live only in ``ServerSpec`` and ``Config``
objects; nothing here ever renders them.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from comfyctl.errors import ConfigError, UnknownServer

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 3.0
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SERVER_KEYS = {
    "url",
    "headers",
    "username",
    "password",
    "token",
    "token_param",
    "verify",
    "timeout",
    "connect_timeout",
    "webhook",
    "webhook_secret",
}
_TOP_LEVEL_KEYS = {"default_server", "defaults", "ledger", "servers", "webhook", "webhook_secret"}


@dataclass(frozen=True)
class ServerSpec:
    """Everything needed to talk to one server. ``url`` is canonical and secret-free."""

    name: str
    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    token_param: str = "token"
    verify: bool | str = True
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    configured: bool = True
    problem: ConfigError | None = field(default=None, repr=False, compare=False)
    webhook: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)

    def public(self) -> dict[str, Any]:
        """A description safe to print: secrets appear only as 'set'."""
        return {
            "name": self.name,
            "url": self.url,
            "configured": self.configured,
            "headers": sorted(self.headers),
            "basic_auth": self.username is not None,
            "token": "set" if self.token else None,
            "verify": self.verify,
            "timeout": self.timeout,
            "connect_timeout": self.connect_timeout,
            "problem": self.problem.message if self.problem else None,
            "webhook": "set" if self.webhook else None,
        }

    def secrets(self) -> list[str]:
        values = [
            self.password,
            self.token,
            *self.headers.values(),
            self.webhook,
            self.webhook_secret,
        ]
        return [v for v in values if v and len(v) >= 4]


def canonical_url(raw: str) -> str:
    """Normalise a server URL: lower-case scheme and host, no default port, no trailing
    slash, no query, fragment or credentials. Raises ConfigError when it is not usable."""
    text = raw.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"Invalid server URL {_redact_userinfo(raw)!r}: {exc}.") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ConfigError(
            f"Invalid server URL {_redact_userinfo(raw)!r}: the scheme must be http or https."
        )
    if not parts.hostname:
        raise ConfigError(f"Invalid server URL {_redact_userinfo(raw)!r}: it names no host.")
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default_port = {"http": 80, "https": 443}[scheme]
    netloc = host if port in (None, default_port) else f"{host}:{port}"
    path = quote(parts.path.rstrip("/"), safe="/%:@!$&'()*+,;=-._~")
    return urlunsplit((scheme, netloc, path, "", ""))


def _redact_userinfo(raw: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", raw)


def _expand(value: Any, where: str) -> Any:
    """Replace ${VAR} with the environment's value; a missing variable is a config error."""
    if not isinstance(value, str):
        return value

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(
                f"{where} refers to ${{{name}}}, which is not set in the environment.",
                f"Export {name} or edit the config file.",
            )
        return os.environ[name]

    return _ENV_REF.sub(sub, value)


def _server_from_table(name: str, table: Any, defaults: dict[str, Any]) -> ServerSpec:
    where = f"Server {name!r} in the config"
    if not isinstance(table, dict):
        raise ConfigError(f'{where} must be a table with at least url = "http://host:port".')
    unknown = set(table) - _SERVER_KEYS
    if unknown:
        raise ConfigError(
            f"{where} has unknown keys: {', '.join(sorted(unknown))}.",
            f"Known keys: {', '.join(sorted(_SERVER_KEYS))}.",
        )
    merged = {**defaults, **table}
    if "url" not in merged or not isinstance(merged["url"], str):
        raise ConfigError(f'{where} needs url = "http://host:port".')
    raw_url = _expand(merged["url"], where)
    try:  # first: a URL urlsplit cannot parse is a ConfigError
        url = canonical_url(raw_url)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}", exc.hint) from None
    userinfo = urlsplit(raw_url if "://" in raw_url else "http://" + raw_url)
    if userinfo.query:  # the canonical url has none: a token there would never be sent
        raise ConfigError(
            f"{where}: its url has a query (?...), which comfyctl does not send.",
            'Give a token as token = "..." (and token_param = "..." if the server names '
            "it otherwise), not in the url.",
        )
    problems: list[ConfigError] = []

    def secret(value: Any) -> Any:
        # An unset ${VAR} only matters once this server is used: other servers still work.
        try:
            return _expand(value, where)
        except ConfigError as exc:
            problems.append(exc)
            return None

    username = secret(merged.get("username"))
    password = secret(merged.get("password"))
    if userinfo.username and username is None:  # credentials written inside the URL
        username = unquote(userinfo.username)  # userinfo is percent-encoded
        password = None if userinfo.password is None else unquote(userinfo.password)
    headers = merged.get("headers", {})
    if not isinstance(headers, dict):
        raise ConfigError(f"{where}: headers must be a table of strings.")
    verify = merged.get("verify", True)
    if not isinstance(verify, (bool, str)):
        raise ConfigError(f"{where}: verify must be true, false or a CA bundle path.")
    try:
        timeout = float(merged.get("timeout", DEFAULT_TIMEOUT))
        fallback = min(timeout, DEFAULT_CONNECT_TIMEOUT)
        connect_timeout = float(merged.get("connect_timeout", fallback))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: timeout and connect_timeout must be numbers.") from None
    if timeout <= 0 or connect_timeout <= 0:
        raise ConfigError(f"{where}: timeouts must be positive.")
    return ServerSpec(
        name=name,
        url=url,
        headers=_headers({str(k): str(secret(v)) for k, v in headers.items()}, where),
        username=username,
        password=password,
        token=secret(merged.get("token")) or None,
        token_param=str(merged.get("token_param", "token")),
        verify=secret(verify),
        timeout=timeout,
        connect_timeout=connect_timeout,
        problem=problems[0] if problems else None,
        webhook=_webhook_url(secret(merged.get("webhook")), where),
        webhook_secret=_string(secret(merged.get("webhook_secret")), where, "webhook_secret"),
    )


def _string(value: Any, where: str, key: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string.")
    return value or None


def _webhook_url(value: Any, where: str) -> str | None:
    url = _string(value, where, "webhook")
    if url is not None and urlsplit(url).scheme not in ("http", "https"):
        raise ConfigError(f"{where}: webhook must be an http(s) URL.")
    return url


@dataclass
class Config:
    path: Path | None = None
    servers: dict[str, ServerSpec] = field(default_factory=dict)
    default_server: str | None = None
    ledger: str | None = None  # a JSON file path or a postgresql:// URL (${VAR} expanded)
    webhook: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)

    def secrets(self) -> list[str]:
        """Every secret the config holds, for redaction."""
        values = [
            self.webhook,
            self.webhook_secret,
            *(s for spec in self.servers.values() for s in spec.secrets()),
        ]
        return [v for v in values if v and len(v) >= 4]

    @classmethod
    def load(cls, path: Path, required: bool = False) -> Config:
        """Read the config file; a missing file gives an empty config unless ``required``."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            if required:
                raise ConfigError(f"Config file {path} does not exist.") from None
            return cls(path=None)
        except OSError as exc:
            raise ConfigError(f"Config file {path} is unreadable: {exc.strerror}.") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"Config file {path} is not valid TOML: {exc}.") from None
        try:
            return cls.from_dict(data, path)
        except ConfigError as exc:
            raise ConfigError(f"In {path}: {exc.message}", exc.hint) from None

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path | None = None) -> Config:
        unknown = set(data) - _TOP_LEVEL_KEYS
        if unknown:
            raise ConfigError(
                f"The config has unknown keys: {', '.join(sorted(unknown))}.",
                f"Known keys: {', '.join(sorted(_TOP_LEVEL_KEYS))}.",
            )
        tables = data.get("servers", {})
        if not isinstance(tables, dict):
            raise ConfigError("The config's [servers] must be a table of named servers.")
        defaults = data.get("defaults", {})
        if not isinstance(defaults, dict):
            raise ConfigError("The config's [defaults] must be a table.")
        unknown = set(defaults) - _SERVER_KEYS
        if unknown:
            raise ConfigError(
                f"The config's [defaults] has unknown keys: {', '.join(sorted(unknown))}.",
                f"Known keys: {', '.join(sorted(_SERVER_KEYS))}.",
            )
        servers = {name: _server_from_table(name, t, defaults) for name, t in tables.items()}
        default = data.get("default_server")
        if default is not None and not isinstance(default, str):
            raise ConfigError("default_server must be a server name or URL.")
        ledger = data.get("ledger")
        if ledger is not None and (not isinstance(ledger, str) or not ledger):
            raise ConfigError("ledger must be a file path or a postgresql:// URL.")
        if ledger is not None:
            ledger = _expand(ledger, "The config's ledger")
        where = "The config"
        return cls(
            path=path,
            servers=servers,
            default_server=default,
            ledger=ledger,
            webhook=_webhook_url(_expand(data.get("webhook"), where), where),
            webhook_secret=_string(
                _expand(data.get("webhook_secret"), where), where, "webhook_secret"
            ),
        )

    def resolve(self, name_or_url: str) -> ServerSpec:
        """A configured server by name, or by URL (matching a configured one when it can)."""
        if name_or_url in self.servers:
            return self.servers[name_or_url]
        if not _looks_like_url(name_or_url):
            raise UnknownServer(
                f"Unknown server {name_or_url!r}.",
                self._known_hint(),
            )
        try:
            url = canonical_url(name_or_url)
        except ConfigError as exc:
            raise UnknownServer(exc.message, self._known_hint()) from None
        for spec in self.servers.values():
            if spec.url == url:
                return spec
        return ServerSpec(name=server_name_for_url(url), url=url, configured=False)

    def default(self, env_value: str | None = None) -> ServerSpec | None:
        chosen = env_value or self.default_server
        if chosen:
            return self.resolve(chosen)
        if len(self.servers) == 1:
            return next(iter(self.servers.values()))
        return None

    def _known_hint(self) -> str:
        if not self.servers:
            return "No servers are configured; pass a URL such as http://127.0.0.1:8188."
        return f"Configured servers: {', '.join(sorted(self.servers))}; a URL works too."


def _looks_like_url(text: str) -> bool:
    return "://" in text or bool(re.match(r"^[\w.\-\[\]:]+:\d+(/.*)?$", text))


def server_name_for_url(url: str) -> str:
    """The name a bare URL is known by in the ledger: its host[:port][/prefix]."""
    return url.split("://", 1)[1]


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)


def _headers(headers: dict[str, str], where: str) -> dict[str, str]:
    """Headers HTTP can carry; named, never shown, when not (a value may be a secret)."""
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ConfigError(f"{where}: {name!r} is not a header name.")
        if "\r" in value or "\n" in value:
            raise ConfigError(f"{where}: header {name} contains a line break.")
        if value[:1].isspace():
            raise ConfigError(f"{where}: header {name} starts with white space.")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise ConfigError(
                f"{where}: header {name} is not Latin-1 text, which HTTP headers must be."
            ) from None
    return headers
