"""`splitpoint flash`: write the bridge firmware onto a real board with its definition's recipe.

The recipe is the ``[flash]`` table of ``boards/<BOARD_ID>/board.toml``; the
commands come from ``splitpoint.boards.flash.plan``. This module only builds
the default firmware (through the port's Makefile), prints and runs those
commands; it never talks to the board itself.
"""
import os
import shlex
import shutil
import subprocess

import click


def _default_firmware(board_id: str):
    """(the build command, the ELF it makes) for a board a port of boards/firmware/ports/ builds, else None."""
    from splitpoint.boards.firmware.qemu import PORT_FOR_BOARD, PORTS

    port = PORT_FOR_BOARD.get(board_id)
    if port is None:
        return None
    folder = os.path.join(PORTS, port)
    return ["make", "-s", "-C", folder, f"BOARD_ID={board_id}"], os.path.join(folder, "build", board_id,
                                                                             "firmware.elf")


@click.command("flash")
@click.argument("board_id")
@click.option("--firmware", "firmware", metavar="ELF|BIN|HEX|UF2", type=click.Path(dir_okay=False),
              help="The image to write (default: the board's port, built first; boards without a port need it).")
@click.option("--port", metavar="WHERE",
              help="Which board: dfu-util's USB path (-p), the probe serial for openocd/pyocd, or the "
                   "UF2 drive's mount point.")
@click.option("--dry-run", is_flag=True, help="Print the commands, one a line, and run nothing.")
def command(board_id, firmware, port, dry_run):
    """Flash the splitpoint bridge firmware onto BOARD_ID with the recipe of its board.toml.

    dfu-util, OpenOCD, pyOCD, a UF2 copy or teensy_loader_cli, as the board's
    [flash] table says; an ELF is converted (objcopy, UF2 packing) to what the
    tool takes. Put the board in its bootloader first (docs/firmware.md).
    """
    from splitpoint.boards.flash import FlashError, missing_tools, plan
    from splitpoint.boards.schema import BoardDefinitionError, load_board

    try:
        board = load_board(board_id)
        steps = []
        if board.flash is not None and board.flash.tool != "none" and firmware is None:
            default = _default_firmware(board_id)
            if default is None:
                raise FlashError(f"no port of the firmware builds {board_id} yet: give --firmware FILE")
            steps.append(default[0])
            firmware = default[1]
        steps += plan(board_id, board.flash, firmware or "firmware.elf", port, board.emulated)
    except (BoardDefinitionError, FlashError) as exc:
        raise click.ClickException(str(exc)) from None
    if dry_run:
        for argv in steps:
            click.echo(shlex.join(argv))
        return
    missing = missing_tools(steps, shutil.which)
    if missing:
        raise click.ClickException(f"missing {', '.join(missing)}: apt-get install "
                                   f"{' '.join(m.split('package ')[1].rstrip(')') for m in missing)}")
    if steps[0][0] != "make" and not os.path.isfile(firmware):
        raise click.ClickException(f"{firmware}: no such firmware file")
    for argv in steps:
        click.echo(shlex.join(argv))
        rc = subprocess.run(argv).returncode
        if rc:
            raise click.ClickException(f"{argv[0]} exited with {rc}; nothing after it ran")
