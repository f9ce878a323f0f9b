"""The NBD edge: the fixed-newstyle server, one ``NbdConnection`` per client.

``proto`` holds NBD's numbers and layouts, ``handshake``, ``transmission`` and ``replies`` the
phases, ``connection`` the protocol object that ties them together. Every request is validated
and translated here into the controller's own words; nothing else in the firmware knows an NBD
number, and nothing in it executes I/O.
"""
from splitpoint.firmware.frontend.nbd.connection import NbdConnection

__all__ = ["NbdConnection"]
