"""splitpoint: a model of storage-controller backup firmware.

A controller serves a primary LUN and mirrors every write, in order, to a
backup LUN. A TRIGGER travels in-band through the same sequenced queue as the
writes, so the backup it cuts is exactly the primary at that point of the
stream. This package is the public face: API, CLI and configuration. The
firmware lives in ``splitpoint.firmware``, storage backends in
``splitpoint.hal`` and the Cython kernels in ``splitpoint.pyx``.
"""

__version__ = "0.1.0"
