"""The firmware under QEMU: build a port, run it in qemu-system-arm with its UARTs on ptys.

Owns ``QemuBoard``: the QEMU process (ended by its pid), the two ptys QEMU
creates for UART0 (data, linked at PATH) and UART1 (control, at
PATH.control), the SD card image it may be given (the port's SD-over-SPI
driver uses it; without one the board keeps its medium in SRAM), and
``build``, which runs the port's Makefile. It never speaks
the wire protocol: the host opens PATH with ``board://BOARD_ID?port=PATH``
and handshakes with its own INFO; the firmware prints no banner.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import threading
import time

PORTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ports")
#: port -> QEMU machine (netduinoplus2 is an STM32F405: the F411's USARTs and memory map)
MACHINES = {"lm3s6965evb": "lm3s6965evb", "stm32f411": "netduinoplus2"}
#: board id -> the port that runs it under QEMU; any other board id runs on lm3s6965evb
PORT_FOR_BOARD = {"blackpill-f411-cdc": "stm32f411"}


def port_for(board_id: str) -> str:
    """The port ``splitpoint emulate --qemu BOARD_ID`` runs."""
    return PORT_FOR_BOARD.get(board_id, "lm3s6965evb")
_PTY_LINE = re.compile(r"char device redirected to (\S+) \(label (\w+)\)")


class QemuError(RuntimeError):
    """The firmware could not be built or QEMU could not run it; the message says what to install or fix."""


def build(board_id: str, port: str | None = None) -> str:
    """Build ``port`` (default: ``port_for(board_id)``) announcing ``board_id``; the path of its firmware.elf."""
    port = port or port_for(board_id)
    if port not in MACHINES:
        raise QemuError(f"no QEMU port {port!r}; ports: {', '.join(MACHINES)}")
    if shutil.which("arm-none-eabi-gcc") is None:
        raise QemuError("arm-none-eabi-gcc is missing: run `make firmware` (it installs gcc-arm-none-eabi)")
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,32}", board_id):
        raise QemuError(f"board id {board_id!r} must be 1-32 letters, digits, dots, dashes or underscores")
    # two processes (test workers, two `emulate --qemu`) building the same port at once would write
    # the same object files: one build at a time per port
    os.makedirs(os.path.join(PORTS, port, "build"), exist_ok=True)
    with open(os.path.join(PORTS, port, "build", ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out = subprocess.run(["make", "-s", "-C", os.path.join(PORTS, port), f"BOARD_ID={board_id}"],
                             capture_output=True, text=True)
    if out.returncode:
        raise QemuError(f"building the {port} firmware failed:\n{out.stdout}{out.stderr}")
    return os.path.join(PORTS, port, "build", board_id, "firmware.elf")


def check_sd_image(path: str) -> None:
    """Refuse an SD image QEMU would refuse: it must exist and its size be a power of two."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise QemuError(f"SD image {path!r}: {exc.strerror}; create one with `truncate -s 16M {path}`") from None
    if size < 1 << 20 or size & (size - 1):
        raise QemuError(f"SD image {path!r} is {size} bytes; QEMU needs a power of two (at least 1 MiB), "
                        f"e.g. `truncate -s 16M {path}`")


def _link(target: str, path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, path)


class QemuBoard:
    """The firmware ``elf`` running in ``qemu-system-arm -M machine``, UART0 at ``link``, UART1 at
    ``link + '.control'``."""

    def __init__(self, elf: str, link: str, control_link: str | None = None, machine: str = "lm3s6965evb",
                 sd_image: str | None = None):
        self.elf = elf
        self.sd_image = sd_image   # a raw SD card image (its size a power of two); None: the board's SRAM
        self.link_path = os.path.abspath(link)
        self.control_path = os.path.abspath(control_link or link + ".control")
        self.machine = machine
        self.proc: subprocess.Popen | None = None
        self.ptys: dict[str, str] = {}
        self.output: list[str] = []

    def start(self, timeout: float = 10.0) -> "QemuBoard":
        qemu = shutil.which("qemu-system-arm")
        if qemu is None:
            raise QemuError("qemu-system-arm is missing: run `make firmware` (it installs qemu-system-arm)")
        args = [qemu, "-M", self.machine, "-display", "none", "-monitor", "none", "-serial", "pty", "-serial", "pty",
                "-kernel", self.elf]
        if self.sd_image:
            if self.machine != "lm3s6965evb":
                raise QemuError(f"an SD card image needs the lm3s6965evb port; {self.machine} keeps its medium in SRAM")
            check_sd_image(self.sd_image)
            args += ["-drive", f"if=sd,format=raw,file={os.path.abspath(self.sd_image)}"]
        self.proc = subprocess.Popen(args,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     text=True)
        found = threading.Event()

        def read():
            for line in self.proc.stdout:
                self.output.append(line.rstrip())
                m = _PTY_LINE.search(line)
                if m:
                    self.ptys[m.group(2)] = m.group(1)
                    if {"serial0", "serial1"} <= self.ptys.keys():
                        found.set()

        threading.Thread(target=read, name="qemu-output", daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise QemuError(f"qemu-system-arm did not offer its UARTs: {' | '.join(self.output[-5:])}")
        _link(self.ptys["serial0"], self.link_path)
        _link(self.ptys["serial1"], self.control_path)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for path, label in ((self.link_path, "serial0"), (self.control_path, "serial1")):
            try:
                if os.path.islink(path) and os.readlink(path) == self.ptys.get(label):
                    os.unlink(path)
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
