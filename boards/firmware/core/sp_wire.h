/* Wire protocol version 1: message numbers and byte layouts (docs/wire-protocol.md, section 2).
 *
 * Numbers and layouts only: no state, no I/O. Every multi-byte field is
 * little-endian and is read and written with the helpers at the end, never
 * by casting a buffer to a struct: the structs below exist so the layouts'
 * sizes are checked by the compiler.
 */
#ifndef SP_WIRE_H
#define SP_WIRE_H

#include <stdint.h>

#define SP_PROTOCOL_VERSION 1u /* the version this firmware speaks */
#define SP_PROTOCOL_MIN 1u     /* the oldest version it accepts */

enum sp_msg_type {
    SP_MSG_INFO = 0x01,    /* handshake: session u32, first_seq u32 */
    SP_MSG_READ = 0x02,    /* offset u64, length u32 */
    SP_MSG_WRITE = 0x03,   /* offset u64, data */
    SP_MSG_FLUSH = 0x04,   /* empty */
    SP_MSG_TRIM = 0x05,    /* offset u64, length u32 */
    SP_MSG_TRIGGER = 0x06, /* id u64, label (UTF-8, at most 64 bytes) */
    SP_MSG_BACKUPS = 0x07, /* empty; the ACK lists the frozen backups (sp_wire_backup_entry + label each) */
    SP_MSG_BACKUP_READ = 0x08, /* trigger id u64, offset u64, length u32; the ACK carries the bytes */
    SP_MSG_ACK = 0x80,     /* of u8, body */
    SP_MSG_ERROR = 0x81,   /* of u8, code u16, text */
    SP_MSG_NAK = 0x82      /* expected u32, received u32 */
};

enum sp_flag {
    SP_FLAG_FUA = 0x0001,        /* WRITE, TRIM: durable before the ACK */
    SP_FLAG_ZEROES = 0x0002,     /* TRIM: the range reads back as zeros */
    SP_FLAG_MISSED = 0x0004,     /* TRIGGER: the sender could not cut here exactly; a barrier, never a backup */
    SP_FLAG_RESUMED = 0x0100,    /* ACK of INFO: the session was kept */
    SP_FLAG_REPLAY = 0x4000,     /* ACK, ERROR: answered from the reply cache */
    SP_FLAG_RETRANSMIT = 0x8000  /* requests: a resend; informational */
};

enum sp_error_code {
    SP_ERR_NONE = 0,
    SP_ERR_UNSUPPORTED_VERSION = 1, /* frame version outside 1..1 */
    SP_ERR_UNKNOWN_TYPE = 2,        /* type this firmware does not know */
    SP_ERR_BAD_PAYLOAD = 3,         /* payload size, fields or flags malformed */
    SP_ERR_OUT_OF_RANGE = 4,        /* range past the capacity */
    SP_ERR_MISALIGNED = 5,          /* not block-aligned, or empty */
    SP_ERR_TOO_LARGE = 6,           /* above max_transfer */
    SP_ERR_READ_ONLY = 7,           /* write on a read-only medium */
    SP_ERR_IO = 8,                  /* the medium failed */
    SP_ERR_STALE = 9,               /* seq older than the reply cache */
    SP_ERR_WINDOW = 10,             /* seq beyond expected + window */
    SP_ERR_NO_SESSION = 11,         /* request before INFO */
    SP_ERR_NO_BACKUP = 12           /* BACKUP_READ of a trigger id that names no frozen backup */
};

enum sp_feature {
    SP_FEAT_FLUSH = 0x01,
    SP_FEAT_TRIM = 0x02,
    SP_FEAT_FUA = 0x04,
    SP_FEAT_TRIGGER = 0x08,
    SP_FEAT_READ_ONLY = 0x10,
    SP_FEAT_CONTROL = 0x20,
    SP_FEAT_BACKUPS = 0x40 /* answers BACKUPS and BACKUP_READ (a board with a pool) */
};

