"""Regenerate the wire-protocol test vectors (run once per protocol change, review the diff).

    .venv/bin/python tests/vectors/generate.py

The JSON files are the reference: every implementation (twin, Cython, the C
board firmware) must reproduce them byte for byte. This script only writes
them; tests/test_wire_vectors.py checks them, and docs/wire-protocol.md shows
one frame worked out by hand, so a bug here cannot silently define the protocol.
"""
import json
import os

from splitpoint.hal import wire as w
from splitpoint.pyx import frame_py as f

HERE = os.path.dirname(os.path.abspath(__file__))


def cobs_cases():
    samples = {
        "empty": b"",
        "one zero": b"\x00",
        "two zeros": b"\x00\x00",
        "no zeros": b"\x11\x22\x33",
        "zero in the middle": b"\x11\x00\x22",
        "trailing zero": b"\x11\x22\x00",
        "253 non-zero": bytes(range(1, 254)),
        "254 non-zero": bytes(range(1, 255)),
        "255 non-zero": bytes(range(1, 256)),
        "254 non-zero then zero": bytes(range(1, 255)) + b"\x00",
        "600 mixed": bytes((i * 7) & 0xFF for i in range(600)),
    }
    return [{"name": k, "raw": v.hex(), "cobs": f.cobs_encode(v).hex()} for k, v in samples.items()]


def crc_cases():
    samples = {"empty": b"", "check string": b"123456789", "32 zeros": bytes(32), "32 0xff": b"\xff" * 32,
               "ascending 0..31": bytes(range(32))}
    return [{"name": k, "data": v.hex(), "crc32c": f.crc32c(v)} for k, v in samples.items()]


def message_cases():
    info = w.BoardInfo(capacity=64 << 20, block_size=512, max_transfer=16384, window=8,
                       features=w.Feature.FLUSH | w.Feature.TRIM | w.Feature.FUA | w.Feature.TRIGGER,
                       firmware=w.pack_version("1.2.3"), session=0x5EED0001, next_seq=1, board_id="emu-uart")
    msgs = {
        "INFO handshake": w.Info(seq=0xA5A5, session=0x5EED0001, first_seq=1),
        "ACK of INFO": w.Ack(seq=0xA5A5, of=w.MsgType.INFO, info=info),
        "READ 4 KiB at 1 MiB": w.Read(seq=1, offset=1 << 20, length=4096),
        "ACK of READ with data": w.Ack(seq=1, of=w.MsgType.READ, data=bytes(range(16)) + bytes(16)),
        "WRITE with FUA": w.Write(seq=2, flags=w.Flag.FUA, offset=4096, data=b"\x00\x01splitpoint\x00\xff"),
        "WRITE of 512 zeros": w.Write(seq=3, offset=0, data=bytes(512)),
        "WRITE retransmitted": w.Write(seq=3, flags=w.Flag.RETRANSMIT, offset=0, data=b"\xab" * 8),
        "ACK of WRITE": w.Ack(seq=2, of=w.MsgType.WRITE),
        "ACK of WRITE replayed": w.Ack(seq=3, flags=w.Flag.REPLAY, of=w.MsgType.WRITE),
        "FLUSH": w.Flush(seq=4),
        "TRIM": w.Trim(seq=5, offset=8192, length=65536),
        "TRIM as write_zeroes with FUA": w.Trim(seq=6, flags=w.Flag.ZEROES | w.Flag.FUA, offset=0, length=512),
        "TRIGGER with label": w.Trigger(seq=7, id=1, label="nightly"),
        "TRIGGER without label": w.Trigger(seq=8, id=2),
        "ERROR out of range": w.Error(seq=9, of=w.MsgType.READ, code=w.ErrorCode.OUT_OF_RANGE,
                                      message="read [67108864, +512) past 67108864"),
        "ERROR stale replayed": w.Error(seq=10, flags=w.Flag.REPLAY, of=w.MsgType.WRITE, code=w.ErrorCode.STALE),
        "NAK": w.Nak(seq=0, expected=11, received=0b101),
        "seq wraps": w.Flush(seq=0xFFFFFFFF),
        "BACKUPS": w.BackupList(seq=11),
        "ACK of BACKUPS with two backups": w.Ack(seq=11, of=w.MsgType.BACKUPS, data=w.pack_backups([
            w.BackupEntry(trigger_id=1, digest=0xB7373038, label="nightly"), w.BackupEntry(trigger_id=2, digest=0)])),
        "ACK of BACKUPS with none": w.Ack(seq=11, of=w.MsgType.BACKUPS),
        "BACKUP_READ 1 KiB of t1 at 4 KiB": w.BackupRead(seq=12, trigger_id=1, offset=4096, length=1024),
        "ACK of BACKUP_READ with data": w.Ack(seq=12, of=w.MsgType.BACKUP_READ, data=bytes(range(8)) + bytes(8)),
        "ERROR no backup": w.Error(seq=13, of=w.MsgType.BACKUP_READ, code=w.ErrorCode.NO_BACKUP,
                                   message="no frozen backup of TRIGGER 9"),
    }
    return [{"name": k, "wire": m.encode().hex(), "message": w.to_json(m)} for k, m in msgs.items()]


