/* The board's side of a wire-protocol session, transport-free: frames in, replies out.
 *
 * Owns the handshake, in-order execution within the window, the reorder
 * buffer, the reply cache that answers a duplicate without running it again,
 * and NAKs (docs/wire-protocol.md, section 3). It never touches a UART, a
 * clock or the medium: in-order requests go to `execute`, replies to `send`.
 *
 * Slots: the reorder buffer and the reply cache are arrays of SP_WINDOW_MAX
 * slots indexed by seq mod SP_WINDOW_MAX (a power of two, so the index stays
 * consecutive across the wrap of seq at 2^32). Only seqs in one window
 * (window <= SP_WINDOW_MAX) can be live at once:
 *
 *        replies (cached)          buffered (waiting)
 *   ... [e-w ........ e-1]  e  [e+1 ........ e+w-1] ...     e = expected, w = window
 *                           ^ executes next
 *
 * so w consecutive seqs never share a slot, and a slot's stored seq tells a
 * live entry from a stale one.
 */
#ifndef SP_SESSION_H
#define SP_SESSION_H

#include <stdint.h>

#include "sp_config.h"
#include "sp_frame.h"
#include "sp_message.h"

/* one request waiting for the gap before it to fill */
typedef struct {
    uint8_t used;     /* slot holds a request */
    uint8_t version;  /* header fields */
    uint8_t type;
    uint16_t flags;
    uint32_t seq;
    uint32_t length;  /* payload bytes */
    uint8_t payload[SP_MAX_PAYLOAD];
} sp_buffered;

/* run one in-order, well-formed request and fill its reply */
typedef void (*sp_execute_fn)(void *ctx, const sp_frame *req, sp_reply *reply);
/* put one reply on the line */
typedef void (*sp_send_fn)(void *ctx, const sp_reply *reply);
/* write INFO's ACK body (board info, board id) into body; its length */
typedef uint32_t (*sp_info_fn)(void *ctx, uint8_t *body, uint32_t cap);

typedef struct {
    uint32_t executed, naks, replays, stale, window, duplicates_buffered, sessions, resumes;
    uint32_t bad_messages, ignored, rejected_frames, no_session;
} sp_session_stats;

typedef struct {
    uint16_t window;          /* requests buffered and replies cached (1..SP_WINDOW_MAX) */
    uint8_t has_session;      /* an INFO handshake happened */
    uint8_t has_nak_for;      /* a NAK was sent for the gap at nak_for */
    uint32_t session;         /* the session held */
    uint32_t expected;        /* next seq to execute */
    uint32_t nak_for;         /* expected when the last gap NAK went out */
    sp_execute_fn execute;    /* the board's executor */
    sp_send_fn send;          /* the board's transmitter */
    sp_info_fn info;          /* the board's INFO body */
    void *ctx;                /* passed to the three */
    sp_session_stats stats;   /* counters (STATUS) */
    sp_reply out;             /* a reply that is not cached (INFO, STALE, WINDOW, NO_SESSION, NAK) */
    sp_buffered buffered[SP_WINDOW_MAX]; /* the reorder buffer */
    sp_reply replies[SP_WINDOW_MAX];     /* the reply cache */
} sp_session;

/* start without a session; window is clamped to 1..SP_WINDOW_MAX */
void sp_session_init(sp_session *s, uint16_t window, sp_execute_fn execute, sp_send_fn send, sp_info_fn info,
                     void *ctx);
/* handle one decoded frame */
void sp_session_frame(sp_session *s, const sp_frame *f);
/* a frame failed its COBS, length or CRC check: NAK what is missing (once a session exists) */
void sp_session_rejected(sp_session *s);

#endif
