/* The bridge board: layers wired together, and the executor the ring drains into (see sp_board.h). */
#include "sp_board.h"

#include <string.h>

size_t sp_board_size(void) { return sizeof(sp_board); }

static void send_reply(void *ctx, const sp_reply *r)
{
    sp_board *b = ctx;
    size_t n = sp_frame_encode(SP_PROTOCOL_VERSION, r->type, r->flags, r->seq, r->payload, r->length, b->tx_raw,
                               sizeof b->tx_raw, b->tx_wire, sizeof b->tx_wire);
    if (n)
        b->cfg.tx(b->cfg.tx_ctx, SP_CHANNEL_DATA, b->tx_wire, n);
}

static uint32_t board_info(void *ctx, uint8_t *body, uint32_t cap)
{
    sp_board *b = ctx;
    size_t id_len = strlen(b->board_id);
    if (cap < sizeof(sp_wire_board_info) + id_len)
        return 0;
    sp_wire_board_info *w = (sp_wire_board_info *)body; /* all-byte fields: no alignment needed */
    w->proto_min = SP_PROTOCOL_MIN;
    w->proto_max = SP_PROTOCOL_VERSION;
    sp_put16(w->window, b->session.window);
    sp_put32(w->block_size, b->cfg.block_size);
    sp_put64(w->capacity, b->cfg.capacity);
    sp_put32(w->max_transfer, b->cfg.max_transfer);
    sp_put32(w->features, b->cfg.features);
    sp_put32(w->firmware, b->cfg.firmware);
    sp_put32(w->session, b->session.session);
    sp_put32(w->next_seq, b->session.expected);
    memcpy(body + sizeof *w, b->board_id, id_len);
    return (uint32_t)(sizeof *w + id_len);
}

/* every frozen backup, in member order, as BACKUPS' ACK body at out; its length */
static uint32_t list_backups(const sp_board *b, uint8_t *out)
{
    /* the whole list always fits: SP_POOL_MAX entries of at most 13 + 64 bytes (the assert below) */
    uint32_t n = 0;
    for (uint32_t i = 0; i < b->pool.members; i++) {
        const sp_member *m = &b->pool.member[i];
        if (m->state != SP_MEMBER_FROZEN)
            continue;
        sp_wire_backup_entry *e = (sp_wire_backup_entry *)(out + n); /* all-byte fields */
        sp_put64(e->trigger_id, m->manifest.trigger_id);
        sp_put32(e->digest, m->manifest.digest);
        e->label_len = m->manifest.label_len;
        memcpy(out + n + sizeof *e, m->manifest.label, m->manifest.label_len);
        n += (uint32_t)sizeof *e + m->manifest.label_len;
    }
    return n;
}
_Static_assert(SP_POOL_MAX * (sizeof(sp_wire_backup_entry) + SP_LABEL_MAX) <= SP_REPLY_PAYLOAD_MAX - 1u,
               "BACKUPS' list of every pool member fits in one reply");

