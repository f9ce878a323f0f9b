/* A mutational fuzzer of the firmware core's parsers, built with AddressSanitizer and UBSan.
 *
 * Owns generating inputs (well-formed frames of every type, then mutated: bit flips, random bytes,
 * insertions, deletions, truncations, stray delimiters, splices; raw noise; control lines) and two
 * oracles besides the sanitizers: every byte the board sends on the data channel decodes as a valid
 * frame, and after each input the control channel holds whole lines only. Usage:
 * fuzz [iterations] [seed]; it prints its counts and exits non-zero on the first broken oracle (a
 * sanitizer aborts by itself).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sp_board.h"
#include "sp_host.h"

#define CAPACITY (64u * 1024u)
#define POOL 3u

static uint64_t rng_state = 88172645463325252ull;
static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}
static uint32_t below(uint32_t n) { return n ? rnd() % n : 0; }

static uint8_t medium[CAPACITY * (POOL + 1u)];
static sp_board board;
static sp_decoder check;          /* decodes the board's replies: the first oracle */
static unsigned long replies, control_answers, broken;

static uint8_t control_out[1u << 16]; /* the control channel's bytes since the last input */
static size_t control_fill;

static void tx(void *ctx, int channel, const uint8_t *p, size_t n)
{
    (void)ctx;
    if (channel == SP_CHANNEL_CONTROL) {
        if (n > sizeof control_out - control_fill) {
            fprintf(stderr, "control answers of more than %zu bytes for one input\n", sizeof control_out);
            broken++;
            return;
        }
        memcpy(control_out + control_fill, p, n);
        control_fill += n;
        return;
    }
    while (n) {
        sp_frame f;
        size_t used = 0;
        int st = sp_decoder_push(&check, p, n, &used, &f);
        if (st > 0) {
            fprintf(stderr, "the board sent a frame its own decoder rejects (status %d)\n", st);
            broken++;
        } else if (st == SP_FRAME_OK) {
            replies++;
        }
        p += used;
        n -= used;
    }
}

/* the second oracle: after each input the control channel holds whole lines only */
static void check_control(void)
{
    if (control_fill && control_out[control_fill - 1] != '\n') {
        fprintf(stderr, "a control answer was left without its line end\n");
        broken++;
    }
    for (size_t i = 0; i < control_fill; i++)
        control_answers += control_out[i] == '\n';
    control_fill = 0;
}

static uint8_t scratch[SP_MAX_PAYLOAD + SP_FRAME_OVERHEAD];
static uint8_t wire[SP_COBS_MAX(SP_MAX_PAYLOAD + SP_FRAME_OVERHEAD) + 64];
static uint8_t payload[SP_MAX_PAYLOAD];

/* a well-formed request of a random type, or a malformed one the message layer must refuse */
static size_t seed_frame(uint32_t seq)
{
    uint8_t type = (uint8_t)(1u + below(8));
    uint16_t flags = (uint16_t)(below(4) == 0 ? rnd() : (below(2) ? SP_FLAG_RETRANSMIT : 0));
    uint32_t n = 0;
    uint64_t off = below(8) == 0 ? ((uint64_t)rnd() << 32 | rnd()) : (uint64_t)below(CAPACITY / 512u + 2u) * 512u;
    switch (type) {
    case SP_MSG_INFO:
        sp_put32(payload, below(3) ? 0x1234u : rnd());
        sp_put32(payload + 4, below(2) ? seq : rnd());
        n = 8;
        break;
    case SP_MSG_READ:
    case SP_MSG_TRIM:
        sp_put64(payload, off);
        sp_put32(payload + 8, below(8) == 0 ? rnd() : (below(16) + 1u) * 512u);
        n = 12;
        break;
    case SP_MSG_WRITE:
        sp_put64(payload, off);
        n = 8u + (below(8) == 0 ? below(SP_MAX_TRANSFER_MAX + 64u) : (below(8) + 1u) * 512u);
        if (n > sizeof payload)
            n = sizeof payload;
        for (uint32_t i = 8; i < n; i++)
            payload[i] = (uint8_t)rnd();
        break;
    case SP_MSG_TRIGGER:
        sp_put64(payload, rnd());
        n = 8u + below(72);
        for (uint32_t i = 8; i < n; i++)
            payload[i] = (uint8_t)(below(4) ? 'a' + below(26) : rnd());
        break;
    case SP_MSG_BACKUP_READ: { /* half the time a backup the board holds */
        sp_manifest m;
        uint32_t member;
        uint32_t held = sp_board_backup_count(&board);
        uint64_t id = (held && below(2) && !sp_board_backup_info(&board, below(held), &m, &member))
                          ? m.trigger_id : (below(2) ? below(8) : ((uint64_t)rnd() << 32 | rnd()));
        sp_put64(payload, id);
        sp_put64(payload + 8, off);
        sp_put32(payload + 16, below(8) == 0 ? rnd() : (below(16) + 1u) * 512u);
        n = 20;
        break;
    }
    default:
        break;
    }
    if (below(16) == 0)
        type = (uint8_t)rnd(); /* unknown and reply types too */
    uint8_t version = below(16) == 0 ? (uint8_t)rnd() : 1u;
    return sp_frame_encode(version, type, flags, seq, payload, n, scratch, sizeof scratch, wire, sizeof wire);
}

