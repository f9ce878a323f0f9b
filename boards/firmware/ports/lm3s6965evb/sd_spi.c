/* SD card in SPI mode over SSI0 with CS on PD0 (see sd_spi.h).
 *
 * Single-block commands only (CMD17 read, CMD24 write), 512-byte blocks; a byte address for a
 * standard-capacity card, a block address for a high-capacity one (CCS in the OCR). Every wait is
 * bounded: a card that stops answering fails the request with an I/O error instead of hanging. */
#include "sd_spi.h"

#define SSI0 0x40008000u
#define SSI_CR0 0x000u
#define SSI_CR1 0x004u
#define SSI_DR 0x008u
#define SSI_SR 0x00Cu
#define SSI_CPSR 0x010u
#define SR_TNF 0x02u
#define SR_RNE 0x04u

#define GPIOD 0x40007000u
#define GPIO_DIR 0x400u
#define GPIO_DEN 0x51Cu
#define PD0 0x01u

#define SYSCTL_RCGC1 0x400FE104u
#define SYSCTL_RCGC2 0x400FE108u

#define BLOCK 512u
#define TRIES 100000u /* bytes clocked while waiting for the card before giving up */

static volatile uint32_t *r32(uint32_t addr) { return (volatile uint32_t *)addr; }

static uint64_t card_bytes;
static int block_addressed;

static uint8_t xfer(uint8_t out)
{
    while (!(*r32(SSI0 + SSI_SR) & SR_TNF)) {
    }
    *r32(SSI0 + SSI_DR) = out;
    while (!(*r32(SSI0 + SSI_SR) & SR_RNE)) {
    }
    return (uint8_t)*r32(SSI0 + SSI_DR);
}

/* PD0 low selects the card; the data register is addressed through the pin mask (PL061) */
static void select_card(int on) { *r32(GPIOD + (PD0 << 2)) = on ? 0u : PD0; }

/* send a command; its R1 (bit 7 clear), or 0xFF when the card never answered */
static uint8_t command(uint8_t cmd, uint32_t arg, uint8_t crc)
{
    xfer(0xFF);
    xfer((uint8_t)(0x40u | cmd));
    xfer((uint8_t)(arg >> 24));
    xfer((uint8_t)(arg >> 16));
    xfer((uint8_t)(arg >> 8));
    xfer((uint8_t)arg);
    xfer(crc);
    for (int i = 0; i < 16; i++) {
        uint8_t r = xfer(0xFF);
        if (!(r & 0x80u))
            return r;
    }
    return 0xFF;
}

static int wait_token(uint8_t token)
{
    for (uint32_t i = 0; i < TRIES; i++) {
        uint8_t r = xfer(0xFF);
        if (r == token)
            return 0;
        if (r != 0xFF)
            return -1; /* a data error token */
    }
    return -1;
}

static int read_block(uint32_t lba, uint8_t *dst)
{
    select_card(1);
    int ok = command(17, block_addressed ? lba : lba * BLOCK, 0xFF) == 0 && wait_token(0xFE) == 0;
    if (ok) {
        for (uint32_t i = 0; i < BLOCK; i++)
            dst[i] = xfer(0xFF);
        xfer(0xFF); /* CRC16, not checked */
        xfer(0xFF);
    }
    select_card(0);
    return ok ? 0 : -1;
}

static int write_block(uint32_t lba, const uint8_t *src)
{
    select_card(1);
    int ok = command(24, block_addressed ? lba : lba * BLOCK, 0xFF) == 0;
    if (ok) {
        xfer(0xFF);
        xfer(0xFE);
        for (uint32_t i = 0; i < BLOCK; i++)
            xfer(src[i]);
        xfer(0xFF);
        xfer(0xFF);
        uint8_t resp = 0xFF;
        for (int i = 0; i < 16 && resp == 0xFF; i++)
            resp = xfer(0xFF);
        ok = (resp & 0x1Fu) == 0x05u; /* data accepted */
        uint32_t i = 0;
        while (ok && xfer(0xFF) != 0xFF) /* busy while the card programs the block */
            if (++i > TRIES)
                ok = 0;
    }
    select_card(0);
    return ok ? 0 : -1;
}

static uint8_t bounce[BLOCK]; /* one block: a partial block is read, changed and written back */

static int in_range(uint64_t off, uint64_t n) { return off <= card_bytes && n <= card_bytes - off; }

static int sd_read(void *ctx, uint64_t off, uint8_t *dst, uint32_t n)
{
    (void)ctx;
    if (!in_range(off, n))
        return -1;
    while (n) {
        uint32_t lba = (uint32_t)(off / BLOCK), at = (uint32_t)(off % BLOCK);
        uint32_t step = BLOCK - at < n ? BLOCK - at : n;
        if (read_block(lba, bounce))
            return -1;
        for (uint32_t i = 0; i < step; i++)
            dst[i] = bounce[at + i];
        dst += step;
        off += step;
        n -= step;
    }
    return 0;
}

