"""`splitpoint restore`: make a LUN the bytes of one of its backups, in sequence with its writes.

Sends one `RESTORE <backup> [ON <lun>]` line on the control channel and prints the server's
`OK restore <lun> seq=<n>`; it never reaches into the server otherwise.
"""
from __future__ import annotations

import click

from splitpoint.commands.trigger import CONTROL_HELP, ask


@click.command("restore")
@click.option("--control", "url", envvar="SPLITPOINT_CONTROL", required=True, metavar="URL", help=CONTROL_HELP)
@click.option("--on", "lun", metavar="LUN", help="The LUN to write (default: the backup's own LUN).")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for the restore.")
@click.argument("backup")
def command(url, lun, timeout, backup):
    """Restore BACKUP (lun0.t3, lun0.latest) onto its LUN, or onto --on LUN (a writable clone).

    The RESTORE is queued like a TRIGGER: writes queued before it are undone, writes after it
    apply on top. From its own LUN only the chunks changed since the cut are copied; into
    another LUN of the same size, every chunk. The LUN's later requests wait until it is done.
    """
    for what, value in (("BACKUP", backup), ("--on", lun)):
        if value is not None and (not value or len(value.split()) != 1):
            raise click.BadParameter(f"a name is one word, got {value!r}", param_hint=what)
    click.echo(ask(url, f"RESTORE {backup}" + (f" ON {lun}" if lun else ""), timeout))
