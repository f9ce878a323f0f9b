"""`splitpoint emulate`: run an emulated bridge board on a pty until SIGINT/SIGTERM."""
import signal
import threading

import click


@click.command("emulate")
@click.argument("board_id")
@click.option("--link", "link", required=True, metavar="PATH",
              help="Where to link the board's data pty (open it with board://BOARD_ID?port=PATH).")
@click.option("--control-link", metavar="PATH", help="Where to link the control-channel pty (TRIGGER/STATUS/PING).")
@click.option("--storage", metavar="URL", help="The board's medium as a HAL URL (default: RAM of the board's capacity).")
@click.option("--faults", metavar="SPEC", help="Link faults, e.g. drop=1%,corrupt=1%,delay=5ms (see hal/filters).")
@click.option("--rate", type=int, metavar="BYTES_PER_S",
              help="Override the link rate of the board definition (0 = unlimited).")
@click.option("--seed", type=int, help="Seed for the fault filters (repeatable runs).")
@click.option("--qemu", is_flag=True,
              help="Run the C firmware under qemu-system-arm instead (data UART at PATH, control UART at "
                   "PATH.control; --storage is then a raw SD card image; see docs/firmware.md).")
@click.option("--cffi", is_flag=True,
              help="Run the C firmware's host build instead (data at PATH, control at PATH.control or "
                   "--control-link; RAM of the board's capacity for the primary and each of 3 backup regions).")
def command(board_id, link, control_link, storage, faults, rate, seed, qemu, cffi):
    """Serve the wire protocol as emulated board BOARD_ID on a pseudo-terminal.

    The link rate of the board definition is modelled in software (a pty ignores
    baud), so a 3 Mbaud UART board carries about 300 KB/s. A TRIGGER on the control
    channel is recorded at the board's current point in the request stream and
    answered `OK <id> seq=<n>`; TRIGGERs on the data link are printed as they run.
    """
    if qemu and cffi:
        raise click.ClickException("--qemu and --cffi each run the C firmware: choose one")
    if qemu:
        return _run_qemu(board_id, link, control_link, storage, faults, rate)
    if cffi:
        return _run_cffi(board_id, link, control_link, storage, faults, rate)
    from splitpoint.boards.schema import BoardDefinitionError, load_board
    from splitpoint.boards.emulator import Emulator, open_storage
    from splitpoint.hal import HalError
    from splitpoint.hal.filters import FaultSpecError, frame_chain

    if rate is not None and rate < 0:
        raise click.ClickException(f"--rate {rate} is negative: give the link rate in bytes per second "
                                   f"(0 = unlimited)")
    try:
        board = load_board(board_id)
        frame_chain(faults, "rx")   # the link filters themselves: a device-only filter is refused here
        device = open_storage(storage, board)
    except (BoardDefinitionError, FaultSpecError, HalError) as exc:
        raise click.ClickException(str(exc)) from None

    lock = threading.Lock()
    recorded = []

    def on_control_trigger(label):
        with lock:
            recorded.append(label)
            at = (emu.engine.expected - 1) & 0xFFFFFFFF
            click.echo(f"control TRIGGER {len(recorded)} {label!r} at seq {at}")
            return len(recorded), at

    def on_wire_trigger(trigger_id, label, seq):
        click.echo(f"wire TRIGGER {trigger_id} {label!r} at seq {seq}")

    emu = Emulator(board, link, device, control_link=control_link, faults=faults, rate=rate, seed=seed,
                   trigger_listener=on_control_trigger, on_trigger=on_wire_trigger)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        emu.start()
    except OSError as exc:
        device.close()
        raise click.ClickException(f"cannot create the pty link at {link!r}: {exc.strerror}") from None
    click.echo(f"board {board.id} ({board.product}) on {emu.link_path} -> {emu.tty_name}, "
               f"{emu.rate or 'unlimited'} bytes/s, {device.describe()}")
    if control_link:
        click.echo(f"control channel on {emu.control_path}")
    try:
        while not stop.wait(0.2):
            pass
    finally:
        emu.stop()
        device.close()
    click.echo(f"stopped: {dict(emu.stats)}")


def _run_qemu(board_id, link, control_link, storage, faults, rate):
    """`emulate --qemu`: the firmware port for BOARD_ID (qemu.port_for) in QEMU until SIGINT/SIGTERM."""
    from splitpoint.boards.firmware.qemu import MACHINES, QemuBoard, QemuError, build, port_for
    from splitpoint.boards.schema import BoardDefinitionError, load_board

    for name, value in (("--faults", faults), ("--rate", rate)):
        if value is not None:
            raise click.ClickException(f"{name} is not supported with --qemu: QEMU's UARTs run unthrottled")
    try:
        load_board(board_id)
        # --storage with --qemu: a raw SD card image (the board's SD-over-SPI medium); without it, SRAM
        port = port_for(board_id)
        board = QemuBoard(build(board_id, port), link, control_link, machine=MACHINES[port], sd_image=storage).start()
    except (BoardDefinitionError, QemuError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"board {board_id} (C firmware, qemu-system-arm -M {board.machine}) on {board.link_path} -> "
               f"{board.ptys['serial0']}, control on {board.control_path} -> {board.ptys['serial1']}")
    try:
        while not stop.wait(0.2):
            if board.proc.poll() is not None:
                raise click.ClickException(f"qemu-system-arm exited: {' | '.join(board.output[-3:])}")
    finally:
        board.stop()
    click.echo("stopped")


def _run_cffi(board_id, link, control_link, storage, faults, rate):
    """`emulate --cffi`: the firmware core's host build behind ptys until SIGINT/SIGTERM."""
    from splitpoint.boards.firmware.cboard import CBoard, FirmwareConfigError
    from splitpoint.boards.firmware.pty_link import CBoardLink
    from splitpoint.boards.schema import BoardDefinitionError, load_board

    for name, value in (("--storage", storage), ("--faults", faults), ("--rate", rate)):
        if value is not None:
            raise click.ClickException(f"{name} is not supported with --cffi: the host build keeps its medium "
                                       f"in RAM and its ptys run unthrottled")
    try:
        board = CBoardLink(CBoard.from_definition(load_board(board_id)), link, control_link).start()
    except (BoardDefinitionError, FirmwareConfigError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"board {board_id} (C firmware, host build) on {board.link_path}, control on {board.control_path}")
    try:
        stop.wait()
    finally:
        board.stop()
    click.echo("stopped")