static int sd_store(uint64_t off, const uint8_t *src, uint64_t n)
{
    if (!in_range(off, n))
        return -1;
    while (n) {
        uint32_t lba = (uint32_t)(off / BLOCK), at = (uint32_t)(off % BLOCK);
        uint32_t step = BLOCK - at < n ? BLOCK - at : (uint32_t)n;
        if (step < BLOCK && read_block(lba, bounce))
            return -1;
        for (uint32_t i = 0; i < step; i++)
            bounce[at + i] = src ? src[i] : 0u;
        if (write_block(lba, bounce))
            return -1;
        if (src)
            src += step;
        off += step;
        n -= step;
    }
    return 0;
}

static int sd_write(void *ctx, uint64_t off, const uint8_t *src, uint32_t n)
{
    (void)ctx;
    return sd_store(off, src, n);
}

static int sd_zero(void *ctx, uint64_t off, uint64_t n)
{
    (void)ctx;
    return sd_store(off, 0, n);
}

static int sd_flush(void *ctx)
{
    (void)ctx;
    return 0; /* CMD24 returns once the card has programmed the block */
}

/* bits [hi:lo] of the 128-bit CSD (big-endian bytes) */
static uint32_t csd_bits(const uint8_t *csd, int hi, int lo)
{
    uint32_t v = 0;
    for (int b = hi; b >= lo; b--)
        v = v << 1 | ((csd[15 - b / 8] >> (b % 8)) & 1u);
    return v;
}

int sd_spi_init(sp_storage *st)
{
    *r32(SYSCTL_RCGC1) |= 1u << 4; /* SSI0 clock (QEMU ignores the clock gates) */
    *r32(SYSCTL_RCGC2) |= 1u << 3; /* GPIO D */
    *r32(GPIOD + GPIO_DEN) |= PD0;
    *r32(GPIOD + GPIO_DIR) |= PD0;
    select_card(0); /* drive CS high (the data register takes only output pins' bits) */
    *r32(SSI0 + SSI_CR1) = 0;
    *r32(SSI0 + SSI_CPSR) = 2;
    *r32(SSI0 + SSI_CR0) = 0x0007u; /* SPI mode 0, 8-bit frames */
    *r32(SSI0 + SSI_CR1) = 0x0002u; /* SSE */
    for (int i = 0; i < 10; i++)
        xfer(0xFF); /* 80 clocks with CS high */
    select_card(1);
    int ok = command(0, 0, 0x95) == 0x01;
    uint8_t r7[4] = {0}, r1;
    r1 = ok ? command(8, 0x1AAu, 0x87) : 0xFF;
    if (!(r1 & 0x84u)) /* R7 follows unless CMD8 is illegal (a version 1 card) */
        for (int i = 0; i < 4; i++)
            r7[i] = xfer(0xFF);
    r1 = 0xFF;
    for (uint32_t i = 0; ok && i < 1000u && r1 != 0; i++) {
        command(55, 0, 0xFF);
        r1 = command(41, r7[3] == 0xAA ? 0x40000000u : 0u, 0xFF);
    }
    ok = ok && r1 == 0;
    r1 = ok ? command(58, 0, 0xFF) : 0xFF;
    if (!(r1 & 0x84u)) { /* R3 follows unless the command was refused: always read it off the line */
        uint8_t ocr0 = xfer(0xFF);
        xfer(0xFF), xfer(0xFF), xfer(0xFF);
        block_addressed = (ocr0 & 0x40u) != 0;
    }
    uint8_t csd[16];
    ok = ok && command(9, 0, 0xFF) == 0 && wait_token(0xFE) == 0;
    if (ok) {
        for (int i = 0; i < 16; i++)
            csd[i] = xfer(0xFF);
        xfer(0xFF), xfer(0xFF);
        if (csd_bits(csd, 127, 126) == 1) /* CSD 2.0: (C_SIZE + 1) * 512 KiB */
            card_bytes = ((uint64_t)csd_bits(csd, 69, 48) + 1u) * 512u * 1024u;
        else
            card_bytes = ((uint64_t)csd_bits(csd, 73, 62) + 1u) << (csd_bits(csd, 49, 47) + 2u + csd_bits(csd, 83, 80));
    }
    select_card(0);
    if (!ok || card_bytes == 0)
        return -1;
    st->ctx = 0;
    st->size = card_bytes;
    st->zeroed = 0; /* a card's contents are unknown: the first activation copies the whole primary */
    st->read = sd_read;
    st->write = sd_write;
    st->zero = sd_zero;
    st->flush = sd_flush;
    return 0;
}