static size_t mutate(size_t n)
{
    int rounds = (int)below(4);
    for (int r = 0; r < rounds && n; r++) {
        uint32_t at = below((uint32_t)n);
        switch (below(7)) {
        case 0: wire[at] ^= (uint8_t)(1u << below(8)); break;
        case 1: wire[at] = (uint8_t)rnd(); break;
        case 2: wire[at] = 0; break;                          /* a stray delimiter */
        case 3: n = at; break;                                /* truncated */
        case 4:                                               /* a byte deleted */
            memmove(wire + at, wire + at + 1, n - at - 1);
            n--;
            break;
        case 5:                                               /* a byte inserted */
            if (n < sizeof wire) {
                memmove(wire + at + 1, wire + at, n - at);
                wire[at] = (uint8_t)rnd();
                n++;
            }
            break;
        default: {                                            /* a piece of itself spliced in */
            uint32_t len = below((uint32_t)(n - at)) + 1u;
            if (n + len <= sizeof wire) {
                memmove(wire + at + len, wire + at, n - at);
                n += len;
            }
            break;
        }
        }
    }
    return n;
}

static void control_input(void)
{
    static const char *const lines[] = {"PING\n", "STATUS\n", "TRIGGER x\n", "TRIGGER ON a b\n", "trigger \xc2\xa0y\n",
                                        "VERIFY\n", "\r\n", "TRIGGER \xff\n"};
    char buf[600];
    size_t n;
    if (below(2)) {
        const char *l = lines[below(sizeof lines / sizeof lines[0])];
        n = strlen(l);
        memcpy(buf, l, n);
        for (int k = (int)below(3); k > 0; k--)
            buf[below((uint32_t)n)] = (char)rnd();
    } else {
        n = below(sizeof buf);
        for (size_t i = 0; i < n; i++)
            buf[i] = (char)(below(8) == 0 ? '\n' : rnd());
    }
    sp_board_control_in(&board, (const uint8_t *)buf, n);
    check_control();
}

/* the frame layer on its own: buffers exactly as large as the capacity passed, so a write past
 * the capacity is a write past the allocation and AddressSanitizer reports it */
static void fuzz_codec(void)
{
    static uint8_t raw[SP_MAX_PAYLOAD + SP_FRAME_OVERHEAD];
    size_t len = below(sizeof raw), n, out_n = 0;
    for (size_t i = 0; i < len; i++)
        raw[i] = (uint8_t)(below(4) ? rnd() : 0);
    size_t cap = below((uint32_t)SP_COBS_MAX(len) + 2u);
    uint8_t *dst = malloc(cap + 1u);
    n = sp_cobs_encode(raw, len, dst, cap);
    if (n)
        memcpy(wire, dst, n);
    free(dst);
    if (!n)
        return;
    n = mutate(n);
    cap = below((uint32_t)n + 2u);
    uint8_t *out = malloc(cap + 1u);
    if (sp_cobs_decode(wire, n, out, cap, &out_n) == SP_FRAME_OK) {
        sp_frame f;
        if (sp_frame_check(out, out_n, below(SP_MAX_PAYLOAD + 1u), &f) == SP_FRAME_OK)
            (void)sp_message_check(&f, 0);
    }
    free(out);
}

int main(int argc, char **argv)
{
    unsigned long iterations = argc > 1 ? strtoul(argv[1], 0, 10) : 100000ul;
    if (argc > 2)
        rng_state ^= strtoull(argv[2], 0, 10) * 0x9E3779B97F4A7C15ull;
    static sp_host_ram ram = {medium, sizeof medium, UINT64_MAX, 0, 0};
    static sp_storage storage;
    sp_host_ram_storage(&storage, &ram, 1);
    const sp_board_config cfg = {"fuzz", 0x010000u, 0x2Fu, 8, 4096u, 512u, CAPACITY, 4096u, POOL, tx, 0};
    if (sp_board_init(&board, &cfg, &storage)) {
        fprintf(stderr, "board refused the fuzz configuration\n");
        return 2;
    }
    sp_decoder_init(&check, SP_MAX_PAYLOAD);
    uint32_t seq = 1;
    unsigned long fed = 0;
    for (unsigned long it = 0; it < iterations && !broken; it++) {
        uint32_t what = below(100);
        if (what < 3) {
            fuzz_codec();
            continue;
        }
        if (what < 10) {
            control_input();
            continue;
        }
        if (what < 12)
            ram.fail_at = below(4) ? UINT64_MAX : below(sizeof medium);   /* the medium fails now and then */
        size_t n;
        if (what < 15) {
            n = below(256);
            for (size_t i = 0; i < n; i++)
                wire[i] = (uint8_t)rnd();
        } else {
            /* half the time the seq the board executes next, so requests run rather than wait in the window */
            n = mutate(seed_frame(below(2) ? board.session.expected : below(2) ? seq : rnd()));
            seq += below(3);
        }
        sp_board_data_in(&board, wire, n);
        fed += n;
    }
    printf("executions %lu bytes %lu frames %u rejected %u replies %lu control %lu triggers %u broken %lu\n",
           iterations, fed, board.rx.frames, board.rx.rejected, replies, control_answers, board.stats.triggers,
           broken);
    return broken ? 1 : 0;
}