/* run one request popped from the ring */
static void execute(sp_board *b, sp_request *q)
{
    sp_pool *p = &b->pool;
    sp_reply *r = q->reply;
    int err = SP_ERR_NONE;
    switch (q->type) {
    case SP_MSG_READ:
        if (q->length > b->cfg.max_transfer)
            err = SP_ERR_TOO_LARGE;
        else if (!(err = sp_pool_check(p, q->offset, q->length)))
            err = sp_pool_read(p, q->offset, r->payload + 1, q->length);
        if (!err) {
            sp_reply_ack(r, q->wire_seq, SP_MSG_READ, r->payload + 1, q->length);
            return;
        }
        break;
    case SP_MSG_WRITE:
        if (q->length > b->cfg.max_transfer)
            err = SP_ERR_TOO_LARGE;
        else if (!(err = sp_pool_check(p, q->offset, q->length)))
            err = sp_pool_write(p, q->offset, q->data, q->length, q->flags & SP_FLAG_FUA);
        break;
    case SP_MSG_FLUSH:
        err = sp_pool_flush(p);
        break;
    case SP_MSG_TRIM: /* on this medium a trimmed range reads back as zeros, ZEROES or not */
        if (!(err = sp_pool_check(p, q->offset, q->length)))
            err = sp_pool_zero(p, q->offset, q->length, q->flags & SP_FLAG_FUA);
        break;
    case SP_MSG_TRIGGER:
        if (q->flags & SP_FLAG_MISSED) {  /* a barrier in its place: flushed, counted, never cut */
            if (!(err = sp_pool_flush(p)))
                b->stats.missed_triggers++;
            break;
        }
        if (q->trigger_id >= b->next_trigger_id)
            b->next_trigger_id = q->trigger_id + 1u;
        err = sp_pool_trigger(p, q->trigger_id, q->seq, (const char *)q->data, q->length);
        if (!err) {
            b->stats.triggers++;
            if (q->source == SP_SOURCE_CONTROL)
                b->stats.control_triggers++;
        }
        break;
    case SP_MSG_BACKUPS:
        if (!p->members) {  /* no pool: the board keeps no backups, as its INFO says (no BACKUPS feature) */
            err = SP_ERR_UNKNOWN_TYPE;
            break;
        }
        if (r) {
            sp_reply_ack(r, q->wire_seq, SP_MSG_BACKUPS, NULL, 0);
            r->length = 1u + list_backups(b, r->payload + 1);
        }
        return;
    case SP_MSG_BACKUP_READ:
        if (!p->members)
            err = SP_ERR_UNKNOWN_TYPE;
        else if (q->length > b->cfg.max_transfer)
            err = SP_ERR_TOO_LARGE;
        else if (!(err = sp_pool_check(p, q->offset, q->length)))
            err = sp_board_backup_read(b, q->trigger_id, q->offset, r->payload + 1, q->length);
        if (!err) {
            sp_reply_ack(r, q->wire_seq, SP_MSG_BACKUP_READ, r->payload + 1, q->length);
            return;
        }
        break;
    default:
        err = SP_ERR_UNKNOWN_TYPE;
    }
    if (err == SP_ERR_IO)
        b->stats.io_errors++;
    if (!r)
        return;
    if (err) {
        static const char *const text[] = {
            "", "unsupported version", "unknown type", "bad payload", "range is past the capacity",
            "range is empty or not aligned to the block size", "transfer is above max_transfer", "read-only",
            "the medium failed", "stale", "window", "no session", "no frozen backup of that trigger id",
        };
        sp_reply_error(r, q->wire_seq, q->type, (uint16_t)err,
                       err < (int)(sizeof text / sizeof text[0]) ? text[err] : "error");
    } else {
        sp_reply_ack(r, q->wire_seq, q->type, NULL, 0);
    }
}

static void drain(sp_board *b)
{
    sp_request *q;
    while ((q = sp_ring_pop(&b->ring)) != NULL)
        execute(b, q);
}

/* the session's executor: queue the in-order wire request on the ring, then drain it */
static void session_execute(void *ctx, const sp_frame *f, sp_reply *reply)
{
    sp_board *b = ctx;
    sp_request q;
    memset(&q, 0, sizeof q);
    q.source = SP_SOURCE_DATA;
    q.type = f->type;
    q.flags = f->flags;
    q.wire_seq = f->seq;
    q.reply = reply;
    switch (f->type) {
    case SP_MSG_READ:
    case SP_MSG_TRIM:
        q.offset = sp_get64(f->payload);
        q.length = sp_get32(f->payload + 8);
        break;
    case SP_MSG_WRITE:
        q.offset = sp_get64(f->payload);
        q.length = f->length - 8u;
        q.data = f->payload + 8;
        break;
    case SP_MSG_TRIGGER:
        q.trigger_id = sp_get64(f->payload);
        q.length = f->length - 8u;
        q.data = f->payload + 8;
        break;
    case SP_MSG_BACKUP_READ:
        q.trigger_id = sp_get64(f->payload);
        q.offset = sp_get64(f->payload + 8);
        q.length = sp_get32(f->payload + 16);
        break;
    default:
        break;
    }
    if (sp_ring_push(&b->ring, &q) < 0) {  /* cannot happen: the ring is drained after every push */
        sp_reply_error(reply, f->seq, f->type, SP_ERR_IO, "request ring full");
        return;
    }
    drain(b);
}

