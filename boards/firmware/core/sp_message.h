/* Message layer of the wire protocol: checking a decoded frame's message and building replies.
 *
 * Owns the rules of docs/wire-protocol.md section 2 that need no state:
 * versions, known types, allowed flags, payload sizes, label text. It never
 * looks at sequence numbers or sessions (sp_session) or executes anything.
 */
#ifndef SP_MESSAGE_H
#define SP_MESSAGE_H

#include <stddef.h>
#include <stdint.h>

#include "sp_config.h"
#include "sp_frame.h"

/* the largest reply payload: ACK of READ (of + data), ERROR (of, code, text) or ACK of INFO */
#define SP_REPLY_PAYLOAD_MAX (1u + SP_MAX_TRANSFER_MAX > 3u + SP_ERROR_TEXT_MAX ? 1u + SP_MAX_TRANSFER_MAX \
                              : 3u + SP_ERROR_TEXT_MAX)
_Static_assert(SP_REPLY_PAYLOAD_MAX >= 1u + sizeof(sp_wire_board_info) + SP_BOARD_ID_MAX, "INFO's ACK fits");

/* one reply message before framing */
typedef struct sp_reply {
    uint8_t used;     /* slot holds a reply (reply cache) */
    uint8_t type;     /* SP_MSG_ACK, SP_MSG_ERROR or SP_MSG_NAK */
    uint16_t flags;   /* header flags */
    uint32_t seq;     /* the request's seq */
    uint32_t length;  /* payload bytes */
    uint8_t payload[SP_REPLY_PAYLOAD_MAX]; /* the payload */
} sp_reply;

/* 0 when f carries a well-formed message, else its protocol error code; *why names the reason */
int sp_message_check(const sp_frame *f, const char **why);

/* non-zero when n bytes at s are well-formed UTF-8 (no overlongs, surrogates or values past U+10FFFF) */
int sp_utf8_valid(const uint8_t *s, size_t n);

/* fill r with an ACK of request type `of` and n body bytes (body may be NULL when n is 0) */
void sp_reply_ack(sp_reply *r, uint32_t seq, uint8_t of, const uint8_t *body, uint32_t n);
/* fill r with an ERROR of request type `of`; text is cut to 128 bytes at a character boundary */
void sp_reply_error(sp_reply *r, uint32_t seq, uint8_t of, uint16_t code, const char *text);
/* fill r with a NAK */
void sp_reply_nak(sp_reply *r, uint32_t expected, uint32_t received);

#endif
