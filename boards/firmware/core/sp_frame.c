/* Frame layer: CRC32C, COBS, header/trailer checks and the streaming decoder (see sp_frame.h). */
#include "sp_frame.h"

#include <string.h>

/* reflected Castagnoli polynomial 0x1EDC6F41 */
#define SP_CRC32C_POLY 0x82F63B78u

static uint32_t crc_table[256];
static int crc_ready;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256u; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1u) ? (c >> 1) ^ SP_CRC32C_POLY : c >> 1;
        crc_table[i] = c;
    }
    crc_ready = 1;
}

uint32_t sp_crc32c(uint32_t crc, const uint8_t *data, size_t n)
{
    if (!crc_ready)
        crc_init();
    crc = ~crc;
    for (size_t i = 0; i < n; i++)
        crc = crc_table[(crc ^ data[i]) & 0xFFu] ^ (crc >> 8);
    return ~crc;
}

size_t sp_cobs_encode(const uint8_t *src, size_t n, uint8_t *dst, size_t cap)
{
    if (cap < SP_COBS_MAX(n))
        return 0;
    size_t out = 0, i = 0;
    /* each segment (the bytes up to a zero, or to the end) is blocks of 254 then one final block */
    for (;;) {
        size_t seg = i;
        while (seg < n && src[seg] != 0)
            seg++;
        size_t len = seg - i;
        while (len >= 254u) {
            dst[out++] = 0xFF;
            memcpy(dst + out, src + i, 254u);
            out += 254u;
            i += 254u;
            len -= 254u;
        }
        dst[out++] = (uint8_t)(len + 1u);
        memcpy(dst + out, src + i, len);
        out += len;
        i += len;
        if (i >= n)
            break;
        i++; /* the zero that ended the segment */
    }
    return out;
}

int sp_cobs_decode(const uint8_t *src, size_t n, uint8_t *dst, size_t cap, size_t *out_n)
{
    size_t i = 0, out = 0;
    while (i < n) {
        uint8_t code = src[i];
        if (code == 0)
            return SP_FRAME_COBS;
        size_t end = i + code;
        if (end > n)
            return SP_FRAME_COBS;
        size_t len = (size_t)code - 1u;
        if (out + len + 1u > cap)
            return SP_FRAME_TOO_LARGE;
        for (size_t k = 0; k < len; k++) {
            uint8_t b = src[i + 1u + k];
            if (b == 0)
                return SP_FRAME_COBS;
            dst[out++] = b;
        }
        i = end;
        if (code != 0xFF && i < n)
            dst[out++] = 0;
    }
    *out_n = out;
    return SP_FRAME_OK;
}

int sp_frame_check(const uint8_t *raw, size_t n, uint32_t max_payload, sp_frame *f)
{
    if (n < SP_FRAME_OVERHEAD)
        return SP_FRAME_SHORT;
    uint32_t length = sp_get32(raw + 8);
    if (length > max_payload)
        return SP_FRAME_TOO_LARGE;
    if ((size_t)length != n - SP_FRAME_OVERHEAD)
        return SP_FRAME_LENGTH;
    if (sp_get32(raw + n - SP_TRAILER_SIZE) != sp_crc32c(0, raw, n - SP_TRAILER_SIZE))
        return SP_FRAME_CRC;
    f->version = raw[0];
    f->type = raw[1];
    f->flags = sp_get16(raw + 2);
    f->seq = sp_get32(raw + 4);
    f->length = length;
    f->payload = raw + SP_HEADER_SIZE;
    return SP_FRAME_OK;
}

size_t sp_frame_encode(uint8_t version, uint8_t type, uint16_t flags, uint32_t seq, const uint8_t *payload,
                       uint32_t length, uint8_t *scratch, size_t cap_scratch, uint8_t *dst, size_t cap)
{
    size_t raw_n = (size_t)length + SP_FRAME_OVERHEAD;
    if (raw_n < length || raw_n > cap_scratch)
        return 0;
    scratch[0] = version;
    scratch[1] = type;
    sp_put16(scratch + 2, flags);
    sp_put32(scratch + 4, seq);
    sp_put32(scratch + 8, length);
    if (length)
        memmove(scratch + SP_HEADER_SIZE, payload, length);
    sp_put32(scratch + SP_HEADER_SIZE + length, sp_crc32c(0, scratch, SP_HEADER_SIZE + (size_t)length));
    if (cap < 1u)
        return 0;
    size_t n = sp_cobs_encode(scratch, raw_n, dst, cap - 1u);
    if (n == 0)
        return 0;
    dst[n] = 0;
    return n + 1u;
}

void sp_decoder_init(sp_decoder *d, uint32_t max_payload)
{
    memset(d, 0, offsetof(sp_decoder, wire));
    if (max_payload > SP_MAX_PAYLOAD)
        max_payload = SP_MAX_PAYLOAD;
    d->max_payload = max_payload;
    d->max_wire = SP_COBS_MAX(max_payload + SP_FRAME_OVERHEAD);
}

void sp_decoder_reset(sp_decoder *d)
{
    d->fill = 0;
    d->skipping = 0;
}

static int reject(sp_decoder *d, int status, uint32_t nbytes)
{
    d->rejected++;
    d->garbage_bytes += nbytes;
    d->errors[status]++;
    return status;
}

int sp_decoder_push(sp_decoder *d, const uint8_t *p, size_t n, size_t *used, sp_frame *f)
{
    size_t i = 0;
    while (i < n) {
        const uint8_t *z = memchr(p + i, 0, n - i);
        size_t run = (z ? (size_t)(z - p) : n) - i; /* bytes before the next delimiter */
        if (d->skipping) {
            d->garbage_bytes += (uint32_t)run;
        } else if (run > d->max_wire - d->fill) {
            /* no delimiter within the largest legal frame: discard up to the next one */
            d->garbage_bytes += d->fill + (uint32_t)run;
            d->fill = 0;
            d->skipping = 1;
            *used = i + run;
            return reject(d, SP_FRAME_TOO_LARGE, 0);
        } else {
            memcpy(d->wire + d->fill, p + i, run);
            d->fill += (uint32_t)run;
        }
        i += run;
        if (!z)
            break;
        i++; /* the delimiter */
        if (d->skipping) {
            d->skipping = 0;
            continue;
        }
        uint32_t chunk = d->fill;
        d->fill = 0;
        if (chunk == 0)
            continue; /* idle delimiter */
        size_t raw_n = 0;
        int st = sp_cobs_decode(d->wire, chunk, d->raw, sizeof d->raw, &raw_n);
        if (st == SP_FRAME_OK)
            st = sp_frame_check(d->raw, raw_n, d->max_payload, f);
        *used = i;
        if (st != SP_FRAME_OK)
            return reject(d, st, chunk);
        d->frames++;
        return SP_FRAME_OK;
    }
    *used = i;
    return -1;
}