/* header: version u8 | type u8 | flags u16 | seq u32 | length u32 */
typedef struct { uint8_t version, type, flags[2], seq[4], length[4]; } sp_wire_header;
/* READ and TRIM payload */
typedef struct { uint8_t offset[8], length[4]; } sp_wire_range;
/* INFO request payload */
typedef struct { uint8_t session[4], first_seq[4]; } sp_wire_info;
/* ERROR payload before its text */
typedef struct { uint8_t of, code[2]; } sp_wire_error;
/* NAK payload */
typedef struct { uint8_t expected[4], received[4]; } sp_wire_nak;
/* INFO's ACK body before the board id */
typedef struct {
    uint8_t proto_min, proto_max, window[2], block_size[4], capacity[8], max_transfer[4];
    uint8_t features[4], firmware[4], session[4], next_seq[4];
} sp_wire_board_info;

/* BACKUP_READ payload */
typedef struct { uint8_t trigger_id[8], offset[8], length[4]; } sp_wire_backup_read;
/* one entry of BACKUPS' ACK body; label_len bytes of label follow */
typedef struct { uint8_t trigger_id[8], digest[4], label_len; } sp_wire_backup_entry;

_Static_assert(sizeof(sp_wire_header) == 12, "header is 12 bytes");
_Static_assert(sizeof(sp_wire_backup_read) == 20, "BACKUP_READ payload is 20 bytes");
_Static_assert(sizeof(sp_wire_backup_entry) == 13, "a BACKUPS entry is 13 bytes before its label");
_Static_assert(sizeof(sp_wire_range) == 12, "READ/TRIM payload is 12 bytes");
_Static_assert(sizeof(sp_wire_info) == 8, "INFO payload is 8 bytes");
_Static_assert(sizeof(sp_wire_error) == 3, "ERROR fields are 3 bytes");
_Static_assert(sizeof(sp_wire_nak) == 8, "NAK payload is 8 bytes");
_Static_assert(sizeof(sp_wire_board_info) == 36, "board info is 36 bytes before the id");

#define SP_HEADER_SIZE 12u
#define SP_TRAILER_SIZE 4u
#define SP_FRAME_OVERHEAD (SP_HEADER_SIZE + SP_TRAILER_SIZE)

/* flags each request type may carry (anything else is BAD_PAYLOAD) */
static inline uint16_t sp_allowed_flags(uint8_t type)
{
    switch (type) {
    case SP_MSG_WRITE: return SP_FLAG_FUA | SP_FLAG_RETRANSMIT;
    case SP_MSG_TRIM: return SP_FLAG_FUA | SP_FLAG_ZEROES | SP_FLAG_RETRANSMIT;
    case SP_MSG_TRIGGER: return SP_FLAG_MISSED | SP_FLAG_RETRANSMIT;
    case SP_MSG_ACK: return SP_FLAG_REPLAY | SP_FLAG_RESUMED;
    case SP_MSG_ERROR: return SP_FLAG_REPLAY;
    case SP_MSG_NAK: return 0;
    default: return SP_FLAG_RETRANSMIT;
    }
}

static inline uint16_t sp_get16(const uint8_t *p) { return (uint16_t)(p[0] | (uint16_t)p[1] << 8); }
static inline uint32_t sp_get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t sp_get64(const uint8_t *p) { return sp_get32(p) | (uint64_t)sp_get32(p + 4) << 32; }
static inline void sp_put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void sp_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void sp_put64(uint8_t *p, uint64_t v) { sp_put32(p, (uint32_t)v); sp_put32(p + 4, (uint32_t)(v >> 32)); }

/* a - b in serial-number arithmetic modulo 2^32 (negative when a is before b) */
static inline int64_t sp_seq_after(uint32_t a, uint32_t b) { return (int64_t)(int32_t)(a - b); }

#endif
