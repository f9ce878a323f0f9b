/* Frame layer of the wire protocol: CRC32C, COBS, header and trailer, and a
 * streaming decoder that resynchronises on the 0x00 delimiter.
 *
 * Owns bytes only: it knows no message type and holds no session. It never
 * fails out of sp_decoder_push: a bad chunk is counted and the stream resumes
 * after the next delimiter. Every write is bounded by the capacity it is given.
 */
#ifndef SP_FRAME_H
#define SP_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "sp_config.h"
#include "sp_wire.h"

/* why a chunk was rejected (the Python codec's exception names) */
enum sp_frame_status {
    SP_FRAME_OK = 0,
    SP_FRAME_COBS = 1,      /* FrameCOBSError: a code byte runs past the end */
    SP_FRAME_SHORT = 2,     /* FrameTooShortError: fewer than 16 decoded bytes */
    SP_FRAME_TOO_LARGE = 3, /* FrameTooLargeError: over the payload limit */
    SP_FRAME_LENGTH = 4,    /* FrameLengthError: header length differs from the bytes */
    SP_FRAME_CRC = 5        /* FrameCRCError: trailer differs from the CRC */
};

/* upper bound of the COBS encoding of n bytes, without the delimiter */
#define SP_COBS_MAX(n) ((n) + (n) / 254u + 1u)
/* the largest wire chunk (no delimiter) a board with SP_MAX_PAYLOAD accepts */
#define SP_MAX_WIRE SP_COBS_MAX(SP_MAX_PAYLOAD + SP_FRAME_OVERHEAD)

/* one decoded frame; payload points into the decoder's buffer until the next push */
typedef struct {
    uint8_t version;       /* header version */
    uint8_t type;          /* message type */
    uint16_t flags;        /* per-type flags */
    uint32_t seq;          /* request seq (or INFO's nonce) */
    uint32_t length;       /* payload bytes */
    const uint8_t *payload; /* the payload */
} sp_frame;

/* CRC32C of data, continuing from crc (0 to start) */
uint32_t sp_crc32c(uint32_t crc, const uint8_t *data, size_t n);

/* COBS-encode src into dst (no delimiter); the encoded length, or 0 when cap is too small */
size_t sp_cobs_encode(const uint8_t *src, size_t n, uint8_t *dst, size_t cap);

/* COBS-decode src (no delimiter) into dst; SP_FRAME_OK and *out_n, or SP_FRAME_COBS / SP_FRAME_TOO_LARGE */
int sp_cobs_decode(const uint8_t *src, size_t n, uint8_t *dst, size_t cap, size_t *out_n);

/* check a COBS-decoded frame against max_payload and fill *f (payload points into raw) */
int sp_frame_check(const uint8_t *raw, size_t n, uint32_t max_payload, sp_frame *f);

/* the wire bytes of one frame, delimiter included, into dst; their count, or 0 when cap is too small.
 * scratch (cap_scratch bytes) holds header|payload|crc before stuffing. */
size_t sp_frame_encode(uint8_t version, uint8_t type, uint16_t flags, uint32_t seq, const uint8_t *payload,
                       uint32_t length, uint8_t *scratch, size_t cap_scratch, uint8_t *dst, size_t cap);

/* streaming decoder: push bytes, get at most one frame per call */
typedef struct {
    uint32_t max_payload;      /* header length limit */
    uint32_t max_wire;         /* wire bytes of the largest legal frame */
    uint32_t fill;             /* bytes held in wire[] waiting for a delimiter */
    uint8_t skipping;          /* discarding an oversized chunk up to the next delimiter */
    uint32_t frames;           /* frames decoded */
    uint32_t rejected;         /* chunks rejected */
    uint32_t garbage_bytes;    /* bytes of rejected and discarded chunks */
    uint32_t errors[6];        /* rejections per sp_frame_status */
    uint8_t wire[SP_MAX_WIRE]; /* the chunk being collected */
    uint8_t raw[SP_MAX_WIRE];  /* the chunk after COBS decoding (never longer than before) */
} sp_decoder;

/* start a decoder whose limit is max_payload (at most SP_MAX_PAYLOAD) */
void sp_decoder_init(sp_decoder *d, uint32_t max_payload);
/* drop a partial chunk (the link changed); counters stay */
void sp_decoder_reset(sp_decoder *d);
/* take bytes up to the end of the first frame or rejected chunk among the n at p; *used says how many
 * were taken. SP_FRAME_OK with *f filled (its payload valid until the next push), the sp_frame_status
 * of a rejected chunk, or -1 when all n bytes were taken and nothing completed */
int sp_decoder_push(sp_decoder *d, const uint8_t *p, size_t n, size_t *used, sp_frame *f);

#endif
