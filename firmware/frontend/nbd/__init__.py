"""The NBD edge: one ``NbdConnection`` per client (``connection``), by phase in ``handshake``,
``transmission`` and ``replies``."""
from splitpoint.firmware.frontend.nbd.connection import NbdConnection

__all__ = ["NbdConnection"]
