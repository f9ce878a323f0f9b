/* sp_frame.h: the C core of the frame codec (docs/wire-protocol.md, section 1).
 *
 * Portable C99 with no allocation and no Python: the bridge-board firmware can
 * compile this same file. CRC32C uses the SSE4.2 instruction on x86-64 when the
 * CPU has it (checked once in sp_frame_init) and a slicing-by-8 table otherwise.
 *
 * COBS encoder state, fed in pieces (header, payload, trailer) without joining them:
 *
 *     dst: [code][b b b ... ][code][b b ...][code?]
 *           ^code_pos          one block: code = 1 + bytes in it (at most 254),
 *                              0xFF closes a block that carries no implicit zero
 */
#ifndef SP_FRAME_H
#define SP_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    unsigned char *dst;  /* output, room for sp_cobs_max(total) bytes */
    ptrdiff_t out;       /* bytes written so far, code bytes included */
    ptrdiff_t code_pos;  /* index of the open block's code byte */
    unsigned int code;   /* 1 + bytes in the open block */
} sp_cobs_enc;

/* frame check results (0 = a good frame) */
enum { SP_FRAME_OK = 0, SP_FRAME_COBS = 1, SP_FRAME_SHORT = 2, SP_FRAME_LARGE = 3, SP_FRAME_LENGTH = 4,
       SP_FRAME_CRC = 5 };

static uint32_t sp_crc_table[8][256];
static int sp_crc_hw_ok;

static inline uint32_t sp_crc_sw(uint32_t c, const unsigned char *p, ptrdiff_t n) {
    while (n >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
        lo ^= c;  /* little-endian load: byte 0 is the low byte, as the reflected CRC wants */
        c = sp_crc_table[7][lo & 0xFF] ^ sp_crc_table[6][(lo >> 8) & 0xFF] ^
            sp_crc_table[5][(lo >> 16) & 0xFF] ^ sp_crc_table[4][lo >> 24] ^
            sp_crc_table[3][hi & 0xFF] ^ sp_crc_table[2][(hi >> 8) & 0xFF] ^
            sp_crc_table[1][(hi >> 16) & 0xFF] ^ sp_crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n-- > 0) c = (c >> 8) ^ sp_crc_table[0][(c ^ *p++) & 0xFF];
    return c;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("sse4.2"))) static uint32_t sp_crc_hw(uint32_t c, const unsigned char *p, ptrdiff_t n) {
    uint64_t c64 = c;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c64 = __builtin_ia32_crc32di(c64, v);
        p += 8;
        n -= 8;
    }
    c = (uint32_t)c64;
    while (n-- > 0) c = __builtin_ia32_crc32qi(c, *p++);
    return c;
}
static int sp_crc_probe_hw(void) { __builtin_cpu_init(); return __builtin_cpu_supports("sse4.2"); }
#else
static uint32_t sp_crc_hw(uint32_t c, const unsigned char *p, ptrdiff_t n) { return sp_crc_sw(c, p, n); }
static int sp_crc_probe_hw(void) { return 0; }
#endif

/* fill the tables and probe the CPU; call once before anything else */
static void sp_frame_init(int allow_hw) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        sp_crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            sp_crc_table[t][i] = (sp_crc_table[t - 1][i] >> 8) ^ sp_crc_table[0][sp_crc_table[t - 1][i] & 0xFF];
    sp_crc_hw_ok = allow_hw && sp_crc_probe_hw();
}

/* 1 when sp_crc32c runs the SSE4.2 instruction, 0 for the table loop */
static inline int sp_crc_uses_hw(void) { return sp_crc_hw_ok; }

/* CRC32C continuing from crc (0 to start) */
static inline uint32_t sp_crc32c(uint32_t crc, const unsigned char *p, ptrdiff_t n) {
    uint32_t c = ~crc;
    c = sp_crc_hw_ok ? sp_crc_hw(c, p, n) : sp_crc_sw(c, p, n);
    return ~c;
}

static inline ptrdiff_t sp_cobs_max(ptrdiff_t n) { return n + n / 254 + 1; }

static inline void sp_cobs_begin(sp_cobs_enc *e, unsigned char *dst) {
    e->dst = dst;
    e->code_pos = 0;
    e->out = 1;
    e->code = 1;
}

