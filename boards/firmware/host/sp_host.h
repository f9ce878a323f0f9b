/* The host port of the firmware core: a RAM medium over a caller's buffer, for the cffi build.
 *
 * Owns only the storage driver; the transmitter is the Python callback
 * sp_host_tx that the cffi module declares. Nothing here allocates.
 */
#ifndef SP_HOST_H
#define SP_HOST_H

#include <stdint.h>

#include "sp_board.h"

typedef struct {
    uint8_t *mem;          /* the medium's bytes (the caller owns them) */
    uint64_t size;         /* their count */
    uint64_t fail_at;      /* an access touching this byte fails (fault injection; UINT64_MAX: never) */
    uint32_t writes;       /* writes and zeroings done */
    uint32_t flushes;      /* flushes done */
} sp_host_ram;

/* fill st with a RAM driver over ram (mem, size set by the caller); the medium reads as zeros if zeroed */
void sp_host_ram_storage(sp_storage *st, sp_host_ram *ram, int zeroed);

#endif
