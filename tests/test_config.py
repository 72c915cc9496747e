"""Server definitions: the TOML config, canonical URLs, resolution, and keeping secrets secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfyctl.config import Config, ServerSpec, canonical_url
from comfyctl.context import AppContext
from comfyctl.errors import ConfigError, ExitCode, UnknownServer, UsageProblem

PASSWORD = "pw-Xq7-sesame"
TOKEN = "tok-Zr9-secret"
HEADER_VALUE = "Bearer hdr-Kp3-secret"
URL_PASSWORD = "urlpw-Mn4-hidden"

TEAM_CONFIG = """
default_server = "gpu1"

[defaults]
timeout = 20

[servers.gpu1]
url = "https://GPU1.Example.com:443/comfy/"
username = "alice"
password = "${GPU1_PASSWORD}"
token = "${GPU1_TOKEN}"
headers = { "X-Team" = "render", "Authorization-Proxy" = "${GPU1_HEADER}" }
verify = false
connect_timeout = 2

[servers.gpu2]
url = "http://bob:%(url_password)s@10.0.0.2:8188"
verify = "/etc/ssl/team-ca.pem"
timeout = 5
"""


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def team_config(config_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GPU1_PASSWORD", PASSWORD)
    monkeypatch.setenv("GPU1_TOKEN", TOKEN)
    monkeypatch.setenv("GPU1_HEADER", HEADER_VALUE)
    return write_config(config_path, TEAM_CONFIG % {"url_password": URL_PASSWORD})


def one_server(config_path: Path, body: str) -> Config:
    write_config(config_path, "[servers.s]\n" + body)
    return Config.load(config_path)


# -- named servers -------------------------------------------------------------------------


def test_named_servers(team_config: Path) -> None:
    config = Config.load(team_config)
    assert sorted(config.servers) == ["gpu1", "gpu2"]
    assert config.default_server == "gpu1"
    gpu1 = config.servers["gpu1"]
    assert gpu1 == ServerSpec(
        name="gpu1",
        url="https://gpu1.example.com/comfy",
        headers={"X-Team": "render", "Authorization-Proxy": HEADER_VALUE},
        username="alice",
        password=PASSWORD,
        token=TOKEN,
        verify=False,
        timeout=20.0,
        connect_timeout=2.0,
    )
    gpu2 = config.servers["gpu2"]
    assert gpu2.url == "http://10.0.0.2:8188"
    assert gpu2.verify == "/etc/ssl/team-ca.pem"
    assert gpu2.timeout == 5.0
    assert gpu2.connect_timeout == 3.0  # min(timeout, default connect timeout)
    assert gpu2.token is None and gpu2.headers == {}


def test_missing_config_file_is_empty_unless_required(tmp_path: Path) -> None:
    assert Config.load(tmp_path / "absent.toml").servers == {}
    with pytest.raises(ConfigError, match=r"absent\.toml"):
        Config.load(tmp_path / "absent.toml", required=True)


def test_invalid_toml_is_a_config_error(config_path: Path, invoke) -> None:
    write_config(config_path, "[servers.gpu1\nurl = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Config.load(config_path)
    result = invoke("servers")
    assert result.exit_code == 2
    assert str(config_path) in result.stderr


# -- URL canonicalisation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("HTTP://GPU1.Example.COM:80/", "http://gpu1.example.com"),
        ("https://Host.example:443/", "https://host.example"),
        ("http://host:443", "http://host:443"),
        ("https://host:80", "https://host:80"),
        ("http://host:8188/", "http://host:8188"),
        ("http://host:8188//", "http://host:8188"),
        ("host:8188", "http://host:8188"),
        ("  http://host:8188  ", "http://host:8188"),
        ("https://host/Comfy/UI/", "https://host/Comfy/UI"),
        ("http://host:8188/prefix?x=1#frag", "http://host:8188/prefix"),
        ("http://[::1]:8188/", "http://[::1]:8188"),
        ("http://127.0.0.1:8188", "http://127.0.0.1:8188"),
    ],
)
def test_canonical_url(raw: str, canonical: str) -> None:
    assert canonical_url(raw) == canonical
    assert canonical_url(canonical) == canonical  # idempotent


@pytest.mark.parametrize(
    "raw", ["ftp://host", "http://", "http://host:99999", "http://host:port", "http://[::1"]
)
def test_canonical_url_rejects_unusable_urls(raw: str) -> None:
    with pytest.raises(ConfigError):
        canonical_url(raw)


@pytest.mark.parametrize(
    "url", ["ftp://host:21", "http://:8188", "http://host:99999", "http://[::1:8188"]
)
def test_bad_url_in_the_config_is_a_config_error(config_path: Path, invoke, url: str) -> None:
    with pytest.raises(ConfigError):
        one_server(config_path, f'url = "{url}"\n')
    result = invoke("servers")
    assert result.exit_code == 2
    assert "Traceback" not in result.stderr


def test_credentials_in_the_url_become_basic_auth(config_path: Path) -> None:
    spec = one_server(config_path, 'url = "https://al%40ice:s3cr%40t:x@Host:443/comfy/"\n')
    assert spec.servers["s"].url == "https://host/comfy"
    assert spec.servers["s"].username == "al@ice"
    assert spec.servers["s"].password == "s3cr@t:x"  # percent-decoded, as RFC 3986 says
    spec = one_server(config_path, f'url = "http://bob:{URL_PASSWORD}@h:8188"\n').servers["s"]
    assert (spec.username, spec.password) == ("bob", URL_PASSWORD)
    assert URL_PASSWORD not in spec.url and "bob" not in spec.url
    assert URL_PASSWORD not in repr(spec)
    assert URL_PASSWORD not in json.dumps(spec.public())


def test_explicit_username_wins_over_url_credentials(config_path: Path) -> None:
    spec = one_server(
        config_path, 'url = "http://bob:pw1@h:8188"\nusername = "carol"\npassword = "pw2"\n'
    ).servers["s"]
    assert (spec.username, spec.password, spec.url) == ("carol", "pw2", "http://h:8188")


def test_bad_url_error_does_not_echo_url_credentials(config_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        one_server(config_path, f'url = "http://bob:{URL_PASSWORD}@h:notaport"\n')
    assert URL_PASSWORD not in str(info.value)


# -- ${ENV} expansion and unknown keys -----------------------------------------------------


def test_env_expansion(config_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFY_HOST", "render-7.internal")
    monkeypatch.setenv("COMFY_TOKEN", TOKEN)
    spec = one_server(
        config_path,
        'url = "http://${COMFY_HOST}:8188"\n'
        'token = "${COMFY_TOKEN}"\n'
        'headers = { "X-Key" = "k-${COMFY_TOKEN}-x" }\n',
    ).servers["s"]
    assert spec.url == "http://render-7.internal:8188"
    assert spec.token == TOKEN
    assert spec.headers == {"X-Key": f"k-{TOKEN}-x"}


def test_missing_env_variable_is_an_error_only_where_that_server_is_used(
    config_path: Path, invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COMFYCTL_TEST_UNSET_VAR", raising=False)
    spec = one_server(
        config_path, 'url = "http://h:1"\npassword = "${COMFYCTL_TEST_UNSET_VAR}"\n'
    ).servers["s"]
    assert spec.problem is not None and "COMFYCTL_TEST_UNSET_VAR" in str(spec.problem)
    assert spec.problem.exit_code == ExitCode.USAGE
    listed = invoke("servers", "--json")  # the rest of comfyctl keeps working
    assert listed.exit_code == 0 and "COMFYCTL_TEST_UNSET_VAR" in listed.stdout
    workflow = config_path.parent / "wf.json"
    workflow.write_text('{"1": {"class_type": "EmptyImage", "inputs": {}}}')
    result = invoke("submit", str(workflow), "-s", "s")
    assert result.exit_code == 2 and "COMFYCTL_TEST_UNSET_VAR" in result.stderr


@pytest.mark.parametrize(
    "text, culprit",
    [
        ('[servers.s]\nurl = "http://h:1"\ntimout = 3\n', "timout"),
        ('[servers.s]\nurl = "http://h:1"\npasword = "x"\n', "pasword"),
        ('[defaults]\ntimout = 3\n[servers.s]\nurl = "http://h:1"\n', "timout"),
        ('default_sever = "s"\n[servers.s]\nurl = "http://h:1"\n', "default_sever"),
    ],
    ids=["server-timout", "server-pasword", "defaults-timout", "top-level-default_sever"],
)
def test_unknown_keys_are_errors(config_path: Path, invoke, text: str, culprit: str) -> None:
    write_config(config_path, text)
    with pytest.raises(ConfigError) as info:
        Config.load(config_path)
    assert culprit in str(info.value)
    result = invoke("servers")
    assert result.exit_code == 2
    assert culprit in result.stderr


@pytest.mark.parametrize(
    "body, fragment",
    [
        ("url = 8188\n", "url"),
        ("timeout = 5\n", "url"),
        ('url = "http://h:1"\ntimeout = -1\n', "positive"),
        ('url = "http://h:1"\ntimeout = "soon"\n', "numbers"),
        ('url = "http://h:1"\nverify = 3\n', "verify"),
        ('url = "http://h:1"\nheaders = "X-A: b"\n', "headers"),
        ('url = "http://h:1"\nheaders = { "X-Team" = "Ré ☃" }\n', "X-Team.*Latin-1"),
        ('url = "http://h:1"\nheaders = { "X-A" = "b\\r\\nX-Evil: 1" }\n', "X-A.*line break"),
        ('url = "http://h:1"\nheaders = { "X A" = "b" }\n', "'X A' is not a header name"),
        ('url = "http://h:1"\nheaders = { "X-A" = " b" }\n', "X-A starts with white space"),
    ],
    ids=[
        "url-not-a-string",
        "no-url",
        "negative-timeout",
        "timeout-text",
        "verify-number",
        "headers-not-a-table",
        "header-not-latin-1",
        "header-line-break",
        "header-name",
        "header-leading-space",
    ],
)
def test_bad_values_are_config_errors(config_path: Path, body: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        one_server(config_path, body)


# -- resolving names and URLs --------------------------------------------------------------


def test_bare_url_matching_a_configured_server_returns_its_spec(team_config: Path) -> None:
    config = Config.load(team_config)
    for spelling in (
        "https://gpu1.example.com/comfy",
        "HTTPS://GPU1.EXAMPLE.COM:443/comfy/",
        "gpu1",
    ):
        assert config.resolve(spelling) is config.servers["gpu1"]
    assert config.resolve("10.0.0.2:8188") is config.servers["gpu2"]


def test_bare_url_not_configured_is_an_ad_hoc_server(team_config: Path) -> None:
    config = Config.load(team_config)
    spec = config.resolve("HTTP://Other.Host:8188/")
    assert spec.url == "http://other.host:8188"
    assert spec.name == "other.host:8188"
    assert spec.configured is False
    assert (spec.username, spec.password, spec.token, spec.headers) == (None, None, None, {})
    # The same host with another path prefix is another server.
    assert config.resolve("https://gpu1.example.com/other").configured is False


def test_unknown_name_or_bad_url_names_the_configured_servers(team_config: Path) -> None:
    config = Config.load(team_config)
    for bad in ("gpu9", "ftp://gpu1.example.com", "http://host:99999"):
        with pytest.raises(UnknownServer) as info:
            config.resolve(bad)
        assert "gpu1" in str(info.value) and "gpu2" in str(info.value)
        assert info.value.exit_code == 2


@pytest.mark.parametrize("server", ["gpu9", "ftp://somewhere", "http://h:70000"])
def test_cli_unknown_server_exits_2_naming_configured_servers(
    team_config: Path, invoke, tmp_path: Path, server: str
) -> None:
    result = invoke("history", "--server", server)
    assert result.exit_code == 2, result.output
    assert "Configured servers: gpu1, gpu2" in result.stderr
    workflow = tmp_path / "wf.json"
    workflow.write_text('{"1": {"class_type": "SaveImage", "inputs": {}}}')
    result = invoke("submit", str(workflow), "--server", server)
    assert result.exit_code == 2, result.output
    assert "gpu1, gpu2" in result.stderr
    assert not (tmp_path / "ledger.json").exists()


def test_no_servers_configured_hint(config_path: Path) -> None:
    write_config(config_path, "")
    with pytest.raises(UnknownServer) as info:
        Config.load(config_path).resolve("gpu1")
    assert "No servers are configured" in str(info.value)


# -- the default server --------------------------------------------------------------------


def test_default_server_from_config_and_environment(team_config: Path) -> None:
    config = Config.load(team_config)
    assert config.default() is config.servers["gpu1"]
    assert config.default("gpu2") is config.servers["gpu2"]  # COMFYCTL_SERVER wins
    assert config.default("http://10.0.0.2:8188/") is config.servers["gpu2"]
    assert config.default("other:8188").url == "http://other:8188"
    with pytest.raises(UnknownServer):
        config.default("gpu9")


def test_default_server_when_not_set(config_path: Path) -> None:
    write_config(config_path, '[servers.only]\nurl = "http://only:8188"\n')
    assert Config.load(config_path).default().name == "only"  # the single server
    write_config(config_path, '[servers.a]\nurl = "http://a:1"\n[servers.b]\nurl = "http://b:1"\n')
    assert Config.load(config_path).default() is None


def test_context_picks_default_from_config_then_environment(
    team_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = AppContext(config_path=team_config, config_required=True)
    assert [s.name for s in app.servers(())] == ["gpu1"]
    monkeypatch.setenv("COMFYCTL_SERVER", "gpu2")
    assert [s.name for s in AppContext(config_path=team_config).servers(())] == ["gpu2"]
    # Explicit servers win over both, and one server named twice is one server.
    assert [s.name for s in app.servers(("gpu2", "https://gpu1.example.com/comfy", "gpu1"))] == [
        "gpu2",
        "gpu1",
    ]


def test_cli_unknown_comfyctl_server_exits_2(
    team_config: Path, invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workflow = tmp_path / "wf.json"
    workflow.write_text('{"1": {"class_type": "SaveImage", "inputs": {}}}')
    monkeypatch.setenv("COMFYCTL_SERVER", "gpu9")
    result = invoke("submit", str(workflow))
    assert result.exit_code == 2, result.output
    assert "gpu9" in result.stderr and "gpu1, gpu2" in result.stderr
    assert not (tmp_path / "ledger.json").exists()


def test_context_without_any_default_is_a_usage_problem(config_path: Path) -> None:
    write_config(config_path, '[servers.a]\nurl = "http://a:1"\n[servers.b]\nurl = "http://b:1"\n')
    with pytest.raises(UsageProblem, match="No server given"):
        AppContext(config_path=config_path).servers(())


# -- never printing secrets ----------------------------------------------------------------

SECRETS = (PASSWORD, TOKEN, HEADER_VALUE, "hdr-Kp3-secret", URL_PASSWORD)


def assert_no_secrets(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"secret {secret!r} printed"


@pytest.mark.parametrize("args", [("servers",), ("servers", "--json")])
def test_servers_never_prints_secrets(team_config: Path, invoke, args: tuple[str, ...]) -> None:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert_no_secrets(result.stdout + result.stderr)
    assert "gpu1" in result.stdout and "https://gpu1.example.com/comfy" in result.stdout


def test_servers_json_describes_auth_without_values(team_config: Path, invoke) -> None:
    doc = json.loads(invoke("servers", "--json").stdout)
    assert doc["schema"] == "comfyctl.servers"
    assert doc["default_server"] == "gpu1"
    servers = {s["name"]: s for s in doc["servers"]}
    assert servers["gpu1"]["token"] == "set"
    assert servers["gpu1"]["basic_auth"] is True
    assert servers["gpu1"]["headers"] == ["Authorization-Proxy", "X-Team"]
    assert servers["gpu2"]["basic_auth"] is True  # from the URL's credentials
    assert servers["gpu2"]["url"] == "http://10.0.0.2:8188"
    assert servers["gpu2"]["token"] is None


@pytest.mark.parametrize("args", [("-vv", "servers"), ("-vv", "servers", "--json")])
def test_servers_verbose_subprocess_never_prints_secrets(
    team_config: Path, run_comfyctl, args: tuple[str, ...]
) -> None:
    proc = run_comfyctl(*args)
    assert proc.returncode == 0, proc.stderr
    assert "gpu1" in proc.stdout
    assert_no_secrets(proc.stdout + proc.stderr)


def test_the_config_names_the_ledger_and_the_command_line_wins(
    invoke, config_path, tmp_path, monkeypatch
) -> None:
    monkeypatch.delenv("COMFYCTL_LEDGER")
    monkeypatch.setenv("TEAM_DIR", str(tmp_path / "team"))
    config_path.write_text('ledger = "${TEAM_DIR}/ledger.json"\n')
    shown = invoke("servers", "--json")
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["ledger"] == str(tmp_path / "team" / "ledger.json")
    other = tmp_path / "other.json"
    assert json.loads(invoke("--ledger", str(other), "servers", "--json").stdout)["ledger"] == str(
        other
    )
    monkeypatch.setenv("COMFYCTL_LEDGER", str(other))
    assert json.loads(invoke("servers", "--json").stdout)["ledger"] == str(other)


@pytest.mark.parametrize("value", ["5", '""', "[1]"])
def test_a_ledger_that_is_not_a_path_or_url_is_a_config_error(
    invoke, config_path, value, monkeypatch
) -> None:
    monkeypatch.delenv("COMFYCTL_LEDGER")
    config_path.write_text(f"ledger = {value}\n")
    result = invoke("history")
    assert result.exit_code == 2
    assert "ledger must be a file path or a postgresql:// URL" in result.stderr


MISSING_CONFIG_COMMANDS = [
    ("history",),
    ("watch",),
    ("detect-stuck",),
    ("cancel", "--all-pending"),
    ("recover", "--dry-run"),
    ("metrics",),
    ("debug-tasks",),
    ("servers",),
]


@pytest.mark.parametrize("how", ["--config", "COMFYCTL_CONFIG"])
@pytest.mark.parametrize("args", MISSING_CONFIG_COMMANDS, ids=" ".join)
def test_a_missing_config_is_an_error_even_when_the_ledger_is_given(
    invoke, tmp_path, monkeypatch, how: str, args: tuple[str, ...]
) -> None:
    """COMFYCTL_LEDGER (or --ledger) names the ledger, so the config is not needed for it:
    a config named by --config or COMFYCTL_CONFIG must exist all the same."""
    typo = tmp_path / "typo.toml"
    if how == "--config":
        result = invoke("--config", str(typo), *args)
    else:
        monkeypatch.setenv("COMFYCTL_CONFIG", str(typo))
        result = invoke("--ledger", str(tmp_path / "l.json"), *args)
    assert result.exit_code == ExitCode.USAGE, (result.stdout, result.stderr)
    assert f"Config file {typo} does not exist." in result.stderr


def test_a_missing_config_with_a_ledger_exits_2_in_a_real_process(run_comfyctl, tmp_path) -> None:
    typo = tmp_path / "typo.toml"
    proc = run_comfyctl("--ledger", str(tmp_path / "l.json"), "--config", str(typo), "history")
    assert proc.returncode == 2, proc.stderr
    assert f"Config file {typo} does not exist." in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize(
    "url",
    [
        "http://h:8188?token=s3cr3t-value",
        "http://h:8188/comfy/?token=s3cr3t-value",
        "https://h/?api_key=s3cr3t-value&x=1",
    ],
)
def test_a_query_in_a_configured_url_is_a_config_error_naming_the_token_key(
    config_path: Path, invoke, url: str
) -> None:
    """comfyctl sends no query of the configured url (its canonical form has none): a
    token written there would be silently dropped, so it is refused, never echoed."""
    with pytest.raises(ConfigError) as info:
        one_server(config_path, f'url = "{url}"\n')
    assert "token" in str(info.value) and "s3cr3t-value" not in str(info.value)
    result = invoke("servers")
    assert result.exit_code == ExitCode.USAGE, (result.stdout, result.stderr)
    assert "query" in result.stderr and "token =" in result.stderr
    assert "s3cr3t-value" not in result.stdout + result.stderr


def test_the_token_key_is_the_way_and_a_url_fragment_is_harmless(config_path: Path) -> None:
    spec = one_server(config_path, 'url = "http://h:8188/#x"\ntoken = "t0ken"\n').servers["s"]
    assert spec.url == "http://h:8188" and spec.token == "t0ken"
