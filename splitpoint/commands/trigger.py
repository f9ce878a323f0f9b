"""`splitpoint trigger`: send a TRIGGER on the serial control channel and wait for the split."""
from __future__ import annotations

import click

def ask(url: str, line: str, timeout: float, accepted=lambda answer: answer.startswith("OK ")) -> str:
    """Send one control line and return the server's answer; a channel that fails, or an answer
    ``accepted`` refuses (an ``ERR``), is a one-line error and a non-zero exit."""
    from splitpoint.firmware.frontend.control import ControlError, exchange

    try:
        answer = exchange(url, line, timeout)
    except ControlError as exc:
        raise click.ClickException(str(exc)) from None
    if not accepted(answer):
        raise click.ClickException(f"the server refused: {answer}")
    return answer


CONTROL_HELP = ("Control channel of the running server: the pty path `serve` printed, the link given to "
                "`serve --control-link`, or any pyserial URL. Default: $SPLITPOINT_CONTROL.")


@click.command("trigger")
@click.option("--control", "url", envvar="SPLITPOINT_CONTROL", required=True, metavar="URL", help=CONTROL_HELP)
@click.option("--on", "target", metavar="NAME", help="The LUN or group to cut (default: the first LUN).")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the split.")
@click.argument("label", required=False)
def command(url, target, timeout, label):
    """Cut a point-in-time backup now: TRIGGER [ON NAME] [LABEL] on the control channel.

    Prints the server's answer, `OK <id> seq=<n>`, once the mirror has split; the backup is
    then exported read-only as <lun>.t<id> (and <lun>.latest).
    """
    from splitpoint.firmware.triggers import ControlSyntaxError, trigger_line

    try:
        line = trigger_line(target, label)
    except ControlSyntaxError as exc:
        raise click.BadParameter(str(exc), param_hint="LABEL" if "label" in str(exc) else "--on") from None
    click.echo(ask(url, line, timeout))
