/* The bridge board: the public face of the firmware core, the one header a port includes.
 *
 * Owns wiring the layers together: bytes from the data channel go through the
 * frame decoder and the session into the request ring, lines from the control
 * channel go through the control parser into the same ring, and the ring is
 * drained into the pool. The port supplies the medium (sp_storage) and a
 * transmitter; it calls sp_board_data_in / sp_board_control_in from its main
 * loop (never from an interrupt) with the bytes its receivers queued.
 */
#ifndef SP_BOARD_H
#define SP_BOARD_H

#include <stddef.h>
#include <stdint.h>

#include "sp_config.h"
#include "sp_frame.h"
#include "sp_message.h"
#include "sp_pool.h"
#include "sp_ring.h"
#include "sp_session.h"
#include "sp_storage.h"

enum sp_channel {
    SP_CHANNEL_DATA = 0,    /* the wire protocol (UART0, CDC interface 0) */
    SP_CHANNEL_CONTROL = 1  /* one line in, one line out (UART1, CDC interface 2) */
};

/* put n bytes on a channel; the port may block until they are out */
typedef void (*sp_tx_fn)(void *ctx, int channel, const uint8_t *p, size_t n);

typedef struct {
    const char *board_id;   /* at most 32 bytes of UTF-8 */
    uint32_t firmware;      /* major << 16 | minor << 8 | patch */
    uint32_t features;      /* SP_FEAT_* the board announces (BACKUPS is added when it has a pool) */
    uint16_t window;        /* 1..SP_WINDOW_MAX */
    uint32_t max_transfer;  /* 1..SP_MAX_TRANSFER_MAX, a multiple of block_size */
    uint32_t block_size;    /* a power of two */
    uint64_t capacity;      /* bytes of the primary (and of each pool member) */
    uint32_t chunk_size;    /* dirty-tracking unit */
    uint32_t pool_members;  /* backup regions (0..SP_POOL_MAX) */
    sp_tx_fn tx;            /* the transmitter */
    void *tx_ctx;           /* passed to tx */
} sp_board_config;

typedef struct {
    uint32_t triggers;          /* TRIGGERs executed (both channels) */
    uint32_t control_triggers;  /* of which from the control channel */
    uint32_t missed_triggers;   /* TRIGGER MISSED barriers: points the sender could not cut exactly */
    uint32_t control_lines;     /* control lines answered */
    uint32_t io_errors;         /* requests the medium failed */
} sp_board_stats;

typedef struct sp_board {
    char board_id[SP_BOARD_ID_MAX + 1];
    sp_board_config cfg;       /* the configuration, board_id pointing at board_id[] */
    sp_storage storage;        /* the medium */
    sp_board_stats stats;
    uint64_t next_trigger_id;  /* id of the next control-channel TRIGGER: past every id seen */
    sp_ring ring;
    sp_pool pool;
    sp_decoder rx;             /* data channel frames */
    sp_session session;
    uint32_t control_fill;     /* bytes of the control line being collected */
    uint8_t control_overflow;  /* the line was too long: discard up to its newline */
    char control_line[SP_CONTROL_LINE_MAX + 1];
    char control_out[SP_CONTROL_OUT_MAX];
    uint8_t tx_raw[SP_REPLY_PAYLOAD_MAX + SP_FRAME_OVERHEAD];           /* a reply before stuffing */
    uint8_t tx_wire[SP_COBS_MAX(SP_REPLY_PAYLOAD_MAX + SP_FRAME_OVERHEAD) + 1u]; /* and after */
} sp_board;

/* bytes of sp_board, for a host that allocates it */
size_t sp_board_size(void);
/* check cfg and the medium, lay out the regions, activate the first member; 0, or a negative reason:
 * -1 board id (or transmitter) missing, or not UTF-8 of at most 32 bytes; -2 window outside
 * 1..SP_WINDOW_MAX; -3 max_transfer below the block size or above SP_MAX_TRANSFER_MAX; -4 geometry or
 * pool size outside the limits, or the medium too small; -5 the medium failed while the first member
 * was brought in sync */
int sp_board_init(sp_board *b, const sp_board_config *cfg, const sp_storage *st);
/* take bytes from the data channel; replies go out through cfg.tx */
void sp_board_data_in(sp_board *b, const uint8_t *p, size_t n);
/* take bytes from the control channel; answers go out through cfg.tx */
void sp_board_control_in(sp_board *b, const uint8_t *p, size_t n);
/* the data link changed (replugged): drop a partial frame */
void sp_board_data_reset(sp_board *b);

/* queue a TRIGGER on the board's own ring and execute it (the control channel's path); its ring seq */
int64_t sp_board_trigger(sp_board *b, const char *label, uint32_t label_len, uint64_t *trigger_id);

/* frozen backups: how many, and the manifest of the k-th in member order */
uint32_t sp_board_backup_count(const sp_board *b);
/* manifest and member index of the k-th frozen backup; 0, or -1 past the end */
int sp_board_backup_info(const sp_board *b, uint32_t k, sp_manifest *out, uint32_t *member);
/* read n bytes at offset of the backup cut by trigger_id; 0 or a protocol error code (NO_BACKUP: none) */
int sp_board_backup_read(sp_board *b, uint64_t trigger_id, uint64_t offset, uint8_t *dst, uint32_t n);

/* the STATUS line (JSON, no newline) into out; its length, or 0 when it does not fit in cap */
size_t sp_board_status(sp_board *b, char *out, size_t cap);
/* the answer to one control line (NUL-terminated UTF-8, no newline) into out, cut at cap; its length
 * (0: no answer). The control channel itself streams answers of any length. */
size_t sp_control_answer(sp_board *b, const char *line, char *out, size_t cap);

#endif
