"""`splitpoint trigger`: send a TRIGGER on the serial control channel and wait for the split."""
from __future__ import annotations

import click

CONTROL_HELP = ("Control channel of the running server: the pty path `serve` printed, the link given to "
                "`serve --control-link`, or any pyserial URL. Default: $SPLITPOINT_CONTROL.")


@click.command("trigger")
@click.option("--control", "url", envvar="SPLITPOINT_CONTROL", required=True, metavar="URL", help=CONTROL_HELP)
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the split.")
@click.argument("label", required=False)
def command(url, timeout, label):
    """Cut a point-in-time backup now: TRIGGER [LABEL] on the control channel.

    Prints the server's answer, `OK <id> seq=<n>`, once the mirror has split; the backup is
    then exported read-only as lun0.t<id> (and lun0.latest).
    """
    from splitpoint.firmware.frontend.control import ControlError, exchange
    from splitpoint.firmware.triggers import label_error

    if label is not None:
        if "\n" in label or "\r" in label:
            raise click.BadParameter("a label is one line", param_hint="LABEL")
        reason = label_error(label)
        if reason:
            raise click.BadParameter(reason, param_hint="LABEL")
    try:
        answer = exchange(url, f"TRIGGER {label}" if label else "TRIGGER", timeout)
    except ControlError as exc:
        raise click.ClickException(str(exc)) from None
    if not answer.startswith("OK "):
        raise click.ClickException(f"the server refused: {answer}")
    click.echo(answer)
