/* The control channel: one line in, one line out, in the controller's grammar.
 *
 * Owns splitting the channel's bytes into lines, answering each (TRIGGER,
 * STATUS and PING are carried out; VERIFY, PIN, UNPIN and RESTORE are known
 * and answered ERR; anything else is ERR), and the STATUS JSON. A TRIGGER
 * goes through the board's ring like every other request; nothing here
 * touches the pool or the data channel directly.
 */
#include <string.h>

#include "sp_board.h"

#define COMMANDS "TRIGGER [ON <lun|group>] [label], STATUS, VERIFY [name] [id], PING, PIN <backup>, " \
                 "UNPIN <backup>, RESTORE <backup> [ON <lun>]"

/* a text builder over a buffer. Without a sink it is bounded: what does not fit is dropped and
 * `overflow` says so. With a sink (the board) a full buffer is sent on the control channel and
 * reused, so an answer of any length streams through a buffer of SP_CONTROL_OUT_MAX bytes. */
typedef struct {
    char *p;
    size_t n, cap;
    int overflow;
    sp_board *sink;
    size_t sent;   /* bytes already sent to the sink */
} text;

static void put(text *t, const char *s, size_t n)
{
    while (t->sink && t->n + n >= t->cap) {
        size_t room = t->cap - 1u - t->n;
        memcpy(t->p + t->n, s, room);
        t->sink->cfg.tx(t->sink->cfg.tx_ctx, SP_CHANNEL_CONTROL, (const uint8_t *)t->p, t->n + room);
        t->sent += t->n + room;
        t->n = 0;
        s += room;
        n -= room;
    }
    if (t->n + n >= t->cap) {
        t->overflow = 1;
        n = t->cap > t->n + 1u ? t->cap - t->n - 1u : 0;
    }
    memcpy(t->p + t->n, s, n);
    t->n += n;
    t->p[t->n] = 0;
}

static void puts_(text *t, const char *s) { put(t, s, strlen(s)); }

/* decimal digits of v (no printf: the firmware links no stdio) */
static void putu(text *t, uint64_t v)
{
    char buf[20];
    size_t n = sizeof buf;
    do {
        buf[--n] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v);
    put(t, buf + n, sizeof buf - n);
}

/* `digits` lowercase hex digits of v */
static void putx(text *t, uint32_t v, int digits)
{
    char buf[8];
    for (int i = digits - 1; i >= 0; i--) {
        buf[i] = "0123456789abcdef"[v & 0xFu];
        v >>= 4;
    }
    put(t, buf, (size_t)digits);
}

/* a JSON string: quotes, backslashes and control characters escaped; UTF-8 passes through */
static void putjs(text *t, const char *s, size_t n)
{
    put(t, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            put(t, esc, 2);
        } else if (c < 0x20) {
            put(t, "\\u", 2);
            putx(t, c, 4);
        } else {
            put(t, (const char *)&c, 1);
        }
    }
    put(t, "\"", 1);
}

static void field(text *t, const char *name, unsigned long long v, int comma)
{
    if (comma)
        put(t, ", ", 2);
    putjs(t, name, strlen(name));
    put(t, ": ", 2);
    putu(t, v);
}

static const char *const state_name[] = {"empty", "active", "frozen", "inconsistent"};

