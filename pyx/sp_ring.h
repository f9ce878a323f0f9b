/*
 * sp_ring.h: a lock-free ring of 32-byte request descriptors (C11 atomics, no mutex).
 *
 * One ring body, `sp_ring`: one descriptor layout and one index scheme (see ring.pxd
 * for the diagram): positions are free-running uint64 counters, a slot is `pos & mask`,
 * and the sequence number of the descriptor at position `pos` is `first_seq + pos`.
 * Allocation, length, next seq and the run copies are shared; what differs is the
 * producer discipline, chosen when the ring is made (`multi`):
 *
 *   SPSC  one producer, one consumer: `head` published with release by the
 *         producer, `tail` by the consumer; each side caches the other's index
 *         so it touches the shared line only when the cached view says full/empty.
 *   MPSC  many producers, one consumer: producers reserve a run of positions
 *         with a CAS on `head` (room = capacity - (head - tail)), fill their cells
 *         and publish each one by storing `turn = pos + 1` (release).  The consumer
 *         takes cells in position order while their turn says published, then
 *         publishes `tail` (release), which hands the cells back to the producers.
 *         A producer that reserved but has not published yet holds back the
 *         consumer at its position, so seqs always come out consecutive.
 *
 * sp_ring_push/push_batch/pop/pop_batch pick the discipline with one branch on
 * `multi` (read-only, so always predicted); sp_spsc_* and sp_mpsc_* are the two
 * disciplines themselves, for callers that know which ring they hold.
 *
 * Everything here is static inline and touches only C data: safe to call without
 * the GIL.  Nothing here allocates except sp_ring_new.
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

/* ---------------------------------------------------------------- the ring body */

/* An MPSC cell: a descriptor whose seq word is the atomic turn (the consumer stamps seq). */
typedef struct sp_cell {
    _Atomic uint64_t turn;  /* pos + 1 once the producer of position pos has filled it */
    uint64_t offset;
    uint64_t cookie;
    uint32_t length;
    uint16_t op;
    uint16_t flags;
} sp_cell;

_Static_assert(sizeof(sp_cell) == 32, "sp_cell must be 32 bytes");

/* A slot holds a descriptor (SPSC) or a cell (MPSC): the same 32 bytes either way. */
typedef union sp_slot {
    sp_desc desc;
    sp_cell cell;
} sp_slot;

_Static_assert(sizeof(sp_slot) == 32, "sp_slot must be 32 bytes");

typedef struct sp_ring {
    _Alignas(SP_CACHELINE) _Atomic uint64_t head;  /* next position to fill (SPSC) or reserve (MPSC, CAS) */
    uint64_t tail_cache;                           /* SPSC producer's last view of tail */
    _Alignas(SP_CACHELINE) _Atomic uint64_t tail;  /* consumer: next position to take */
    uint64_t head_cache;                           /* SPSC consumer's last view of head */
    _Alignas(SP_CACHELINE) uint64_t mask;          /* capacity - 1 (read-only) */
    uint64_t first_seq;                            /* seq of position 0 (read-only) */
    sp_slot *slots;                                /* capacity slots (read-only pointer) */
    int multi;                                     /* 1: MPSC discipline, 0: SPSC (read-only) */
} sp_ring;

/* New ring; NULL when capacity is not a power of two <= SP_RING_MAX_CAPACITY or out of memory. */
static inline sp_ring *sp_ring_new(uint64_t capacity, uint64_t first_seq, int multi)
{
    if (!sp_is_pow2(capacity) || capacity > SP_RING_MAX_CAPACITY)
        return NULL;
    sp_ring *r = (sp_ring *)sp_alloc_lines(sizeof(sp_ring));
    if (!r)
        return NULL;
    memset(r, 0, sizeof(*r));
    r->slots = (sp_slot *)sp_alloc_lines(capacity * sizeof(sp_slot));
    if (!r->slots) {
        free(r);
        return NULL;
    }
    memset(r->slots, 0, capacity * sizeof(sp_slot));
    if (multi)
        for (uint64_t i = 0; i < capacity; i++)
            atomic_init(&r->slots[i].cell.turn, 0);  /* position i is published when turn == i + 1 */
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    r->mask = capacity - 1;
    r->first_seq = first_seq;
    r->multi = multi != 0;
    return r;
}

