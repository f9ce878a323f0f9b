"""splitpoint.firmware: the controller firmware.

Owns requests, the controller loop, mirror paths, backup pools, triggers,
metadata, the host front end (``frontend/``) and device links (``link/``).
It reaches storage only through ``splitpoint.hal``.
"""
