/* Compile-time limits of the bridge-board firmware.
 *
 * Every static buffer of the core is sized from these macros; a port (or the
 * host build) overrides them with -D before including any core header. The
 * runtime configuration (sp_board_config) may only choose values up to them.
 */
#ifndef SP_CONFIG_H
#define SP_CONFIG_H

#ifndef SP_WINDOW_MAX
#define SP_WINDOW_MAX 8u /* requests buffered and replies cached; a power of two up to 32 (NAK bitmap width) */
#endif

#ifndef SP_MAX_TRANSFER_MAX
#define SP_MAX_TRANSFER_MAX 16384u /* largest READ length or WRITE data the board accepts */
#endif

#ifndef SP_MAX_CHUNKS
#define SP_MAX_CHUNKS 4096u /* dirty-tracking chunks of the primary (capacity / chunk_size) */
#endif

#ifndef SP_POOL_MAX
#define SP_POOL_MAX 4u /* backup regions in the pool */
#endif

#ifndef SP_RING_SLOTS
#define SP_RING_SLOTS 8u /* sequenced request ring entries; a power of two */
#endif

#ifndef SP_COPY_BYTES
#define SP_COPY_BYTES 4096u /* bounce buffer of a resync or digest step */
#endif

#ifndef SP_CONTROL_LINE_MAX
#define SP_CONTROL_LINE_MAX 256u /* bytes of one control-channel line without its newline */
#endif

#ifndef SP_CONTROL_OUT_MAX
#define SP_CONTROL_OUT_MAX 512u /* buffer a control-channel answer streams through (STATUS may be longer) */
#endif

#define SP_LABEL_MAX 64u      /* TRIGGER label bytes (protocol limit) */
#define SP_ERROR_TEXT_MAX 128u /* ERROR message bytes (protocol limit) */
#define SP_BOARD_ID_MAX 32u   /* board id bytes in INFO's reply (protocol limit) */
#define SP_PROTOCOL_WINDOW_MAX 32u

/* a board's frame limit is max_transfer + 64 (the message fields) */
#define SP_MAX_PAYLOAD (SP_MAX_TRANSFER_MAX + 64u)

_Static_assert(SP_WINDOW_MAX >= 1u && SP_WINDOW_MAX <= SP_PROTOCOL_WINDOW_MAX, "SP_WINDOW_MAX must be 1..32");
_Static_assert((SP_WINDOW_MAX & (SP_WINDOW_MAX - 1u)) == 0u, "SP_WINDOW_MAX must be a power of two (slot index)");
_Static_assert((SP_RING_SLOTS & (SP_RING_SLOTS - 1u)) == 0u, "SP_RING_SLOTS must be a power of two");
_Static_assert(SP_POOL_MAX >= 1u, "the pool needs at least one region");
_Static_assert(SP_COPY_BYTES >= 512u, "the copy buffer holds at least one block");
_Static_assert(SP_CONTROL_OUT_MAX >= 128u, "a control answer buffer holds at least a short answer");

#endif