static void status(sp_board *b, text *t_)
{
    text t = *t_;
    const sp_session *s = &b->session;
    const sp_pool *p = &b->pool;
    puts_(&t, "{\"board\": ");
    putjs(&t, b->board_id, strlen(b->board_id));
    puts_(&t, ", \"firmware\": \"c\", \"session\": ");
    if (s->has_session)
        putu(&t, s->session);
    else
        puts_(&t, "null");
    field(&t, "expected", s->expected, 1);
    field(&t, "triggers", b->stats.triggers, 1);
    field(&t, "missed_triggers", b->stats.missed_triggers, 1);
    field(&t, "frames", b->rx.frames, 1);
    field(&t, "rejected_frames", b->rx.rejected, 1);
    field(&t, "garbage_bytes", b->rx.garbage_bytes, 1);
    puts_(&t, ", \"stats\": {");
    field(&t, "executed", s->stats.executed, 0);
    field(&t, "naks", s->stats.naks, 1);
    field(&t, "replays", s->stats.replays, 1);
    field(&t, "stale", s->stats.stale, 1);
    field(&t, "window", s->stats.window, 1);
    field(&t, "sessions", s->stats.sessions, 1);
    field(&t, "resumes", s->stats.resumes, 1);
    field(&t, "bad_messages", s->stats.bad_messages, 1);
    field(&t, "io_errors", b->stats.io_errors, 1);
    puts_(&t, "}, \"pool\": {");
    field(&t, "members", p->members, 0);
    puts_(&t, ", \"active\": ");
    if (p->active >= 0)
        putu(&t, (unsigned)p->active);
    else
        puts_(&t, "null");
    field(&t, "epoch", p->epoch, 1);
    field(&t, "rotations", p->rotations, 1);
    field(&t, "resync_bytes", p->resync_bytes, 1);
    puts_(&t, ", \"states\": [");
    for (uint32_t i = 0; i < p->members; i++) {
        if (i)
            put(&t, ", ", 2);
        puts_(&t, "\"");
        puts_(&t, state_name[p->member[i].state & 3u]);
        puts_(&t, "\"");
    }
    puts_(&t, "]}, \"backups\": [");
    int first = 1;
    for (uint32_t i = 0; i < p->members; i++) {
        const sp_member *m = &p->member[i];
        if (m->state != SP_MEMBER_FROZEN)
            continue;
        puts_(&t, first ? "{" : ", {");
        first = 0;
        field(&t, "member", i, 0);
        field(&t, "trigger_id", m->manifest.trigger_id, 1);
        puts_(&t, ", \"label\": ");
        putjs(&t, m->manifest.label, m->manifest.label_len);
        field(&t, "seq", m->manifest.seq, 1);
        field(&t, "epoch", m->manifest.epoch, 1);
        puts_(&t, ", \"digest\": \"");
        putx(&t, m->manifest.digest, 8);
        puts_(&t, "\"");
        puts_(&t, "}");
    }
    puts_(&t, "]}");
    *t_ = t;
}

size_t sp_board_status(sp_board *b, char *out, size_t cap)
{
    text t = {out, 0, cap, 0, 0, 0};
    if (cap == 0)
        return 0;
    out[0] = 0;
    status(b, &t);
    return t.overflow ? 0 : t.n; /* never half a JSON document */
}

/* whitespace as the controller's grammar trims it (Python's str.strip: Unicode White_Space and the
 * ASCII separators 0x1C-0x1F) */
