"""completion: print the shell completion script Click generates for comfyctl."""

from __future__ import annotations

import click

PROG_NAME = "comfyctl"
COMPLETE_VAR = "_COMFYCTL_COMPLETE"
SHELLS = ("bash", "zsh", "fish")


def completion_source(cli: click.Command, shell: str, check: bool = False) -> str:
    """The script for ``shell``, exactly as committed under completions/.

    The script is Click's own: each TAB runs ``comfyctl`` with ``_COMFYCTL_COMPLETE`` set,
    and Click answers from the live command tree (and the completion callbacks).
    ``check`` lets Click warn on stderr when the local bash is too old for it.
    """
    from click.shell_completion import ShellComplete, get_completion_class

    cls = get_completion_class(shell)
    if cls is None:
        raise ValueError(f"no completion support for {shell!r}")
    complete = cls(cli, {}, PROG_NAME, COMPLETE_VAR)
    return complete.source() if check else ShellComplete.source(complete)


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def command(ctx: click.Context, shell: str) -> None:
    """Print the shell completion script for bash, zsh or fish.

    Completes commands and options, prompt ids from the ledger (newest first) and
    server names from the config. The same scripts are installed under
    share/bash-completion, share/zsh/site-functions and share/fish; use this
    command when those directories are not on your shell's search path.

    \b
    Examples:
      eval "$(comfyctl completion bash)"              # in ~/.bashrc
      comfyctl completion zsh > ~/.zfunc/_comfyctl    # fpath+=(~/.zfunc) before compinit
      comfyctl completion fish > ~/.config/fish/completions/comfyctl.fish
    """
    click.echo(completion_source(ctx.find_root().command, shell, check=True), nl=False)
