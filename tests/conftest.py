"""Shared fixtures: all state in a temp dir, the bundled emulator, CLI runners."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest_plugins = ["comfyctl.emulator.pytest_plugin"]

REPO = Path(__file__).resolve().parents[1]
FAULT_COUNTS = pytest.StashKey[dict]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[FAULT_COUNTS] = {}
    # A shell without job control starts `pytest ... &` (a second suite, a busy loop
    # beside it) with SIGINT ignored, and an ignored signal stays ignored through fork
    # and exec: every comfyctl the tests start would then ignore the Ctrl-C the tests
    # send, and wait for its jobs instead. A caught one is reset to the default on exec.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionfinish(session: pytest.Session) -> None:
    worker_output = getattr(session.config, "workeroutput", None)
    if worker_output is not None:  # a pytest-xdist worker: its counts go to the controller
        worker_output["fault_counts"] = dict(session.config.stash[FAULT_COUNTS])


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """pytest-xdist's controller: add up the counts of a worker that finished."""
    counts = node.config.stash[FAULT_COUNTS]
    for name, count in getattr(node, "workeroutput", {}).get("fault_counts", {}).items():
        counts[name] = counts.get(name, 0) + count


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """The fault suite's counts (trials, faults, inputs), printed at the end of every run."""
    counts = config.stash.get(FAULT_COUNTS, {})
    if counts:
        terminalreporter.write_sep("-", "fault-injection counts")
        for name, count in sorted(counts.items()):
            terminalreporter.write_line(f"{name}: {count}")
        terminalreporter.write_line(f"total: {sum(counts.values())}")


@pytest.fixture
def fault_counts(request: pytest.FixtureRequest) -> dict:
    return request.config.stash[FAULT_COUNTS]


@pytest.fixture(autouse=True)
def isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point config and ledger at a temp dir so no test touches the user's real files."""
    (tmp_path / "config.toml").touch()  # a config named by COMFYCTL_CONFIG must exist
    monkeypatch.setenv("COMFYCTL_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("COMFYCTL_LEDGER", str(tmp_path / "ledger.json"))
    monkeypatch.setenv("COMFYCTL_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("COMFYCTL_SERVER", "COMFYCTL_TRACEBACK", "NO_COLOR", "COMFYCTL_LOCK_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for the whole run (see tests/pgserver.py)."""
    from tests import pgserver

    if not pgserver.available():
        pytest.skip("no PostgreSQL server binaries; set COMFYCTL_TEST_POSTGRES or PG_BINDIR")
    with pgserver.ThrowawayPostgres() as server:
        yield server


@pytest.fixture
def postgres_ledger(postgres_server) -> str:
    """The postgresql:// URL (password included) of a fresh, empty database."""
    return postgres_server.database()


@pytest.fixture
def ledger_path(isolated_state: Path) -> Path:
    return isolated_state / "ledger.json"


@pytest.fixture
def config_path(isolated_state: Path) -> Path:
    return isolated_state / "config.toml"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def invoke(runner: CliRunner):
    """Run the CLI in-process; stdout and stderr come back separately."""
    from comfyctl.cli import cli

    def run(*args: str, input: str | None = None):
        return runner.invoke(cli, list(args), input=input, catch_exceptions=False)

    return run


@pytest.fixture
def run_comfyctl():
    """Run comfyctl as a real subprocess (same environment, real sockets)."""

    def run(
        *args: str, input: str | None = None, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "comfyctl", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            cwd=REPO,
        )

    return run
