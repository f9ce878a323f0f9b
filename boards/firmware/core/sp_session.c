/* The board's side of a session (see sp_session.h for the slot arithmetic). */
#include "sp_session.h"

#include <string.h>

/* the slot of seq: SP_WINDOW_MAX is a power of two, so it divides 2^32 and wrapping keeps slots apart */
static uint32_t slot(uint32_t seq) { return seq & (SP_WINDOW_MAX - 1u); }

void sp_session_init(sp_session *s, uint16_t window, sp_execute_fn execute, sp_send_fn send, sp_info_fn info,
                     void *ctx)
{
    memset(s, 0, offsetof(sp_session, buffered));
    for (uint32_t i = 0; i < SP_WINDOW_MAX; i++) {
        s->buffered[i].used = 0;
        s->replies[i].used = 0;
    }
    if (window < 1)
        window = 1;
    if (window > SP_WINDOW_MAX)
        window = SP_WINDOW_MAX;
    s->window = window;
    s->execute = execute;
    s->send = send;
    s->info = info;
    s->ctx = ctx;
}

static uint32_t received_bitmap(const sp_session *s)
{
    uint32_t bits = 0;
    for (uint32_t i = 0; i < SP_WINDOW_MAX; i++) {
        const sp_buffered *b = &s->buffered[i];
        if (!b->used)
            continue;
        int64_t d = sp_seq_after(b->seq, s->expected) - 1;
        if (d >= 0 && d < 32)
            bits |= 1u << d;
    }
    return bits;
}

static void send_nak(sp_session *s)
{
    s->stats.naks++;
    sp_reply_nak(&s->out, s->expected, received_bitmap(s));
    s->send(s->ctx, &s->out);
}

void sp_session_rejected(sp_session *s)
{
    s->stats.rejected_frames++;
    if (s->has_session)
        send_nak(s);
}

static void handshake(sp_session *s, const sp_frame *f)
{
    uint32_t session = sp_get32(f->payload), first_seq = sp_get32(f->payload + 4);
    if (session == 0) {
        sp_reply_error(&s->out, f->seq, SP_MSG_INFO, SP_ERR_BAD_PAYLOAD,
                       "session 0 is reserved; pick a random non-zero session");
        s->send(s->ctx, &s->out);
        return;
    }
    uint16_t flags = 0;
    if (!s->has_session || session != s->session) {
        s->stats.sessions++;
        s->has_session = 1;
        s->session = session;
        s->expected = first_seq;
        for (uint32_t i = 0; i < SP_WINDOW_MAX; i++) {
            s->buffered[i].used = 0;
            s->replies[i].used = 0;
        }
    } else {
        s->stats.resumes++;
        flags = SP_FLAG_RESUMED;
    }
    s->has_nak_for = 0;
    uint32_t n = s->info(s->ctx, s->out.payload + 1, SP_REPLY_PAYLOAD_MAX - 1u);
    sp_reply_ack(&s->out, f->seq, SP_MSG_INFO, s->out.payload + 1, n);
    s->out.flags = flags;
    s->send(s->ctx, &s->out);
}

/* execute request f, whose seq is `expected`; code is its message error (0: well-formed) */
static void run(sp_session *s, const sp_frame *f, int code, const char *why)
{
    uint32_t seq = s->expected;
    sp_reply *r = &s->replies[slot(seq)];
    if (code)
        sp_reply_error(r, seq, f->type, (uint16_t)code, why);
    else
        s->execute(s->ctx, f, r);
    r->seq = seq;
    r->used = 1;
    s->expected = seq + 1u;
    s->has_nak_for = 0;
    s->stats.executed++;
    s->send(s->ctx, r);
}

void sp_session_frame(sp_session *s, const sp_frame *f)
{
    const char *why = "";
    int code = sp_message_check(f, &why);
    if (code) {
        s->stats.bad_messages++;
        if (f->type >= 0x80)
            return; /* a reply type travelling the wrong way: nothing to answer */
        if (f->type == SP_MSG_INFO) { /* INFO is never sequenced: answer at once */
            sp_reply_error(&s->out, f->seq, SP_MSG_INFO, (uint16_t)code, why);
            s->send(s->ctx, &s->out);
            return;
        }
        /* a malformed or unknown request still takes its turn in seq order */
    } else if (f->type >= 0x80) {
        s->stats.ignored++;
        return;
    } else if (f->type == SP_MSG_INFO) {
        handshake(s, f);
        return;
    }
    uint32_t seq = f->seq;
    if (!s->has_session) {
        s->stats.no_session++;
        sp_reply_error(&s->out, seq, f->type, SP_ERR_NO_SESSION, "no session: send INFO first");
        s->send(s->ctx, &s->out);
        return;
    }
    int64_t d = sp_seq_after(seq, s->expected);
    if (d < 0) {
        sp_reply *cached = &s->replies[slot(seq)];
        if (-d > s->window || !cached->used || cached->seq != seq) {
            s->stats.stale++;
            sp_reply_error(&s->out, seq, f->type, SP_ERR_STALE, "seq is older than the reply cache");
            s->out.flags = SP_FLAG_REPLAY;
            s->send(s->ctx, &s->out);
            return;
        }
        s->stats.replays++;
        cached->flags |= SP_FLAG_REPLAY;
        s->send(s->ctx, cached);
        return;
    }
    if (d >= s->window) {
        s->stats.window++;
        sp_reply_error(&s->out, seq, f->type, SP_ERR_WINDOW, "seq is beyond expected + window");
        s->send(s->ctx, &s->out);
        return;
    }
    if (d > 0) {
        sp_buffered *b = &s->buffered[slot(seq)];
        if (b->used && b->seq == seq) {
            s->stats.duplicates_buffered++;
            return;
        }
        b->used = 1;
        b->version = f->version;
        b->type = f->type;
        b->flags = f->flags;
        b->seq = seq;
        b->length = f->length;
        memcpy(b->payload, f->payload, f->length); /* length <= the decoder's limit <= SP_MAX_PAYLOAD */
        if (!s->has_nak_for || s->nak_for != s->expected) { /* one NAK per gap; the host's timer covers the rest */
            s->has_nak_for = 1;
            s->nak_for = s->expected;
            send_nak(s);
        }
        return;
    }
    run(s, f, code, why);
    for (;;) {
        sp_buffered *b = &s->buffered[slot(s->expected)];
        if (!b->used || b->seq != s->expected)
            break;
        sp_frame next = {b->version, b->type, b->flags, b->seq, b->length, b->payload};
        code = sp_message_check(&next, &why);
        run(s, &next, code, why);
        b->used = 0;
    }
}
