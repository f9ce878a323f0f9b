"""A pty pair in raw mode whose slave is linked at a path: the emulated board's end of a cable.

Owns creating, linking (atomically, by rename) and closing the pair. It never
reads or writes the link: the emulator's threads do.
"""
from __future__ import annotations

import os
import termios
import tty


class Pty:
    """One pty pair in raw mode; the slave is linked at ``path`` and kept open so the
    host can close and reopen it without the master seeing a hang-up."""

    def __init__(self, path: str):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave, termios.TCSANOW)
        os.set_blocking(self.master, False)
        self.name = os.ttyname(self.slave)
        self.path = path
        tmp = f"{path}.{os.getpid()}.tmp"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(self.name, tmp)
        os.replace(tmp, path)

    def close(self):
        try:
            if os.path.islink(self.path) and os.readlink(self.path) == self.name:
                os.unlink(self.path)
        except OSError:
            pass
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