static inline void sp_ring_free(sp_ring *r)
{
    if (r) {
        free(r->slots);
        free(r);
    }
}

/* Descriptors in the ring (MPSC: reserved positions, some maybe still being filled). */
static inline uint64_t sp_ring_len(sp_ring *r)
{
    /* tail first: head only grows, so head - tail cannot go negative */
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    uint64_t used = atomic_load_explicit(&r->head, memory_order_acquire) - tail;
    return used > r->mask + 1 ? r->mask + 1 : used;
}

/* The seq the next push (or reservation) gets. */
static inline uint64_t sp_ring_next_seq(sp_ring *r)
{
    return r->first_seq + atomic_load_explicit(&r->head, memory_order_acquire);
}

static inline uint64_t sp_ring_capacity(sp_ring *r) { return r->mask + 1; }

/* Of k positions from pos, how many lie before the end of slots (the rest wrap to slot 0). */
static inline size_t sp_ring__first_run(sp_ring *r, uint64_t pos, size_t k)
{
    uint64_t to_end = r->mask + 1 - (pos & r->mask);
    return k < to_end ? k : (size_t)to_end;
}

/* ---------------------------------------------------------------- SPSC discipline */

/* Producer: free slots, refreshing the cached tail only when the cache says fewer than `want`. */
static inline uint64_t sp_spsc__room(sp_ring *r, uint64_t pos, uint64_t want)
{
    uint64_t room = r->mask + 1 - (pos - r->tail_cache);
    if (room < want) {
        r->tail_cache = atomic_load_explicit(&r->tail, memory_order_acquire);
        room = r->mask + 1 - (pos - r->tail_cache);
    }
    return room;
}

static inline uint64_t sp_spsc_push(sp_ring *r, uint16_t op, uint16_t flags, uint64_t offset,
                                    uint32_t length, uint64_t cookie)
{
    uint64_t pos = atomic_load_explicit(&r->head, memory_order_relaxed); /* only we write head */
    if (sp_spsc__room(r, pos, 1) == 0)
        return SP_RING_FULL;
    sp_desc *d = &r->slots[pos & r->mask].desc;
    d->seq = r->first_seq + pos;
    d->offset = offset;
    d->cookie = cookie;
    d->length = length;
    d->op = op;
    d->flags = flags;
    atomic_store_explicit(&r->head, pos + 1, memory_order_release);
    return r->first_seq + pos;
}

static inline size_t sp_spsc_push_batch(sp_ring *r, sp_desc *descs, size_t n)
{
    uint64_t pos = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint64_t room = sp_spsc__room(r, pos, n);
    size_t k = n < room ? n : (size_t)room;
    if (k == 0)
        return 0;
    uint64_t seq = r->first_seq + pos;
    size_t first = sp_ring__first_run(r, pos, k);
    for (size_t i = 0; i < k; i++)
        descs[i].seq = seq + i;
    memcpy(&r->slots[pos & r->mask], descs, first * sizeof(sp_desc));
    memcpy(&r->slots[0], descs + first, (k - first) * sizeof(sp_desc));
    atomic_store_explicit(&r->head, pos + k, memory_order_release);
    return k;
}

/* Consumer: filled slots, refreshing the cached head only when the cache says fewer than `want`. */
static inline uint64_t sp_spsc__ready(sp_ring *r, uint64_t pos, uint64_t want)
{
    uint64_t ready = r->head_cache - pos;
    if (ready < want) {
        r->head_cache = atomic_load_explicit(&r->head, memory_order_acquire);
        ready = r->head_cache - pos;
    }
    return ready;
}

static inline int sp_spsc_pop(sp_ring *r, sp_desc *out)
{
    uint64_t pos = atomic_load_explicit(&r->tail, memory_order_relaxed); /* only we write tail */
    if (sp_spsc__ready(r, pos, 1) == 0)
        return 0;
    *out = r->slots[pos & r->mask].desc;
    atomic_store_explicit(&r->tail, pos + 1, memory_order_release);
    return 1;
}

static inline size_t sp_spsc_pop_batch(sp_ring *r, sp_desc *out, size_t n)
{
    uint64_t pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint64_t ready = sp_spsc__ready(r, pos, n);
    size_t k = n < ready ? n : (size_t)ready;
    if (k == 0)
        return 0;
    size_t first = sp_ring__first_run(r, pos, k);
    memcpy(out, &r->slots[pos & r->mask], first * sizeof(sp_desc));
    memcpy(out + first, &r->slots[0], (k - first) * sizeof(sp_desc));
    atomic_store_explicit(&r->tail, pos + k, memory_order_release);
    return k;
}

