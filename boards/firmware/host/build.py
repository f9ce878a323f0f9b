"""cffi builder of the firmware core as an in-process board: ``splitpoint.boards.firmware._cboard``.

Owns the host build's limits (the -D overrides of core/sp_config.h) and the
declarations Python may call. setup.py builds it with the other extensions;
``python boards/firmware/host/build.py`` builds it in place on its own.
"""
import glob
import os

import cffi

HERE = os.path.dirname(os.path.abspath(__file__))
CORE = os.path.join(os.path.dirname(HERE), "core")

#: the host build's compile-time limits: the largest board definitions of boards/ fit
LIMITS = {"SP_WINDOW_MAX": "32u", "SP_MAX_TRANSFER_MAX": "65536u", "SP_MAX_CHUNKS": "65536u", "SP_POOL_MAX": "8u",
          "SP_COPY_BYTES": "65536u"}

CDEF = """
typedef struct sp_storage sp_storage;
typedef struct sp_board sp_board;
typedef void (*sp_tx_fn)(void *ctx, int channel, const uint8_t *p, size_t n);
typedef struct {
    const char *board_id; uint32_t firmware; uint32_t features; uint16_t window; uint32_t max_transfer;
    uint32_t block_size; uint64_t capacity; uint32_t chunk_size; uint32_t pool_members; sp_tx_fn tx; void *tx_ctx;
} sp_board_config;
typedef struct {
    uint64_t trigger_id; uint32_t seq; uint32_t epoch; uint32_t digest; uint8_t label_len; char label[65];
} sp_manifest;
typedef struct { uint8_t *mem; uint64_t size; uint64_t fail_at; uint32_t writes; uint32_t flushes; } sp_host_ram;

size_t sp_board_size(void);
size_t sp_storage_size(void);
int sp_board_init(sp_board *b, const sp_board_config *cfg, const sp_storage *st);
void sp_board_data_in(sp_board *b, const uint8_t *p, size_t n);
void sp_board_control_in(sp_board *b, const uint8_t *p, size_t n);
void sp_board_data_reset(sp_board *b);
uint32_t sp_board_backup_count(const sp_board *b);
int sp_board_backup_info(const sp_board *b, uint32_t k, sp_manifest *out, uint32_t *member);
int sp_board_backup_read(sp_board *b, uint64_t trigger_id, uint64_t offset, uint8_t *dst, uint32_t n);
size_t sp_board_status(sp_board *b, char *out, size_t cap);
void sp_host_ram_storage(sp_storage *st, sp_host_ram *ram, int zeroed);

uint32_t sp_crc32c(uint32_t crc, const uint8_t *data, size_t n);
size_t sp_cobs_encode(const uint8_t *src, size_t n, uint8_t *dst, size_t cap);
int sp_cobs_decode(const uint8_t *src, size_t n, uint8_t *dst, size_t cap, size_t *out_n);
int sp_host_decode_wire(const uint8_t *wire, size_t n, uint32_t max_payload, uint8_t *out, size_t cap,
                        size_t *out_n);
size_t sp_frame_encode(uint8_t version, uint8_t type, uint16_t flags, uint32_t seq, const uint8_t *payload,
                       uint32_t length, uint8_t *scratch, size_t cap_scratch, uint8_t *dst, size_t cap);
int sp_host_message_check(const uint8_t *raw, size_t n);

extern "Python" void sp_host_tx(void *ctx, int channel, const uint8_t *p, size_t n);
"""

# helpers only the host needs: sizes for allocation, and the decoders as one call each for the codec tests
SOURCE = r"""
#include "sp_board.h"
#include "sp_host.h"
#include "sp_message.h"

static void sp_host_tx(void *ctx, int channel, const uint8_t *p, size_t n);

size_t sp_storage_size(void) { return sizeof(sp_storage); }

/* decode one wire chunk (no delimiter) into out (header|payload|crc); an sp_frame_status */
int sp_host_decode_wire(const uint8_t *wire, size_t n, uint32_t max_payload, uint8_t *out, size_t cap,
                        size_t *out_n)
{
    if (n > SP_COBS_MAX((size_t)max_payload + SP_FRAME_OVERHEAD))
        return SP_FRAME_TOO_LARGE;
    int st = sp_cobs_decode(wire, n, out, cap, out_n);
    if (st != SP_FRAME_OK)
        return st;
    sp_frame f;
    return sp_frame_check(out, *out_n, max_payload, &f);
}

/* the message-layer error code of a checked raw frame (0: well-formed) */
int sp_host_message_check(const uint8_t *raw, size_t n)
{
    sp_frame f;
    if (sp_frame_check(raw, n, SP_MAX_PAYLOAD, &f) != SP_FRAME_OK)
        return -1;
    return sp_message_check(&f, 0);
}
"""

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "splitpoint.boards.firmware._cboard",
    SOURCE,
    sources=[os.path.relpath(p) for p in sorted(glob.glob(os.path.join(CORE, "*.c"))) + [os.path.join(HERE, "sp_host.c")]],
    include_dirs=[CORE, HERE],
    define_macros=list(LIMITS.items()),
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(HERE, "..", "..", "..", "build", "cffi"), verbose=False)