int sp_board_init(sp_board *b, const sp_board_config *cfg, const sp_storage *st)
{
    memset(b, 0, sizeof *b);
    if (!cfg->board_id || strlen(cfg->board_id) > SP_BOARD_ID_MAX || !cfg->tx)
        return -1;
    if (cfg->window < 1 || cfg->window > SP_WINDOW_MAX)
        return -2;
    if (cfg->max_transfer < cfg->block_size || cfg->max_transfer > SP_MAX_TRANSFER_MAX)
        return -3;
    if (!sp_utf8_valid((const uint8_t *)cfg->board_id, strlen(cfg->board_id)))
        return -1;
    strcpy(b->board_id, cfg->board_id);
    b->cfg = *cfg;
    b->cfg.board_id = b->board_id;
    if (cfg->pool_members)
        b->cfg.features |= SP_FEAT_BACKUPS; /* a board with a pool lists and reads its backups */
    b->storage = *st;
    if (sp_pool_init(&b->pool, &b->storage, cfg->capacity, cfg->block_size, cfg->chunk_size, cfg->pool_members))
        return -4;
    if (sp_pool_start(&b->pool))
        return -5;
    b->next_trigger_id = 1;
    sp_ring_init(&b->ring, 1);
    sp_decoder_init(&b->rx, cfg->max_transfer + 64u);
    sp_session_init(&b->session, cfg->window, session_execute, send_reply, board_info, b);
    return 0;
}

void sp_board_data_in(sp_board *b, const uint8_t *p, size_t n)
{
    while (n) {
        sp_frame f;
        size_t used = 0;
        int st = sp_decoder_push(&b->rx, p, n, &used, &f);
        if (st == SP_FRAME_OK)
            sp_session_frame(&b->session, &f);
        else if (st > 0)
            sp_session_rejected(&b->session);
        p += used;
        n -= used;
    }
}

void sp_board_data_reset(sp_board *b) { sp_decoder_reset(&b->rx); }

int64_t sp_board_trigger(sp_board *b, const char *label, uint32_t label_len, uint64_t *trigger_id)
{
    if (label_len > SP_LABEL_MAX)
        return -1;
    sp_request q;
    memset(&q, 0, sizeof q);
    q.source = SP_SOURCE_CONTROL;
    q.type = SP_MSG_TRIGGER;
    q.trigger_id = b->next_trigger_id;
    q.data = (const uint8_t *)label;
    q.length = label_len;
    int64_t seq = sp_ring_push(&b->ring, &q);
    if (seq < 0)
        return -1;
    uint32_t before = b->stats.triggers;
    drain(b);
    if (b->stats.triggers == before)
        return -1;
    *trigger_id = q.trigger_id;
    return seq;
}

uint32_t sp_board_backup_count(const sp_board *b)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < b->pool.members; i++)
        n += b->pool.member[i].state == SP_MEMBER_FROZEN;
    return n;
}

int sp_board_backup_info(const sp_board *b, uint32_t k, sp_manifest *out, uint32_t *member)
{
    for (uint32_t i = 0; i < b->pool.members; i++) {
        if (b->pool.member[i].state != SP_MEMBER_FROZEN)
            continue;
        if (k-- == 0) {
            *out = b->pool.member[i].manifest;
            *member = i;
            return 0;
        }
    }
    return -1;
}

int sp_board_backup_read(sp_board *b, uint64_t trigger_id, uint64_t offset, uint8_t *dst, uint32_t n)
{
    int i = sp_pool_find_backup(&b->pool, trigger_id);
    if (i < 0)
        return SP_ERR_NO_BACKUP;
    return sp_pool_read_member(&b->pool, (uint32_t)i, offset, dst, n);
}
