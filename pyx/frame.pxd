# C-level API of the frame codec kernel (implemented in sp_frame.h; docs/wire-protocol.md, section 1).
#
# A wire frame is COBS(header | payload | crc32c) 0x00; the encoder is fed the
# three pieces in turn without joining them:
#
#     dst: [code][b b b ...][code][b b ...][code]
#           ^code_pos        one block: code = 1 + bytes in it (at most 254);
#                            0xFF closes a block that carries no implicit zero
#
# Every function below works on C data only, so it is nogil.

from libc.stdint cimport uint32_t


cdef extern from "sp_frame.h" nogil:
    # one COBS encoder in progress
    ctypedef struct sp_cobs_enc:
        unsigned char *dst      # output, room for sp_cobs_max(total) bytes
        Py_ssize_t out          # bytes written so far, code bytes included
        Py_ssize_t code_pos     # index of the open block's code byte
        unsigned int code       # 1 + bytes in the open block

    # results of sp_frame_check
    enum:
        SP_FRAME_OK       # a good frame
        SP_FRAME_COBS     # broken stuffing
        SP_FRAME_SHORT    # fewer than header + CRC bytes
        SP_FRAME_LARGE    # header length above max_payload
        SP_FRAME_LENGTH   # header length differs from the bytes received
        SP_FRAME_CRC      # trailer differs from the computed CRC32C

    # fill the CRC tables and probe the CPU for SSE4.2 (allow_hw=0 forces the table loop)
    void sp_frame_init(int allow_hw)
    # 1 when sp_crc32c runs the SSE4.2 instruction, 0 for the table loop
    int sp_crc_uses_hw()
    # CRC32C (Castagnoli, reflected) continuing from crc (0 to start)
    uint32_t sp_crc32c(uint32_t crc, const unsigned char *p, Py_ssize_t n)
    # upper bound of the COBS encoding of n bytes, delimiter not included
    Py_ssize_t sp_cobs_max(Py_ssize_t n)
    # start an encoder writing at dst
    void sp_cobs_begin(sp_cobs_enc *e, unsigned char *dst)
    # stuff n more raw bytes
    void sp_cobs_feed(sp_cobs_enc *e, const unsigned char *src, Py_ssize_t n)
    # close the last block; the encoded length, delimiter not included
    Py_ssize_t sp_cobs_end(sp_cobs_enc *e)
    # decode n COBS bytes into dst (room for n); the decoded length, or -1 - index of the bad byte
    Py_ssize_t sp_cobs_decode(const unsigned char *src, Py_ssize_t n, unsigned char *dst)
    # little-endian u32 at p
    uint32_t sp_le32(const unsigned char *p)
    # the 12-byte header at h
    void sp_put_header(unsigned char *h, unsigned int version, unsigned int type, unsigned int flags,
                       uint32_t seq, uint32_t length)
    # a whole wire frame (delimiter included) into dst (room for sp_cobs_max(n + 16) + 1); its length
    Py_ssize_t sp_frame_encode(unsigned char *dst, unsigned int version, unsigned int type, unsigned int flags,
                               uint32_t seq, const unsigned char *payload, Py_ssize_t n)
    # decode and check one chunk (no delimiter) into dst (room for n): SP_FRAME_OK or the failure;
    # *got = decoded length, *detail = bad byte (COBS), header length (LARGE, LENGTH) or computed CRC (CRC)
    int sp_frame_check(const unsigned char *src, Py_ssize_t n, Py_ssize_t max_payload, unsigned char *dst,
                       Py_ssize_t *got, Py_ssize_t *detail)
