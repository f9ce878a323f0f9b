/* The sequenced request ring (see sp_ring.h for the index arithmetic). */
#include "sp_ring.h"

#include <string.h>

void sp_ring_init(sp_ring *r, uint32_t first_seq)
{
    memset(r, 0, sizeof *r);
    r->next_seq = first_seq;
}

int64_t sp_ring_push(sp_ring *r, const sp_request *req)
{
    if (r->head - r->tail >= SP_RING_SLOTS)
        return -1;
    sp_request *slot = &r->slot[r->head & (SP_RING_SLOTS - 1u)];
    *slot = *req;
    slot->seq = r->next_seq++;
    r->head++;
    return slot->seq;
}

sp_request *sp_ring_pop(sp_ring *r)
{
    if (r->head == r->tail)
        return NULL;
    sp_request *req = &r->slot[r->tail & (SP_RING_SLOTS - 1u)];
    r->tail++;
    return req;
}
