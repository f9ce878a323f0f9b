/* The board's controller state: the primary, its per-chunk write epochs and the pool of backup regions.
 *
 * Owns executing a sequenced request on the primary and mirroring it to the
 * active member, the split at a TRIGGER (freeze the active member with its
 * manifest, activate the least recently active one, resync only the chunks
 * written since that member was last in sync) and reading frozen backups.
 * It never parses a frame or a line: requests reach it from the ring, in order.
 */
#ifndef SP_POOL_H
#define SP_POOL_H

#include <stdint.h>

#include "sp_config.h"
#include "sp_storage.h"

enum sp_member_state {
    SP_MEMBER_EMPTY = 0,       /* never held data */
    SP_MEMBER_ACTIVE = 1,      /* receives mirror writes, equal to the primary */
    SP_MEMBER_FROZEN = 2,      /* a consistent point-in-time backup with a manifest */
    SP_MEMBER_INCONSISTENT = 3 /* contents unknown (the medium failed under it) */
};

/* what a frozen backup records */
typedef struct {
    uint64_t trigger_id;           /* the TRIGGER's id (the host's, or the board's for a control TRIGGER) */
    uint32_t seq;                  /* its sequence number in the board's ring */
    uint32_t epoch;                /* the epoch it closed: every write of epochs <= epoch is in it */
    uint32_t digest;               /* CRC32C of the backup's bytes, taken at the cut */
    uint8_t label_len;             /* label bytes */
    char label[SP_LABEL_MAX + 1];  /* UTF-8, NUL-terminated */
} sp_manifest;

typedef struct {
    uint8_t state;         /* sp_member_state */
    uint32_t since;        /* chunks with epoch >= since must be copied to bring it in sync (0: all) */
    int64_t last_active;   /* rotation clock when it stopped being active (-1: never) */
    uint32_t generation;   /* +1 each time it is recycled */
    sp_manifest manifest;  /* valid while FROZEN */
} sp_member;

typedef struct {
    const sp_storage *st;            /* the medium */
    uint64_t capacity;               /* bytes of the primary and of each member */
    uint32_t block_size;             /* I/O unit */
    uint32_t chunk_size;             /* dirty-tracking unit, a multiple of block_size */
    uint32_t chunks;                 /* capacity / chunk_size, rounded up */
    uint32_t members;                /* regions in the pool (0: a TRIGGER is only a barrier) */
    int active;                      /* index of the active member, -1 when none */
    uint32_t epoch;                  /* TRIGGERs executed + 1 */
    int64_t clock;                   /* rotations so far */
    uint32_t rotations;              /* rotations so far (STATUS) */
    uint64_t resync_bytes;           /* bytes copied by resyncs (STATUS: proves they are incremental) */
    uint32_t chunk_epoch[SP_MAX_CHUNKS]; /* epoch of each chunk's last change (0: never) */
    sp_member member[SP_POOL_MAX];   /* the pool */
    uint8_t copy[SP_COPY_BYTES];     /* bounce buffer of resync and digest */
} sp_pool;

/* lay out capacity-byte regions on st; 0, or -1 when the limits or the medium do not allow it */
int sp_pool_init(sp_pool *p, const sp_storage *st, uint64_t capacity, uint32_t block_size, uint32_t chunk_size,
                 uint32_t members);

/* activate the first member (a full copy unless the medium started zeroed); 0, or -1 when the medium failed */
int sp_pool_start(sp_pool *p);

/* the protocol error code (0 on success) of an I/O range on the primary */
int sp_pool_check(const sp_pool *p, uint64_t offset, uint64_t length);

/* read the primary; 0 or SP_ERR_IO */
int sp_pool_read(sp_pool *p, uint64_t offset, uint8_t *dst, uint32_t n);
/* write the primary and mirror to the active member; fua flushes before returning */
int sp_pool_write(sp_pool *p, uint64_t offset, const uint8_t *src, uint32_t n, int fua);
/* zero a range of the primary and of the active member (TRIM and WRITE_ZEROES on this medium) */
int sp_pool_zero(sp_pool *p, uint64_t offset, uint64_t n, int fua);
/* make every earlier write durable */
int sp_pool_flush(sp_pool *p);
/* the split: freeze the active member with this manifest, rotate to the least recently active member */
int sp_pool_trigger(sp_pool *p, uint64_t trigger_id, uint32_t seq, const char *label, uint32_t label_len);

/* index of the frozen member cut by trigger_id, or -1 */
int sp_pool_find_backup(const sp_pool *p, uint64_t trigger_id);
/* read n bytes at offset of member i's region; a protocol error code or 0 */
int sp_pool_read_member(sp_pool *p, uint32_t i, uint64_t offset, uint8_t *dst, uint32_t n);
/* CRC32C of member i's region (verify); 0 on success */
int sp_pool_digest(sp_pool *p, uint32_t i, uint32_t *out);

#endif
