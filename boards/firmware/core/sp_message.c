/* Message checks and reply builders (see sp_message.h). */
#include "sp_message.h"

#include <string.h>

int sp_utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t extra;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            extra = 1; cp = c & 0x1Fu;
        } else if (c >= 0xE0 && c <= 0xEF) {
            extra = 2; cp = c & 0x0Fu;
        } else if (c >= 0xF0 && c <= 0xF4) {
            extra = 3; cp = c & 0x07u;
        } else {
            return 0;
        }
        if (n - i <= extra)
            return 0;
        for (size_t k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xC0u) != 0x80u)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3Fu);
        }
        if ((extra == 2 && cp < 0x800u) || (extra == 3 && cp < 0x10000u) || cp > 0x10FFFFu ||
            (cp >= 0xD800u && cp <= 0xDFFFu))
            return 0;
        i += extra + 1u;
    }
    return 1;
}

static int known_type(uint8_t t)
{
    return (t >= SP_MSG_INFO && t <= SP_MSG_BACKUP_READ) || (t >= SP_MSG_ACK && t <= SP_MSG_NAK);
}

int sp_message_check(const sp_frame *f, const char **why)
{
    const char *dummy;
    if (!why)
        why = &dummy;
    if (f->version < SP_PROTOCOL_MIN || f->version > SP_PROTOCOL_VERSION) {
        *why = "frame version outside 1..1";
        return SP_ERR_UNSUPPORTED_VERSION;
    }
    if (!known_type(f->type)) {
        *why = "unknown message type";
        return SP_ERR_UNKNOWN_TYPE;
    }
    if (f->flags & ~sp_allowed_flags(f->type)) {
        *why = "flags not allowed for this type";
        return SP_ERR_BAD_PAYLOAD;
    }
    uint32_t n = f->length;
    switch (f->type) {
    case SP_MSG_INFO:
        *why = "INFO payload must be 8 bytes";
        return n == sizeof(sp_wire_info) ? SP_ERR_NONE : SP_ERR_BAD_PAYLOAD;
    case SP_MSG_READ:
    case SP_MSG_TRIM:
        *why = "READ/TRIM payload must be 12 bytes";
        return n == sizeof(sp_wire_range) ? SP_ERR_NONE : SP_ERR_BAD_PAYLOAD;
    case SP_MSG_WRITE:
        *why = "WRITE payload must hold an 8-byte offset";
        return n >= 8u ? SP_ERR_NONE : SP_ERR_BAD_PAYLOAD;
    case SP_MSG_FLUSH:
        *why = "FLUSH payload must be empty";
        return n == 0 ? SP_ERR_NONE : SP_ERR_BAD_PAYLOAD;
    case SP_MSG_BACKUPS:
        *why = "BACKUPS payload must be empty";
        return n == 0 ? SP_ERR_NONE : SP_ERR_BAD_PAYLOAD;
    case SP_MSG_BACKUP_READ:
        *why = "BACKUP_READ payload must be 20 bytes";
        return n == sizeof(sp_wire_backup_read) ? SP_ERR_NONE : SP_ERR_BAD_PAYLOAD;
    case SP_MSG_TRIGGER:
        if (n < 8u) {
            *why = "TRIGGER payload must hold an 8-byte id";
            return SP_ERR_BAD_PAYLOAD;
        }
        if (n - 8u > SP_LABEL_MAX) {
            *why = "TRIGGER label is longer than 64 bytes";
            return SP_ERR_BAD_PAYLOAD;
        }
        *why = "TRIGGER label is not UTF-8";
        return sp_utf8_valid(f->payload + 8, n - 8u) ? SP_ERR_NONE : SP_ERR_BAD_PAYLOAD;
    default:
        /* replies travelling the wrong way are never answered; their layout does not matter here */
        *why = "a reply type";
        return SP_ERR_NONE;
    }
}

void sp_reply_ack(sp_reply *r, uint32_t seq, uint8_t of, const uint8_t *body, uint32_t n)
{
    r->type = SP_MSG_ACK;
    r->flags = 0;
    r->seq = seq;
    r->payload[0] = of;
    if (n > SP_REPLY_PAYLOAD_MAX - 1u)
        n = SP_REPLY_PAYLOAD_MAX - 1u;
    if (n && body != r->payload + 1)
        memmove(r->payload + 1, body, n);
    r->length = 1u + n;
}

void sp_reply_error(sp_reply *r, uint32_t seq, uint8_t of, uint16_t code, const char *text)
{
    size_t n = strlen(text);
    if (n > SP_ERROR_TEXT_MAX) {
        n = SP_ERROR_TEXT_MAX;
        while (n && ((uint8_t)text[n] & 0xC0u) == 0x80u) /* never cut a character */
            n--;
    }
    r->type = SP_MSG_ERROR;
    r->flags = 0;
    r->seq = seq;
    r->payload[0] = of;
    sp_put16(r->payload + 1, code);
    memcpy(r->payload + 3, text, n);
    r->length = 3u + (uint32_t)n;
}

void sp_reply_nak(sp_reply *r, uint32_t expected, uint32_t received)
{
    r->type = SP_MSG_NAK;
    r->flags = 0;
    r->seq = 0;
    sp_put32(r->payload, expected);
    sp_put32(r->payload + 4, received);
    r->length = 8;
}