def raw_frame(version, type_, flags, seq, payload, length=None, crc_xor=0):
    raw = f.encode_header(version, type_, flags, seq, len(payload) if length is None else length) + payload
    raw += (f.crc32c(raw) ^ crc_xor).to_bytes(4, "little")
    return f.cobs_encode(raw) + b"\x00"


def invalid_cases():
    good = w.Write(seq=2, offset=4096, data=b"abcd").encode()
    flipped = bytearray(good)
    flipped[5] ^= 0x10
    cases = {
        "CRC mismatch": (raw_frame(1, 3, 0, 2, b"\x00" * 8 + b"abcd", crc_xor=1), "FrameCRCError"),
        "bit flipped in payload": (bytes(flipped), "FrameCRCError"),
        "length field too long": (raw_frame(1, 4, 0, 4, b"", length=1), "FrameLengthError"),
        "shorter than header and CRC": (f.cobs_encode(b"\x01\x04\x00\x00") + b"\x00", "FrameTooShortError"),
        "COBS code past the end": (bytes.fromhex("0511223300"), "FrameCOBSError"),
        "payload above the limit": (raw_frame(1, 2, 0, 1, bytes(12), length=0x7FFFFFFF), "FrameTooLargeError"),
        "unknown version": (raw_frame(9, 4, 0, 4, b""), "UnsupportedVersionError"),
        "unknown type": (raw_frame(1, 0x42, 0, 4, b""), "UnknownTypeError"),
        "READ payload too short": (raw_frame(1, 2, 0, 1, bytes(11)), "BadPayloadError"),
        "FLUSH with a payload": (raw_frame(1, 4, 0, 1, b"x"), "BadPayloadError"),
        "WRITE with flag not allowed": (raw_frame(1, 3, 0x0002, 1, bytes(8)), "BadPayloadError"),
        "TRIGGER label too long": (raw_frame(1, 6, 0, 1, bytes(8) + b"x" * 65), "BadPayloadError"),
        "TRIGGER label not UTF-8": (raw_frame(1, 6, 0, 1, bytes(8) + b"\xff\xfe"), "BadPayloadError"),
        "ACK of FLUSH with data": (raw_frame(1, 0x80, 0, 1, b"\x04x"), "BadPayloadError"),
        "BACKUPS with a payload": (raw_frame(1, 7, 0, 1, b"x"), "BadPayloadError"),
        "BACKUP_READ payload too short": (raw_frame(1, 8, 0, 1, bytes(19)), "BadPayloadError"),
        "BACKUP_READ with FUA": (raw_frame(1, 8, 0x0001, 1, bytes(20)), "BadPayloadError"),
        "ACK of BACKUPS with a torn entry": (raw_frame(1, 0x80, 0, 1, b"\x07" + bytes(12)), "BadPayloadError"),
        "ACK of BACKUPS with a label past its end": (raw_frame(1, 0x80, 0, 1, b"\x07" + bytes(12) + b"\x05ab"),
                                                     "BadPayloadError"),
    }
    return [{"name": k, "wire": v.hex(), "error": e} for k, (v, e) in cases.items()]


def stream_case():
    """A byte stream with garbage, a torn frame and idle delimiters around good frames."""
    a = w.Flush(seq=1).encode()
    b = w.Read(seq=2, offset=0, length=512).encode()
    c = w.Trigger(seq=3, id=9, label="x").encode()
    stream = b"\x00\x00" + b"\x13\x37garbage" + b"\x00" + a + b[:7] + b"\x00" + b + b"\xff\xfe\xfd\x00" + c
    return {"stream": stream.hex(), "frames": [m.hex() for m in (a, b, c)], "rejected": 3,
            "garbage_bytes": 9 + 7 + 3}


def main():
    doc = {
        "about": "splitpoint wire protocol v1 test vectors; see docs/wire-protocol.md",
        "cobs": cobs_cases(),
        "crc32c": crc_cases(),
        "messages": message_cases(),
        "invalid": invalid_cases(),
        "stream": stream_case(),
    }
    with open(os.path.join(HERE, "wire_v1.json"), "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main()