/* ---------------------------------------------------------------- MPSC discipline */

/* Producers: reserve up to n positions; the first in *pos, the count returned (0: full). */
static inline uint64_t sp_mpsc__reserve(sp_ring *r, uint64_t n, uint64_t *pos)
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

static inline uint64_t sp_mpsc_push(sp_ring *r, uint16_t op, uint16_t flags, uint64_t offset,
                                    uint32_t length, uint64_t cookie)
{
    uint64_t pos;
    if (!sp_mpsc__reserve(r, 1, &pos))
        return SP_RING_FULL;
    sp_cell *c = &r->slots[pos & r->mask].cell;
    c->offset = offset;
    c->cookie = cookie;
    c->length = length;
    c->op = op;
    c->flags = flags;
    atomic_store_explicit(&c->turn, pos + 1, memory_order_release);
    return r->first_seq + pos;
}

static inline size_t sp_mpsc_push_batch(sp_ring *r, sp_desc *descs, size_t n)
{
    uint64_t pos;
    uint64_t k = sp_mpsc__reserve(r, n, &pos);
    uint64_t mask = r->mask, seq = r->first_seq + pos;
    sp_slot *slots = r->slots;
    for (uint64_t i = 0; i < k; i++) {
        sp_desc *d = &descs[i];
        sp_cell *c = &slots[(pos + i) & mask].cell;
        memcpy(&c->offset, &d->offset, sizeof(sp_desc) - offsetof(sp_desc, offset));
        atomic_store_explicit(&c->turn, pos + i + 1, memory_order_release);
        d->seq = seq + i;
    }
    return (size_t)k;
}

static inline int sp_mpsc_pop(sp_ring *r, sp_desc *out)
{
    uint64_t pos = atomic_load_explicit(&r->tail, memory_order_relaxed); /* only we write tail */
    sp_cell *c = &r->slots[pos & r->mask].cell;
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

static inline size_t sp_mpsc_pop_batch(sp_ring *r, sp_desc *out, size_t n)
{
    uint64_t pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
    uint64_t mask = r->mask, seq = r->first_seq + pos;
    sp_slot *slots = r->slots;
    size_t k = 0;
    while (k < n) {
        sp_cell *c = &slots[(pos + k) & mask].cell;
        if (atomic_load_explicit(&c->turn, memory_order_acquire) != pos + k + 1)
            break;  /* not yet published: later positions wait for it, keeping seq order */
        sp_desc d = {seq + k, c->offset, c->cookie, c->length, c->op, c->flags};
        out[k++] = d;
    }
    if (k)
        atomic_store_explicit(&r->tail, pos + k, memory_order_release);
    return k;
}

/* ---------------------------------------------------------------- either discipline */

/* Enqueue one descriptor; its seq, or SP_RING_FULL. */
static inline uint64_t sp_ring_push(sp_ring *r, uint16_t op, uint16_t flags, uint64_t offset,
                                    uint32_t length, uint64_t cookie)
{
    return r->multi ? sp_mpsc_push(r, op, flags, offset, length, cookie)
                    : sp_spsc_push(r, op, flags, offset, length, cookie);
}

/* Enqueue a prefix of descs[0:n] at consecutive seqs, stamped in place; the count. */
static inline size_t sp_ring_push_batch(sp_ring *r, sp_desc *descs, size_t n)
{
    return r->multi ? sp_mpsc_push_batch(r, descs, n) : sp_spsc_push_batch(r, descs, n);
}

/* Dequeue one descriptor into *out; 1, or 0 when empty (or the next one is still being filled). */
static inline int sp_ring_pop(sp_ring *r, sp_desc *out)
{
    return r->multi ? sp_mpsc_pop(r, out) : sp_spsc_pop(r, out);
}

/* Dequeue up to n descriptors into out[0:n]; the count. */
static inline size_t sp_ring_pop_batch(sp_ring *r, sp_desc *out, size_t n)
{
    return r->multi ? sp_mpsc_pop_batch(r, out, n) : sp_spsc_pop_batch(r, out, n);
}

#endif /* SP_RING_H */
