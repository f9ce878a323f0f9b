"""splitpoint.hal.wire: the wire protocol between a host and a bridge board or another device.

Owns the typed messages (``messages``: types, flags, error codes, payloads,
encode/decode over the frame codec kernel) and the transport-free session
engine (``session``: sequence numbers, window, retransmission, NAK, reply
cache). Every user drives the same engine from its own transport: the
serial backend, the emulated board, device links. Nothing here opens a port,
starts a thread or sleeps: the caller passes frames in, sends the messages
it gets back, and tells the timers what time it is.
"""
from splitpoint.hal.wire.messages import *  # noqa: F401,F403  (the protocol's names, one namespace)
from splitpoint.hal.wire.messages import __all__ as _messages_all
from splitpoint.hal.wire.messages import frame

__all__ = ["frame", *_messages_all]
