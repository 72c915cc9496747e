from __future__ import annotations

import json

import click

from comfyctl.context import AppContext, default_config_path
from comfyctl.options import output_format
from comfyctl.render import SERVER_SCHEMA, SERVERS_SCHEMA, table


@click.command("servers", short_help="List configured servers and comfyctl's files.")
@output_format("json", "nl")
@click.pass_obj
def command(app: AppContext, fmt: str) -> None:
    """List the configured servers and where comfyctl keeps its files.

    Secrets are never shown: headers are listed by name, and basic auth and tokens
    only as set or not. No server is contacted.

    \b
    Examples:
      comfyctl servers
      comfyctl --config team.toml servers --json | jq -r '.servers[].name'
    """
    config = app.config
    default = config.default_server
    paths = {
        "config": str(app.config_path or default_config_path()),
        "ledger": app.ledger.describe(),
        "default_server": default,
    }
    servers = [spec.public() for spec in config.servers.values()]
    if fmt == "nl":
        for server in servers:
            click.echo(json.dumps({**SERVER_SCHEMA, **server}))
        return
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    **SERVERS_SCHEMA,
                    **paths,
                    "webhook": "set" if config.webhook else None,
                    "servers": servers,
                },
                indent=2,
            )
        )
        return
    for key, value in paths.items():
        click.echo(f"comfyctl: {key}: {value or '-'}", err=True)
    if not servers:
        click.echo(
            f'comfyctl: no servers configured; add [servers.NAME] url = "http://..." to '
            f"{app.config_path or default_config_path()}.",
            err=True,
        )
        return
    rows = [
        [
            s["name"] + (" *" if s["name"] == default else ""),
            s["url"],
            "yes" if s["basic_auth"] else "-",
            s["token"] or "-",
            ",".join(s["headers"]) or "-",
            str(s["verify"]),
            f"{s['timeout']:g}s",
        ]
        for s in servers
    ]
    click.echo(table(("name", "url", "basic auth", "token", "headers", "verify", "timeout"), rows))
