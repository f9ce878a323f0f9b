"""`splitpoint demo`: serve, run a real workload, cut backups through every trigger source, prove them."""
from __future__ import annotations

import shutil
import sys
import tempfile

import click


@click.command("demo")
@click.option("--triggers", default=6, show_default=True,
              help="TRIGGERs to fire (cycling serial, special LUN, special path).")
@click.option("--interval", default=0.4, show_default=True, help="Seconds of workload between TRIGGERs.")
@click.option("--workdir", default=None, type=click.Path(file_okay=False), help="Keep the images and logs here.")
def command(triggers, interval, workdir):
    """Start `splitpoint serve`, write with qemu-io while TRIGGERs fire, prove every backup.

    Each backup is compared byte for byte (qemu-img compare) with a replay of exactly the writes
    that were sequenced before its TRIGGER. Exits 0 when all match, and leaves no process behind.
    """
    from splitpoint.demo import DemoError, ServerError, run

    if triggers < 1:
        raise click.BadParameter("at least 1", param_hint="--triggers")
    keep = workdir is not None
    where = workdir or tempfile.mkdtemp(prefix="splitpoint-demo-")
    try:
        ok = run(where, triggers=triggers, interval=interval, echo=click.echo)
    except (DemoError, ServerError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if not keep:
            shutil.rmtree(where, ignore_errors=True)
    click.echo("demo: every backup is the exact point-in-time copy" if ok else "demo: FAILED")
    sys.exit(0 if ok else 1)
