/* The host port's RAM medium (see sp_host.h). */
#include "sp_host.h"

#include <string.h>

static int touches(const sp_host_ram *r, uint64_t off, uint64_t n)
{
    return r->fail_at >= off && r->fail_at - off < n;
}

static int ram_read(void *ctx, uint64_t off, uint8_t *dst, uint32_t n)
{
    sp_host_ram *r = ctx;
    if (off > r->size || n > r->size - off || touches(r, off, n))
        return -1;
    memcpy(dst, r->mem + off, n);
    return 0;
}

static int ram_write(void *ctx, uint64_t off, const uint8_t *src, uint32_t n)
{
    sp_host_ram *r = ctx;
    if (off > r->size || n > r->size - off || touches(r, off, n))
        return -1;
    memcpy(r->mem + off, src, n);
    r->writes++;
    return 0;
}

static int ram_zero(void *ctx, uint64_t off, uint64_t n)
{
    sp_host_ram *r = ctx;
    if (off > r->size || n > r->size - off || touches(r, off, n))
        return -1;
    memset(r->mem + off, 0, (size_t)n);
    r->writes++;
    return 0;
}

static int ram_flush(void *ctx)
{
    sp_host_ram *r = ctx;
    r->flushes++;
    return 0;
}

void sp_host_ram_storage(sp_storage *st, sp_host_ram *ram, int zeroed)
{
    st->ctx = ram;
    st->size = ram->size;
    st->zeroed = zeroed;
    st->read = ram_read;
    st->write = ram_write;
    st->zero = ram_zero;
    st->flush = ram_flush;
}
