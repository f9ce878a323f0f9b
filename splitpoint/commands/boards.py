"""`splitpoint boards`: list board definitions and the boards attached by USB VID/PID."""
import json

import click


@click.command("boards")
@click.argument("board_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--no-detect", is_flag=True, help="Do not look for attached boards.")
def command(board_id, as_json, no_detect):
    """List board definitions (boards/<BOARD_ID>/board.toml) and detect attached ones.

    Attached boards are found with pyserial's list_ports by the USB VID/PID their
    firmware presents. Open one as storage with board://BOARD_ID?port=DEVICE, or
    run an emulated one with `splitpoint emulate BOARD_ID --link PATH`.
    With BOARD_ID, show that definition in full.
    """
    from dataclasses import asdict

    from splitpoint.boards.schema import BoardDefinitionError, all_boards, detect, load_board

    try:
        boards = [load_board(board_id)] if board_id else all_boards()
    except BoardDefinitionError as exc:
        raise click.ClickException(str(exc)) from None
    attached = [] if no_detect else detect(boards=boards)
    if as_json:
        click.echo(json.dumps({
            "boards": [{k: v for k, v in asdict(b).items() if k != "path"} for b in boards],
            "attached": [{"board": a.board.id, "device": a.device, "role": a.role, "serial_number": a.serial_number,
                          "description": a.description} for a in attached],
        }, indent=1))
        return
    if board_id:
        b = boards[0]
        for key, value in asdict(b).items():
            if key == "path":
                continue
            if key in ("vid", "pid") and value is not None:
                value = f"{value:#06x}"
            elif key == "features":
                value = ", ".join(value)
            elif key == "capacity" and value is None:
                value = "reported by the board"
            elif key == "flash":
                value = "no recipe" if value is None else " ".join(
                    f"{k}={v:#x}" if isinstance(v, int) and k != "alt" else f"{k}={v}"
                    for k, v in value.items() if v is not None)
            click.echo(f"{key:18s} {value}")
    else:
        click.echo(f"{'BOARD':20s} {'KIND':9s} {'BRIDGE':10s} {'LINK':11s} {'RATE B/s':>9s} {'USB ID':10s} STORAGE")
        for b in boards:
            click.echo(f"{b.id:20s} {b.kind:9s} {b.bridge:10s} {b.link_kind:11s} {b.link_rate:>9d} "
                       f"{b.usb_id or '-':10s} {b.storage}")
    if no_detect:
        return
    click.echo("")
    if not attached:
        click.echo("attached: none detected (no serial port with a known VID:PID)")
    for a in attached:
        serial = f" serial {a.serial_number}" if a.serial_number else ""
        click.echo(f"attached: {a.board.id} on {a.device} ({a.role} channel){serial}: {a.description}")
