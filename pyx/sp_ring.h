/*
 * sp_ring.h: lock-free rings of 32-byte request descriptors (C11 atomics, no mutex).
 *
 * Two rings share one descriptor layout and one index scheme (see ring.pxd for the
 * diagram): positions are free-running uint64 counters, a slot is `pos & mask`, and
 * the sequence number of the descriptor at position `pos` is `first_seq + pos`.
 *
 *   sp_spsc  one producer, one consumer: `head` published with release by the
 *            producer, `tail` by the consumer; each side caches the other's index
 *            so it touches the shared line only when the cached view says full/empty.
 *   sp_mpsc  many producers, one consumer: producers reserve a run of positions
 *            with a CAS on `head` (room = capacity - (head - tail)), fill their cells
 *            and publish each one by storing `turn = pos + 1` (release).  The consumer
 *            takes cells in position order while their turn says published, then
 *            publishes `tail` (release), which hands the cells back to the producers.
 *            A producer that reserved but has not published yet holds back the
 *            consumer at its position, so seqs always come out consecutive.
 *
 * Everything here is static inline and touches only C data: safe to call without
 * the GIL.  Nothing here allocates except sp_*_new.
 */
#ifndef SP_RING_H
#define SP_RING_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SP_CACHELINE 64
/* largest capacity a ring accepts: 2^24 descriptors = 512 MiB of slots */
#define SP_RING_MAX_CAPACITY ((uint64_t)1 << 24)
/* what push returns when the ring is full (never a seq: seqs start below 2^63) */
#define SP_RING_FULL UINT64_MAX

/* One request descriptor; the numpy dtype ring.DESC_DTYPE has exactly this layout. */
typedef struct sp_desc {
    uint64_t seq;     /* stamped by the ring at enqueue: first_seq + position */
    uint64_t offset;  /* byte offset */
    uint64_t cookie;  /* producer's handle (payload / completion table index) */
    uint32_t length;  /* byte length */
    uint16_t op;      /* request opcode */
    uint16_t flags;   /* FLAG_FUA | FLAG_FAST_ZERO | FLAG_NO_HOLE */
} sp_desc;

_Static_assert(sizeof(sp_desc) == 32, "sp_desc must be 32 bytes");

/* ---------------------------------------------------------------- helpers */

/* Tell the core we are spinning (lets the sibling hyperthread run). */
static inline void sp_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline int sp_is_pow2(uint64_t n) { return n != 0 && (n & (n - 1)) == 0; }

/* aligned_alloc wants a size that is a multiple of the alignment */
static inline void *sp_alloc_lines(size_t size)
{
    size_t rounded = (size + SP_CACHELINE - 1) & ~(size_t)(SP_CACHELINE - 1);
    return aligned_alloc(SP_CACHELINE, rounded ? rounded : SP_CACHELINE);
}

/* ---------------------------------------------------------------- SPSC */

typedef struct sp_spsc {
    _Alignas(SP_CACHELINE) _Atomic uint64_t head;  /* producer: next position to fill */
    uint64_t tail_cache;                           /* producer's last view of tail */
    _Alignas(SP_CACHELINE) _Atomic uint64_t tail;  /* consumer: next position to take */
    uint64_t head_cache;                           /* consumer's last view of head */
    _Alignas(SP_CACHELINE) uint64_t mask;          /* capacity - 1 (read-only) */
    uint64_t first_seq;                            /* seq of position 0 (read-only) */
    sp_desc *slots;                                /* capacity descriptors (read-only pointer) */
} sp_spsc;

static inline sp_spsc *sp_spsc_new(uint64_t capacity, uint64_t first_seq)
{
    if (!sp_is_pow2(capacity) || capacity > SP_RING_MAX_CAPACITY)
        return NULL;
    sp_spsc *r = (sp_spsc *)sp_alloc_lines(sizeof(sp_spsc));
    if (!r)
        return NULL;
    memset(r, 0, sizeof(*r));
    r->slots = (sp_desc *)sp_alloc_lines(capacity * sizeof(sp_desc));
    if (!r->slots) {
        free(r);
        return NULL;
    }
    memset(r->slots, 0, capacity * sizeof(sp_desc));
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    r->mask = capacity - 1;
    r->first_seq = first_seq;
    return r;
}

static inline void sp_spsc_free(sp_spsc *r)
{
    if (r) {
        free(r->slots);
        free(r);
    }
}

/* Producer: free slots, refreshing the cached tail only when the cache says fewer than `want`. */
static inline uint64_t sp_spsc__room(sp_spsc *r, uint64_t pos, uint64_t want)
{
    uint64_t room = r->mask + 1 - (pos - r->tail_cache);
    if (room < want) {
        r->tail_cache = atomic_load_explicit(&r->tail, memory_order_acquire);
        room = r->mask + 1 - (pos - r->tail_cache);
    }
    return room;
}

