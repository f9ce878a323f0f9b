"""UF2 packing: a raw firmware image as the 512-byte blocks a UF2 bootloader drive accepts.

Owns ``pack`` and its command line (``python -m splitpoint.boards.uf2 IN.bin OUT.uf2
--address A --family F``), which ``splitpoint flash`` runs before copying to
the drive. Each block carries 256 payload bytes at its target address, the
family id the bootloader checks, and the format's three magic numbers. It
never touches a drive.
"""
from __future__ import annotations

import argparse
import struct
import sys

MAGIC_START0 = 0x0A324655  # "UF2\n"
MAGIC_START1 = 0x9E5D5157
MAGIC_END = 0x0AB16F30
FLAG_FAMILY_ID = 0x00002000  # the block's file-size field holds a family id
PAYLOAD = 256                # what every common bootloader writes per block
BLOCK = 512
_HEADER = struct.Struct("<8I")  # magic0, magic1, flags, address, size, block no, blocks, family


def pack(image: bytes, address: int, family_id: int) -> bytes:
    """``image`` at ``address`` as UF2 blocks for ``family_id``; an empty image is refused."""
    if not image:
        raise ValueError("the firmware image is empty")
    if address % PAYLOAD or not 0 <= address <= 0xFFFFFFFF - len(image):
        raise ValueError(f"address {address:#x} must be 256-aligned with the image inside 32 bits")
    count = (len(image) + PAYLOAD - 1) // PAYLOAD
    out = bytearray()
    for n in range(count):
        chunk = image[n * PAYLOAD:(n + 1) * PAYLOAD]
        out += _HEADER.pack(MAGIC_START0, MAGIC_START1, FLAG_FAMILY_ID, address + n * PAYLOAD,
                            PAYLOAD, n, count, family_id)
        out += chunk.ljust(476, b"\0")
        out += struct.pack("<I", MAGIC_END)
    return bytes(out)


def main(argv=None) -> int:
    from splitpoint.boards.flash import UF2_FAMILIES

    ap = argparse.ArgumentParser(prog="python -m splitpoint.boards.uf2", description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("output")
    ap.add_argument("--address", required=True, type=lambda s: int(s, 0))
    ap.add_argument("--family", required=True, choices=sorted(UF2_FAMILIES))
    args = ap.parse_args(argv)
    try:
        with open(args.image, "rb") as fh:
            data = pack(fh.read(), args.address, UF2_FAMILIES[args.family])
        with open(args.output, "wb") as fh:
            fh.write(data)
    except (OSError, ValueError) as exc:
        print(f"uf2: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