static inline void sp_cobs_feed(sp_cobs_enc *e, const unsigned char *src, ptrdiff_t n) {
    ptrdiff_t i = 0;
    while (i < n) {
        const unsigned char *zero = (const unsigned char *)memchr(src + i, 0, (size_t)(n - i));
        ptrdiff_t stop = zero ? zero - src : n;
        while (i < stop) {
            ptrdiff_t take = 0xFF - (ptrdiff_t)e->code;  /* room left in the open block */
            if (take > stop - i) take = stop - i;
            memcpy(e->dst + e->out, src + i, (size_t)take);
            e->out += take;
            e->code += (unsigned int)take;
            i += take;
            if (e->code == 0xFF) {  /* a full block carries no implicit zero */
                e->dst[e->code_pos] = 0xFF;
                e->code_pos = e->out++;
                e->code = 1;
            }
        }
        if (zero) {  /* the zero closes the open block */
            e->dst[e->code_pos] = (unsigned char)e->code;
            e->code_pos = e->out++;
            e->code = 1;
            i++;
        }
    }
}

/* close the last block; the encoded length, delimiter not included */
static inline ptrdiff_t sp_cobs_end(sp_cobs_enc *e) {
    e->dst[e->code_pos] = (unsigned char)e->code;
    return e->out;
}

/* decode n bytes into dst (room for n); the decoded length, or -1 - index of the bad byte */
static inline ptrdiff_t sp_cobs_decode(const unsigned char *src, ptrdiff_t n, unsigned char *dst) {
    ptrdiff_t i = 0, out = 0;
    while (i < n) {
        unsigned int code = src[i];
        const unsigned char *zero;
        if (code == 0 || i + (ptrdiff_t)code > n) return -1 - i;
        zero = (const unsigned char *)memchr(src + i + 1, 0, code - 1);
        if (zero) return -1 - (zero - src);
        memcpy(dst + out, src + i + 1, code - 1);
        out += code - 1;
        i += code;
        if (code != 0xFF && i < n) dst[out++] = 0;
    }
    return out;
}

static inline uint32_t sp_le32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline void sp_put_le32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static inline void sp_put_header(unsigned char *h, unsigned int version, unsigned int type, unsigned int flags,
                                 uint32_t seq, uint32_t length) {
    h[0] = (unsigned char)version;
    h[1] = (unsigned char)type;
    h[2] = (unsigned char)flags;
    h[3] = (unsigned char)(flags >> 8);
    sp_put_le32(h + 4, seq);
    sp_put_le32(h + 8, length);
}

/* COBS-encode header | payload | crc into dst (room for sp_cobs_max(n + 16) + 1); the wire length */
static inline ptrdiff_t sp_frame_encode(unsigned char *dst, unsigned int version, unsigned int type,
                                        unsigned int flags, uint32_t seq, const unsigned char *payload,
                                        ptrdiff_t n) {
    unsigned char head[12], tail[4];
    sp_cobs_enc e;
    uint32_t crc;
    ptrdiff_t size;
    sp_put_header(head, version, type, flags, seq, (uint32_t)n);
    crc = sp_crc32c(0, head, 12);
    if (n) crc = sp_crc32c(crc, payload, n);
    sp_put_le32(tail, crc);
    sp_cobs_begin(&e, dst);
    sp_cobs_feed(&e, head, 12);
    if (n) sp_cobs_feed(&e, payload, n);
    sp_cobs_feed(&e, tail, 4);
    size = sp_cobs_end(&e);
    dst[size] = 0;
    return size + 1;
}

/* decode and check one chunk (no delimiter) into dst (room for n); SP_FRAME_OK or the failure.
 * *got receives the decoded length; *detail the bad byte (COBS), the header length
 * (LARGE, LENGTH) or the computed CRC (CRC). */
static inline int sp_frame_check(const unsigned char *src, ptrdiff_t n, ptrdiff_t max_payload, unsigned char *dst,
                                 ptrdiff_t *got, ptrdiff_t *detail) {
    ptrdiff_t m = sp_cobs_decode(src, n, dst);
    uint32_t length, crc;
    if (m < 0) {
        *detail = -1 - m;
        return SP_FRAME_COBS;
    }
    *got = m;
    if (m < 16) return SP_FRAME_SHORT;
    length = sp_le32(dst + 8);
    *detail = (ptrdiff_t)length;
    if ((ptrdiff_t)length > max_payload) return SP_FRAME_LARGE;
    if ((ptrdiff_t)length != m - 16) return SP_FRAME_LENGTH;
    crc = sp_crc32c(0, dst, m - 4);
    *detail = (ptrdiff_t)crc;
    return crc == sp_le32(dst + m - 4) ? SP_FRAME_OK : SP_FRAME_CRC;
}

#endif /* SP_FRAME_H */