static inline uint64_t sp_spsc_push(sp_spsc *r, uint16_t op, uint16_t flags, uint64_t offset,
                                    uint32_t length, uint64_t cookie)
{
    uint64_t pos = atomic_load_explicit(&r->head, memory_order_relaxed); /* only we write head */
    if (sp_spsc__room(r, pos, 1) == 0)
        return SP_RING_FULL;
    sp_desc *d = &r->slots[pos & r->mask];
    d->seq = r->first_seq + pos;
    d->offset = offset;
    d->cookie = cookie;
    d->length = length;
    d->op = op;
    d->flags = flags;
    atomic_store_explicit(&r->head, pos + 1, memory_order_release);
    return r->first_seq + pos;
}

static inline size_t sp_spsc_push_batch(sp_spsc *r, sp_desc *descs, size_t n)
{
    uint64_t pos = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint64_t room = sp_spsc__room(r, pos, n);
    size_t k = n < room ? n : (size_t)room;
    if (k == 0)
        return 0;
    uint64_t seq = r->first_seq + pos, idx = pos & r->mask;
    size_t first = k < r->mask + 1 - idx ? k : (size_t)(r->mask + 1 - idx); /* up to the end of slots */
    for (size_t i = 0; i < k; i++)
        descs[i].seq = seq + i;
    memcpy(&r->slots[idx], descs, first * sizeof(sp_desc));
    memcpy(&r->slots[0], descs + first, (k - first) * sizeof(sp_desc));
    atomic_store_explicit(&r->head, pos + k, memory_order_release);
    return k;
}

/* Consumer: filled slots, refreshing the cached head only when the cache says fewer than `want`. */
static inline uint64_t sp_spsc__ready(sp_spsc *r, uint64_t pos, uint64_t want)
{
    uint64_t ready = r->head_cache - pos;
    if (ready < want) {
        r->head_cache = atomic_load_explicit(&r->head, memory_order_acquire);
        ready = r->head_cache - pos;
    }
    return ready;
}

static inline int sp_spsc_pop(sp_spsc *r, sp_desc *out)
{
    uint64_t pos = atomic_load_explicit(&r->tail, memory_order_relaxed); /* only we write tail */
    if (sp_spsc__ready(r, pos, 1) == 0)
        return 0;
    *out = r->slots[pos & r->mask];
    atomic_store_explicit(&r->tail, pos + 1, memory_order_release);
    return 1;
}

static inline size_t sp_spsc_pop_batch(sp_spsc *r, sp_desc *out, size_t n)
{
    uint64_t pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint64_t ready = sp_spsc__ready(r, pos, n);
    size_t k = n < ready ? n : (size_t)ready;
    if (k == 0)
        return 0;
    uint64_t idx = pos & r->mask;
    size_t first = k < r->mask + 1 - idx ? k : (size_t)(r->mask + 1 - idx);
    memcpy(out, &r->slots[idx], first * sizeof(sp_desc));
    memcpy(out + first, &r->slots[0], (k - first) * sizeof(sp_desc));
    atomic_store_explicit(&r->tail, pos + k, memory_order_release);
    return k;
}

static inline uint64_t sp_spsc_len(sp_spsc *r)
{
    /* tail first: head only grows, so head - tail cannot go negative */
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    uint64_t used = atomic_load_explicit(&r->head, memory_order_acquire) - tail;
    return used > r->mask + 1 ? r->mask + 1 : used;
}

static inline uint64_t sp_spsc_next_seq(sp_spsc *r)
{
    return r->first_seq + atomic_load_explicit(&r->head, memory_order_acquire);
}

static inline uint64_t sp_spsc_capacity(sp_spsc *r) { return r->mask + 1; }

/* ---------------------------------------------------------------- MPSC */

/* A cell is a descriptor whose seq word is the atomic turn; the consumer stamps seq = first_seq + pos. */
typedef struct sp_mpsc_cell {
    _Atomic uint64_t turn;  /* pos + 1 once the producer of position pos has filled it */
    uint64_t offset;
    uint64_t cookie;
    uint32_t length;
    uint16_t op;
    uint16_t flags;
} sp_mpsc_cell;

_Static_assert(sizeof(sp_mpsc_cell) == 32, "sp_mpsc_cell must be 32 bytes");

typedef struct sp_mpsc {
    _Alignas(SP_CACHELINE) _Atomic uint64_t head;  /* producers: next position to reserve (CAS) */
    _Alignas(SP_CACHELINE) _Atomic uint64_t tail;  /* consumer: next position to take (release) */
    _Alignas(SP_CACHELINE) uint64_t mask;          /* capacity - 1 (read-only) */
    uint64_t first_seq;                            /* seq of position 0 (read-only) */
    sp_mpsc_cell *cells;                           /* capacity cells (read-only pointer) */
} sp_mpsc;

