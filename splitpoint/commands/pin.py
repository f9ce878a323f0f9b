"""`splitpoint pin` and `splitpoint unpin`: keep a backup out of rotation, or release it.

A backup is named as the exports name it: `<lun>.t<id>` (the cut of that LUN's TRIGGER
number <id>) or `<lun>.latest` (the newest consistent backup when the server handles the
line). Each command sends one `PIN <backup>` or `UNPIN <backup>` line on the control
channel and prints the server's `OK`; it never reaches into the server otherwise.
"""
from __future__ import annotations

import click

from splitpoint.commands.trigger import CONTROL_HELP, ask


def _send(url: str, verb: str, backup: str, timeout: float) -> None:
    if not backup or len(backup.split()) != 1:
        raise click.BadParameter(f"a backup name is one word like lun0.t3, got {backup!r}", param_hint="BACKUP")
    answer = ask(url, f"{verb} {backup}", timeout, accepted=lambda a: a == "OK")
    click.echo(f"{answer}: {backup} {'pinned' if verb == 'PIN' else 'unpinned'}")


@click.command("pin")
@click.option("--control", "url", envvar="SPLITPOINT_CONTROL", required=True, metavar="URL", help=CONTROL_HELP)
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the answer.")
@click.argument("backup")
def command(url, timeout, backup):
    """Pin BACKUP (lun0.t3, lun0.latest): rotation never recycles it until it is unpinned.

    A TRIGGER that finds no member to rotate to, because the pool's other members are pinned,
    is refused with ERR and cuts nothing. Pins are kept with the metadata across restarts.
    """
    _send(url, "PIN", backup, timeout)


@click.command("unpin")
@click.option("--control", "url", envvar="SPLITPOINT_CONTROL", required=True, metavar="URL", help=CONTROL_HELP)
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the answer.")
@click.argument("backup")
def unpin_command(url, timeout, backup):
    """Unpin BACKUP (lun0.t3, lun0.latest): rotation may recycle it again."""
    _send(url, "UNPIN", backup, timeout)
