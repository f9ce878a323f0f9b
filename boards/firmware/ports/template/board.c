/* A do-nothing port: every hook a port supplies, each with what it must do. Copy this folder to
 * ports/<your-board>/, fill in the hooks, add a startup file and a linker script (see lm3s6965evb).
 * It compiles on the host as it is (tests/test_firmware_board.py builds it), but does nothing. */
#include <stddef.h>
#include <stdint.h>

#include "sp_board.h"

/* transmit n bytes on a channel (SP_CHANNEL_DATA: the wire protocol; SP_CHANNEL_CONTROL: text lines);
 * may block until they are out, never drop them silently */
static void port_tx(void *ctx, int channel, const uint8_t *p, size_t n)
{
    (void)ctx, (void)channel, (void)p, (void)n;
}

/* the medium: read n bytes at off (off + n <= size is checked by the core); 0 on success */
static int port_read(void *ctx, uint64_t off, uint8_t *dst, uint32_t n)
{
    (void)ctx, (void)off, (void)dst, (void)n;
    return -1;
}

/* store n bytes at off; 0 on success */
static int port_write(void *ctx, uint64_t off, const uint8_t *src, uint32_t n)
{
    (void)ctx, (void)off, (void)src, (void)n;
    return -1;
}

/* make n bytes at off read as zeros (TRIM and WRITE_ZEROES); 0 on success */
static int port_zero(void *ctx, uint64_t off, uint64_t n)
{
    (void)ctx, (void)off, (void)n;
    return -1;
}

/* make every earlier write durable (an SD card's cache, a flash page buffer); 0 on success */
static int port_flush(void *ctx)
{
    (void)ctx;
    return 0;
}

/* bytes the receivers queued since the last call (an interrupt handler only queues; it never
 * calls the core); their count */
static size_t port_take(int channel, uint8_t *buf, size_t cap)
{
    (void)channel, (void)buf, (void)cap;
    return 0;
}

static sp_board board; /* static: the core never allocates, and neither should a port */

int port_main(void)
{
    static const sp_storage storage = {0, 0 /* medium bytes: (pool_members + 1) * capacity */, 0,
                                       port_read, port_write, port_zero, port_flush};
    const sp_board_config cfg = {
        .board_id = "my-board", .firmware = 0x010000u,
        .features = SP_FEAT_FLUSH | SP_FEAT_TRIM | SP_FEAT_FUA | SP_FEAT_TRIGGER | SP_FEAT_CONTROL,
        .window = SP_WINDOW_MAX, .max_transfer = SP_MAX_TRANSFER_MAX, .block_size = 512u,
        .capacity = 0, .chunk_size = 4096u, .pool_members = 1, .tx = port_tx, .tx_ctx = 0,
    };
    if (sp_board_init(&board, &cfg, &storage) != 0)
        return -1; /* the configuration does not fit the limits of sp_config.h or the medium */
    for (;;) {
        uint8_t buf[64];
        size_t n = port_take(SP_CHANNEL_DATA, buf, sizeof buf);
        if (n)
            sp_board_data_in(&board, buf, n);
        n = port_take(SP_CHANNEL_CONTROL, buf, sizeof buf);
        if (n)
            sp_board_control_in(&board, buf, n);
        /* nothing to do: sleep until a receiver has a byte */
    }
}
