from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click

from comfyctl.commands.follow import FollowOptions, follow
from comfyctl.context import AppContext
from comfyctl.errors import UsageProblem
from comfyctl.options import output_format

DEMO_WORKFLOW: dict[str, dict[str, Any]] = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 3355443},
    },
    "2": {
        "class_type": "SlowProgress",
        "inputs": {"image": ["1", 0], "steps": 20, "seconds_per_step": 0.1, "seed": 0},
    },
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "demo"}},
}


@click.command("demo")
@click.option(
    "--jobs",
    type=click.IntRange(1, 50),
    default=6,
    show_default=True,
    metavar="N",
    help="How many jobs to spread over the two emulated servers.",
)
@click.option(
    "--steps",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    metavar="N",
    help="Sampling steps per job (0.1 s each on the emulator).",
)
@output_format("json", "nl")
@click.pass_obj
def command(app: AppContext, jobs: int, steps: int, fmt: str) -> None:
    """Try comfyctl on two emulated ComfyUI servers, no GPU needed.

    Starts two copies of the bundled ComfyUI emulator on free loopback ports, submits
    a few jobs spread over both (each bound to the server that runs it), follows them
    with live progress, then prints the resulting history (as 'history' does, also
    with --json or --nl). Uses a temporary ledger unless --ledger is given.

    \b
    Examples:
      comfyctl demo
      comfyctl --ledger demo.json demo --jobs 10 && comfyctl --ledger demo.json history
    """
    try:
        from comfyctl.emulator import Emulator
    except ImportError:
        raise UsageProblem(
            "The demo needs the emulator extra.",
            "Install it with: pip install 'comfyctl[emulator]'.",
        ) from None
    from comfyctl.commands.history import print_records
    from comfyctl.config import ServerSpec
    from comfyctl.submission import Submitter

    given = click.get_current_context().find_root().get_parameter_source("ledger_path")
    # A straggling write (an emulator's output, a lease renewal) must not fail the demo at
    # its very end: the directory is removed as far as it can be.
    with tempfile.TemporaryDirectory(prefix="comfyctl-demo-", ignore_cleanup_errors=True) as tmp:
        # Only an explicit --ledger is used: a COMFYCTL_LEDGER set for real work is not.
        if given != click.core.ParameterSource.COMMANDLINE:
            app.use_ledger(Path(tmp) / "ledger.json")
        emulators = [Emulator(output_dir=str(Path(tmp) / f"out{i}")).start() for i in (1, 2)]
        try:
            specs = [
                ServerSpec(name=f"emulator-{i}", url=emu.url, configured=False)
                for i, emu in enumerate(emulators, 1)
            ]
            for spec in specs:
                click.echo(f"comfyctl: started {spec.name} at {spec.url}", err=True)
            submitter = Submitter(app.ledger, app.client)
            graph = {
                **DEMO_WORKFLOW,
                "2": {
                    **DEMO_WORKFLOW["2"],
                    "inputs": {**DEMO_WORKFLOW["2"]["inputs"], "steps": steps},
                },
            }
            records = []
            for n in range(jobs):
                spec = specs[n % 2]
                job = {**graph, "2": {**graph["2"], "inputs": {**graph["2"]["inputs"], "seed": n}}}
                records.append(submitter.submit(job, spec, {"demo": str(n)}).record)
                click.echo(
                    f"comfyctl: submitted {records[-1]['prompt_id']} to {spec.name}", err=True
                )
            follow(
                app,
                records,
                FollowOptions(
                    timeout=300,
                    stall_timeout=None,
                    fail_on_stall=False,
                    poll_interval=1.0,
                    download_dir=None,
                    overwrite=False,
                    no_websocket=False,
                    fmt="text" if fmt == "table" else "stderr",
                ),
            )
            ids = {r["prompt_id"] for r in records}
            final = [r for r in app.ledger.load().values() if r["prompt_id"] in ids]
            click.echo("", err=True)
            print_records(
                app, sorted(final, key=lambda r: r["submitted_at"], reverse=True), fmt, single=False
            )
        finally:
            for emu in emulators:
                emu.stop()
