/* The primary, its chunk epochs and the pool of backup regions (see sp_pool.h).
 *
 * Epochs: every write belongs to the epoch in which it was executed, and a
 * chunk remembers the epoch of its last change. A member frozen at the end
 * of epoch e holds every write of epochs <= e, so when it is activated again
 * only chunks whose epoch is >= e + 1 (its `since`) differ from the primary.
 */
#include "sp_pool.h"

#include <string.h>

#include "sp_frame.h"
#include "sp_wire.h"

static uint64_t region_base(const sp_pool *p, uint32_t region) { return (uint64_t)region * p->capacity; }

int sp_pool_init(sp_pool *p, const sp_storage *st, uint64_t capacity, uint32_t block_size, uint32_t chunk_size,
                 uint32_t members)
{
    memset(p, 0, sizeof *p);
    if (block_size == 0 || (block_size & (block_size - 1u)) || block_size > SP_COPY_BYTES)
        return -1;
    if (capacity == 0 || capacity % block_size || chunk_size == 0 || chunk_size % block_size)
        return -1;
    if (members > SP_POOL_MAX)
        return -1;
    uint64_t chunks = (capacity + chunk_size - 1u) / chunk_size;
    if (chunks > SP_MAX_CHUNKS)
        return -1;
    if (capacity > UINT64_MAX / (members + 1u) || st->size < capacity * (members + 1u))
        return -1;
    p->st = st;
    p->capacity = capacity;
    p->block_size = block_size;
    p->chunk_size = chunk_size;
    p->chunks = (uint32_t)chunks;
    p->members = members;
    p->epoch = 1;
    p->active = -1;
    for (uint32_t i = 0; i < members; i++) {
        p->member[i].state = SP_MEMBER_EMPTY;
        p->member[i].since = st->zeroed ? 1u : 0u; /* on a zeroed medium only written chunks differ */
        p->member[i].last_active = -1;
    }
    return 0;
}

int sp_pool_check(const sp_pool *p, uint64_t offset, uint64_t length)
{
    if (length == 0)
        return SP_ERR_MISALIGNED;
    if (offset > p->capacity || length > p->capacity - offset)
        return SP_ERR_OUT_OF_RANGE;
    if (offset % p->block_size || length % p->block_size)
        return SP_ERR_MISALIGNED;
    return SP_ERR_NONE;
}

static void mark(sp_pool *p, uint64_t offset, uint64_t n)
{
    uint64_t first = offset / p->chunk_size, last = (offset + n - 1u) / p->chunk_size;
    for (uint64_t c = first; c <= last && c < p->chunks; c++)
        p->chunk_epoch[c] = p->epoch;
}

static void member_failed(sp_pool *p, int i)
{
    p->member[i].state = SP_MEMBER_INCONSISTENT;
    p->member[i].since = 0; /* nothing about its bytes is known: a full copy when it is activated */
    if (p->active == i)
        p->active = -1;
}

int sp_pool_read(sp_pool *p, uint64_t offset, uint8_t *dst, uint32_t n)
{
    return p->st->read(p->st->ctx, offset, dst, n) ? SP_ERR_IO : SP_ERR_NONE;
}

int sp_pool_write(sp_pool *p, uint64_t offset, const uint8_t *src, uint32_t n, int fua)
{
    const sp_storage *st = p->st;
    mark(p, offset, n); /* marked before the write: a failed write leaves the chunk to be copied */
    if (st->write(st->ctx, offset, src, n) || (fua && st->flush(st->ctx)))
        return SP_ERR_IO;
    if (p->active >= 0) {
        int a = p->active;
        if (st->write(st->ctx, region_base(p, (uint32_t)a + 1u) + offset, src, n))
            member_failed(p, a);
    }
    return SP_ERR_NONE;
}

int sp_pool_zero(sp_pool *p, uint64_t offset, uint64_t n, int fua)
{
    const sp_storage *st = p->st;
    mark(p, offset, n);
    if (st->zero(st->ctx, offset, n) || (fua && st->flush(st->ctx)))
        return SP_ERR_IO;
    if (p->active >= 0) {
        int a = p->active;
        if (st->zero(st->ctx, region_base(p, (uint32_t)a + 1u) + offset, n))
            member_failed(p, a);
    }
    return SP_ERR_NONE;
}

int sp_pool_flush(sp_pool *p)
{
    return p->st->flush(p->st->ctx) ? SP_ERR_IO : SP_ERR_NONE;
}

/* copy [offset, offset + n) of region `from` to region `to` through the bounce buffer */
static int copy_range(sp_pool *p, uint32_t from, uint32_t to, uint64_t offset, uint64_t n)
{
    const sp_storage *st = p->st;
    while (n) {
        uint32_t step = n < SP_COPY_BYTES ? (uint32_t)n : SP_COPY_BYTES;
        if (st->read(st->ctx, region_base(p, from) + offset, p->copy, step) ||
            st->write(st->ctx, region_base(p, to) + offset, p->copy, step))
            return -1;
        offset += step;
        n -= step;
        p->resync_bytes += step;
    }
    return 0;
}