static inline sp_mpsc *sp_mpsc_new(uint64_t capacity, uint64_t first_seq)
{
    if (!sp_is_pow2(capacity) || capacity > SP_RING_MAX_CAPACITY)
        return NULL;
    sp_mpsc *r = (sp_mpsc *)sp_alloc_lines(sizeof(sp_mpsc));
    if (!r)
        return NULL;
    memset(r, 0, sizeof(*r));
    r->cells = (sp_mpsc_cell *)sp_alloc_lines(capacity * sizeof(sp_mpsc_cell));
    if (!r->cells) {
        free(r);
        return NULL;
    }
    memset(r->cells, 0, capacity * sizeof(sp_mpsc_cell));
    for (uint64_t i = 0; i < capacity; i++)
        atomic_init(&r->cells[i].turn, 0);  /* position i is published when turn == i + 1 */
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    r->mask = capacity - 1;
    r->first_seq = first_seq;
    return r;
}

static inline void sp_mpsc_free(sp_mpsc *r)
{
    if (r) {
        free(r->cells);
        free(r);
    }
}

/* Producers: reserve up to n positions; the first in *pos, the count returned (0: full). */
static inline uint64_t sp_mpsc__reserve(sp_mpsc *r, uint64_t n, uint64_t *pos)
{
    for (;;) {
        /* tail before head: the consumer only passes positions whose reservation it has
           seen published, so head >= tail holds for the pair read in this order.  The
           acquire orders our writes to freed cells after the consumer's reads of them. */
        uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
        uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
        uint64_t used = head - tail;
        if (used > r->mask + 1)
            continue;  /* we slept between the loads: tail is older than head, read both again */
        uint64_t room = r->mask + 1 - used;
        uint64_t k = n < room ? n : room;
        if (k == 0)
            return 0;
        if (atomic_compare_exchange_weak_explicit(&r->head, &head, head + k, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            *pos = head;
            return k;
        }
    }
}

static inline uint64_t sp_mpsc_push(sp_mpsc *r, uint16_t op, uint16_t flags, uint64_t offset,
                                    uint32_t length, uint64_t cookie)
{
    uint64_t pos;
    if (!sp_mpsc__reserve(r, 1, &pos))
        return SP_RING_FULL;
    sp_mpsc_cell *c = &r->cells[pos & r->mask];
    c->offset = offset;
    c->cookie = cookie;
    c->length = length;
    c->op = op;
    c->flags = flags;
    atomic_store_explicit(&c->turn, pos + 1, memory_order_release);
    return r->first_seq + pos;
}

static inline size_t sp_mpsc_push_batch(sp_mpsc *r, sp_desc *descs, size_t n)
{
    uint64_t pos;
    uint64_t k = sp_mpsc__reserve(r, n, &pos);
    uint64_t mask = r->mask, seq = r->first_seq + pos;
    sp_mpsc_cell *cells = r->cells;
    for (uint64_t i = 0; i < k; i++) {
        sp_desc *d = &descs[i];
        sp_mpsc_cell *c = &cells[(pos + i) & mask];
        memcpy(&c->offset, &d->offset, sizeof(sp_desc) - offsetof(sp_desc, offset));
        atomic_store_explicit(&c->turn, pos + i + 1, memory_order_release);
        d->seq = seq + i;
    }
    return (size_t)k;
}

static inline int sp_mpsc_pop(sp_mpsc *r, sp_desc *out)
{
    uint64_t pos = atomic_load_explicit(&r->tail, memory_order_relaxed); /* only we write tail */
    sp_mpsc_cell *c = &r->cells[pos & r->mask];
    if (atomic_load_explicit(&c->turn, memory_order_acquire) != pos + 1)
        return 0;
    out->seq = r->first_seq + pos;
    out->offset = c->offset;
    out->cookie = c->cookie;
    out->length = c->length;
    out->op = c->op;
    out->flags = c->flags;
    atomic_store_explicit(&r->tail, pos + 1, memory_order_release);
    return 1;
}

static inline size_t sp_mpsc_pop_batch(sp_mpsc *r, sp_desc *out, size_t n)
{
    uint64_t pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint64_t mask = r->mask, seq = r->first_seq + pos;
    sp_mpsc_cell *cells = r->cells;
    size_t k = 0;
    while (k < n) {
        sp_mpsc_cell *c = &cells[(pos + k) & mask];
        if (atomic_load_explicit(&c->turn, memory_order_acquire) != pos + k + 1)
            break;  /* not yet published: later positions wait for it, keeping seq order */
        sp_desc d = {seq + k, c->offset, c->cookie, c->length, c->op, c->flags};
        out[k++] = d;
    }
    if (k)
        atomic_store_explicit(&r->tail, pos + k, memory_order_release);
    return k;
}

static inline uint64_t sp_mpsc_len(sp_mpsc *r)
{
    /* counts reserved positions whose producer is still filling them */
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    uint64_t used = atomic_load_explicit(&r->head, memory_order_acquire) - tail;
    return used > r->mask + 1 ? r->mask + 1 : used;
}

static inline uint64_t sp_mpsc_next_seq(sp_mpsc *r)
{
    return r->first_seq + atomic_load_explicit(&r->head, memory_order_acquire);
}

static inline uint64_t sp_mpsc_capacity(sp_mpsc *r) { return r->mask + 1; }

#endif /* SP_RING_H */
