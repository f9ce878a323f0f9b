/* The sequenced request ring: the one order in which the board's controller executes requests.
 *
 * Sources only queue: the data channel's session pushes each request once it
 * is in seq order, the control channel pushes its TRIGGERs. The controller
 * pops and executes them; each push gets the next ring sequence number, so a
 * TRIGGER's `seq=<n>` says exactly which requests are before it.
 *
 * Index arithmetic: head and tail count pushes and pops and wrap at 2^32;
 * a slot is index & (SP_RING_SLOTS - 1). The ring is full when
 * head - tail == SP_RING_SLOTS and empty when head == tail.
 *
 *     tail            head
 *      v               v
 *   [ r5 | r6 | r7 | .... | .... ]      head - tail = 3 queued
 */
#ifndef SP_RING_H
#define SP_RING_H

#include <stdint.h>

#include "sp_config.h"

struct sp_reply;

enum sp_source {
    SP_SOURCE_DATA = 0,   /* a wire request from the data channel */
    SP_SOURCE_CONTROL = 1 /* a TRIGGER line from the control channel */
};

/* one queued request; data and label point into the source's buffer until it is executed */
typedef struct {
    uint32_t seq;            /* ring sequence number, given at push */
    uint8_t source;          /* sp_source */
    uint8_t type;            /* SP_MSG_* */
    uint16_t flags;          /* SP_FLAG_* */
    uint32_t wire_seq;       /* the wire request's seq (data channel) */
    uint64_t offset;         /* READ, WRITE, TRIM, BACKUP_READ */
    uint32_t length;         /* READ, TRIM, BACKUP_READ length; WRITE data bytes; TRIGGER label bytes */
    uint64_t trigger_id;     /* TRIGGER, BACKUP_READ */
    const uint8_t *data;     /* WRITE data, TRIGGER label */
    struct sp_reply *reply;  /* where a data-channel request's reply goes */
} sp_request;

typedef struct {
    uint32_t head;           /* pushes so far */
    uint32_t tail;           /* pops so far */
    uint32_t next_seq;       /* sequence number of the next push */
    sp_request slot[SP_RING_SLOTS];
} sp_ring;

/* empty ring whose first request gets seq first_seq */
void sp_ring_init(sp_ring *r, uint32_t first_seq);
/* queue a copy of req with the next seq; that seq, or -1 when the ring is full */
int64_t sp_ring_push(sp_ring *r, const sp_request *req);
/* the oldest request, or NULL when empty; it stays valid until the next push */
sp_request *sp_ring_pop(sp_ring *r);
/* requests queued */
static inline uint32_t sp_ring_count(const sp_ring *r) { return r->head - r->tail; }

#endif