/* bring member i in sync with the primary: copy each chunk changed at or after its `since` */
static int resync(sp_pool *p, uint32_t i)
{
    uint32_t since = p->member[i].since;
    for (uint32_t c = 0; c < p->chunks; c++) {
        if (since != 0 && p->chunk_epoch[c] < since)
            continue;
        uint64_t off = (uint64_t)c * p->chunk_size;
        uint64_t n = p->capacity - off < p->chunk_size ? p->capacity - off : p->chunk_size;
        if (copy_range(p, 0, i + 1u, off, n))
            return -1;
    }
    return 0;
}

static void activate(sp_pool *p, uint32_t i)
{
    sp_member *m = &p->member[i];
    m->generation++;
    memset(&m->manifest, 0, sizeof m->manifest);
    if (resync(p, i)) {
        member_failed(p, (int)i);
        return;
    }
    m->state = SP_MEMBER_ACTIVE;
    p->active = (int)i;
}

int sp_pool_digest(sp_pool *p, uint32_t i, uint32_t *out)
{
    if (i >= p->members)
        return -1;
    uint32_t crc = 0;
    for (uint64_t off = 0; off < p->capacity;) {
        uint64_t left = p->capacity - off;
        uint32_t step = left < SP_COPY_BYTES ? (uint32_t)left : SP_COPY_BYTES;
        if (p->st->read(p->st->ctx, region_base(p, i + 1u) + off, p->copy, step))
            return -1;
        crc = sp_crc32c(crc, p->copy, step);
        off += step;
    }
    *out = crc;
    return 0;
}

static void freeze(sp_pool *p, uint32_t i, uint64_t trigger_id, uint32_t seq, const char *label, uint32_t label_len)
{
    sp_member *m = &p->member[i];
    sp_manifest *mf = &m->manifest;
    if (p->st->flush(p->st->ctx)) { /* durable first, then a backup */
        member_failed(p, (int)i);
        return;
    }
    memset(mf, 0, sizeof *mf);
    mf->trigger_id = trigger_id;
    mf->seq = seq;
    mf->epoch = p->epoch;
    mf->label_len = (uint8_t)label_len;
    memcpy(mf->label, label, label_len);
    if (sp_pool_digest(p, i, &mf->digest)) {
        member_failed(p, (int)i);
        return;
    }
    m->state = SP_MEMBER_FROZEN;
    m->since = p->epoch + 1u; /* it holds every write up to this epoch */
}

int sp_pool_trigger(sp_pool *p, uint64_t trigger_id, uint32_t seq, const char *label, uint32_t label_len)
{
    if (label_len > SP_LABEL_MAX)
        return SP_ERR_BAD_PAYLOAD;
    int a = p->active;
    if (p->members == 0) {
        p->epoch++;
        return SP_ERR_NONE; /* no pool: the TRIGGER is a barrier and nothing more */
    }
    if (a >= 0) {
        p->active = -1;
        freeze(p, (uint32_t)a, trigger_id, seq, label, label_len);
        p->member[a].last_active = p->clock;
    } else if (p->members == 1) {
        /* a pool of one: the member frozen at the previous TRIGGER is refreshed and cut here */
        activate(p, 0);
        if (p->active == 0) {
            p->active = -1;
            freeze(p, 0, trigger_id, seq, label, label_len);
        }
        a = 0;
        p->member[0].last_active = p->clock + 1;
    }
    p->epoch++;
    p->clock++;
    p->rotations++;
    if (p->members > 1) {
        /* least recently active first, lowest index on a tie; never the member just frozen */
        int next = -1;
        for (uint32_t i = 0; i < p->members; i++) {
            if ((int)i == a)
                continue;
            if (next < 0 || p->member[i].last_active < p->member[next].last_active)
                next = (int)i;
        }
        activate(p, (uint32_t)next);
    }
    return SP_ERR_NONE;
}

int sp_pool_find_backup(const sp_pool *p, uint64_t trigger_id)
{
    for (uint32_t i = 0; i < p->members; i++)
        if (p->member[i].state == SP_MEMBER_FROZEN && p->member[i].manifest.trigger_id == trigger_id)
            return (int)i;
    return -1;
}

int sp_pool_read_member(sp_pool *p, uint32_t i, uint64_t offset, uint8_t *dst, uint32_t n)
{
    if (i >= p->members)
        return SP_ERR_OUT_OF_RANGE;
    int err = sp_pool_check(p, offset, n);
    if (err)
        return err;
    return p->st->read(p->st->ctx, region_base(p, i + 1u) + offset, dst, n) ? SP_ERR_IO : SP_ERR_NONE;
}

/* activate the first member at start (a full copy unless the medium started zeroed) */
int sp_pool_start(sp_pool *p)
{
    if (p->members == 0)
        return 0;
    activate(p, 0);
    return p->active == 0 ? 0 : -1;
}