static int is_space_cp(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

/* the code point starting at s (valid UTF-8, s < e) and its byte count */
static uint32_t cp_at(const char *s, const char *e, size_t *len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t n = u[0] < 0x80 ? 1 : u[0] < 0xE0 ? 2 : u[0] < 0xF0 ? 3 : 4;
    if ((size_t)(e - s) < n)
        n = 1;
    uint32_t c = n == 1 ? u[0] : u[0] & (0x7Fu >> n);
    for (size_t i = 1; i < n; i++)
        c = c << 6 | (u[i] & 0x3Fu);
    *len = n;
    return c;
}

static const char *skip_space(const char *s, const char *e)
{
    size_t n;
    while (s < e && is_space_cp(cp_at(s, e, &n)))
        s += n;
    return s;
}

static const char *trim_space_end(const char *s, const char *e)
{
    while (e > s) {
        const char *c = e - 1;
        while (c > s && ((unsigned char)*c & 0xC0u) == 0x80u) /* back to the character's first byte */
            c--;
        size_t n;
        if (!is_space_cp(cp_at(c, e, &n)))
            break;
        e = c;
    }
    return e;
}

static int verb_is(const char *verb, size_t n, const char *name)
{
    if (strlen(name) != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = verb[i];
        if (c >= 'a' && c <= 'z')
            c = (char)(c - 'a' + 'A');
        if (c != name[i])
            return 0;
    }
    return 1;
}

/* the answer to one line of n bytes (UTF-8, NULs allowed) into t (nothing for a blank line) */
static void answer(sp_board *b, const char *line, size_t n, text *t_)
{
    text t = *t_;
    const char *s = line, *e = line + n;
    s = skip_space(s, e);
    e = trim_space_end(s, e);
    if (s == e)
        return; /* a blank line (a CR LF line end) gets no answer */
    const char *sp = memchr(s, ' ', (size_t)(e - s));
    const char *verb_end = sp ? sp : e;
    size_t vn = (size_t)(verb_end - s);
    const char *rest = skip_space(verb_end, e);
    size_t rn = (size_t)(e - rest);
    b->stats.control_lines++;
    if (verb_is(s, vn, "PING") || verb_is(s, vn, "STATUS")) {
        if (rn) {
            puts_(&t, "ERR ");
            put(&t, s, vn);
            puts_(&t, " takes no argument");
        } else if (verb_is(s, vn, "PING")) {
            puts_(&t, "PONG");
        } else {
            status(b, &t);
        }
    } else if (verb_is(s, vn, "TRIGGER")) {
        if ((rn == 2 || (rn > 2 && rest[2] == ' ')) && rest[0] == 'O' && rest[1] == 'N') {
            if (rn == 2) {
                puts_(&t, "ERR TRIGGER ON needs a LUN or group name");
            } else {
                puts_(&t, "ERR TRIGGER ON is not supported by board ");
                puts_(&t, b->board_id);
                puts_(&t, ": it has one LUN");
            }
        } else if (rn > SP_LABEL_MAX) {
            puts_(&t, "ERR label is ");
            putu(&t, rn);
            puts_(&t, " bytes; at most ");
            putu(&t, SP_LABEL_MAX);
        } else {
            uint64_t id = 0;
            int64_t seq = sp_board_trigger(b, rest, (uint32_t)rn, &id);
            if (seq < 0) {
                puts_(&t, "ERR trigger failed: the board could not cut it");
            } else {
                puts_(&t, "OK ");
                putu(&t, id);
                puts_(&t, " seq=");
                putu(&t, (uint64_t)seq);
            }
        }
    } else if (verb_is(s, vn, "VERIFY") || verb_is(s, vn, "PIN") || verb_is(s, vn, "UNPIN") ||
               verb_is(s, vn, "RESTORE")) {
        char upper[8] = {0};
        for (size_t i = 0; i < vn && i < 7; i++)
            upper[i] = (char)(s[i] >= 'a' && s[i] <= 'z' ? s[i] - 'a' + 'A' : s[i]);
        puts_(&t, "ERR ");
        puts_(&t, upper);
        puts_(&t, " is not supported by board ");
        puts_(&t, b->board_id);
    } else {
        puts_(&t, "ERR unknown command '");
        size_t m = vn < 32 ? vn : 32;
        while (m < vn && m && ((unsigned char)s[m] & 0xC0u) == 0x80u) /* never cut a character */
            m--;
        for (size_t i = 0; i < m; i++) /* control characters never reach the answer line */
            put(&t, (unsigned char)s[i] < 0x20 ? "?" : s + i, 1);
        puts_(&t, "'; commands: " COMMANDS);
    }
    *t_ = t;
}

size_t sp_control_answer(sp_board *b, const char *line, char *out, size_t cap)
{
    text t = {out, 0, cap, 0, 0, 0};
    if (cap == 0)
        return 0;
    out[0] = 0;
    answer(b, line, strlen(line), &t);
    return t.n;
}

static void answer_line(sp_board *b)
{
    b->control_line[b->control_fill] = 0;
    text t = {b->control_out, 0, sizeof b->control_out, 0, b, 0};
    if (!sp_utf8_valid((const uint8_t *)b->control_line, b->control_fill))
        puts_(&t, "ERR line is not UTF-8");
    else
        answer(b, b->control_line, b->control_fill, &t);
    if (t.n == 0 && t.sent == 0)
        return; /* a blank line: no answer */
    put(&t, "\n", 1);
    b->cfg.tx(b->cfg.tx_ctx, SP_CHANNEL_CONTROL, (const uint8_t *)t.p, t.n);
}

void sp_board_control_in(sp_board *b, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (c == '\n') {
            if (b->control_overflow) {
                static const char msg[] = "ERR line too long\n";
                b->cfg.tx(b->cfg.tx_ctx, SP_CHANNEL_CONTROL, (const uint8_t *)msg, sizeof msg - 1u);
            } else {
                answer_line(b);
            }
            b->control_fill = 0;
            b->control_overflow = 0;
        } else if (b->control_overflow) {
            continue;
        } else if (b->control_fill >= SP_CONTROL_LINE_MAX) {
            b->control_overflow = 1;
        } else {
            b->control_line[b->control_fill++] = (char)c;
        }
    }
}
