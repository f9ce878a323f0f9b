/* The storage driver contract: what a port supplies so the core can keep its regions on a medium.
 *
 * The core lays the medium out as 1 + pool_members regions of `capacity`
 * bytes each: region 0 is the primary, region i (1..) is pool member i - 1.
 * Every call is given an in-bounds range (the core checks before it calls);
 * a driver returns 0 on success and non-zero when the medium failed.
 */
#ifndef SP_STORAGE_H
#define SP_STORAGE_H

#include <stdint.h>

typedef struct sp_storage {
    void *ctx;      /* the driver's own state */
    uint64_t size;  /* bytes of the medium */
    int zeroed;     /* non-zero when the medium reads as zeros at start (RAM): first resyncs copy less */
    /* copy n bytes at off into dst */
    int (*read)(void *ctx, uint64_t off, uint8_t *dst, uint32_t n);
    /* store n bytes of src at off */
    int (*write)(void *ctx, uint64_t off, const uint8_t *src, uint32_t n);
    /* make n bytes at off read as zeros */
    int (*zero)(void *ctx, uint64_t off, uint64_t n);
    /* make every earlier write durable */
    int (*flush)(void *ctx);
} sp_storage;

#endif
