/* The lm3s6965evb port (QEMU `-M lm3s6965evb`): PL011 UART0 is the data channel, UART1 the control
 * channel, and the medium is an SD card on SSI0 when one answers (sd_spi.c), else SRAM. The main loop drains both receivers and hands the bytes to the core;
 * with nothing to read it sleeps in WFI until a UART has a byte. Interrupts stay masked (PRIMASK), so no
 * handler runs: a pending UART interrupt only ends the WFI. The transmitter waits for FIFO room. */
#include <stdint.h>

#include "sd_spi.h"
#include "sp_board.h"

#ifndef PORT_BOARD_ID
#define PORT_BOARD_ID "emu-uart-3m"
#endif
#ifndef PORT_CAPACITY
#define PORT_CAPACITY (4u * 1024u) /* bytes of the primary and of each of the pool's regions in SRAM */
#endif
#ifndef PORT_POOL
#define PORT_POOL 3u
#endif
#define PORT_CHUNK 1024u
#define PORT_SD_CHUNK 4096u
#define PORT_SD_CAPACITY (SP_MAX_CHUNKS * PORT_SD_CHUNK) /* the most the dirty map covers */

/* PL011 registers (word offsets) and flag bits */
#define UART0_BASE 0x4000C000u
#define UART1_BASE 0x4000D000u
#define UART_DR 0x000u
#define UART_FR 0x018u
#define UART_IBRD 0x024u
#define UART_FBRD 0x028u
#define UART_LCRH 0x02Cu
#define UART_CTL 0x030u
#define UART_IMSC 0x038u
#define UART_ICR 0x044u
#define FR_RXFE 0x10u
#define FR_TXFF 0x20u
#define INT_RX 0x10u  /* receive */
#define INT_RT 0x40u  /* receive timeout */

/* NVIC set-enable and clear-pending registers; UART0 is interrupt 5, UART1 interrupt 6 */
#define NVIC_ISER0 (*(volatile uint32_t *)0xE000E100u)
#define NVIC_ICPR0 (*(volatile uint32_t *)0xE000E280u)
#define UART_IRQS ((1u << 5) | (1u << 6))

static volatile uint32_t *reg(uint32_t base, uint32_t off) { return (volatile uint32_t *)(base + off); }

static void uart_init(uint32_t base)
{
    *reg(base, UART_CTL) = 0;
    *reg(base, UART_IBRD) = 1; /* QEMU ignores the divisor; a real board sets its baud here */
    *reg(base, UART_FBRD) = 0;
    *reg(base, UART_LCRH) = 0x70u;  /* 8 bits, FIFOs on */
    *reg(base, UART_IMSC) = INT_RX | INT_RT; /* a byte pends the UART's interrupt: it ends the WFI */
    *reg(base, UART_CTL) = 0x301u;  /* UARTEN | TXE | RXE */
}

static int rx_empty(uint32_t base) { return (*reg(base, UART_FR) & FR_RXFE) != 0; }

/* sleep until a UART has a byte (a byte that came after the last check ends the WFI at once) */
static void idle(void)
{
    *reg(UART0_BASE, UART_ICR) = INT_RX | INT_RT;
    *reg(UART1_BASE, UART_ICR) = INT_RX | INT_RT;
    NVIC_ICPR0 = UART_IRQS;
    if (rx_empty(UART0_BASE) && rx_empty(UART1_BASE))
        __asm volatile("wfi");
}

static void port_tx(void *ctx, int channel, const uint8_t *p, size_t n)
{
    (void)ctx;
    uint32_t base = channel == SP_CHANNEL_DATA ? UART0_BASE : UART1_BASE;
    for (size_t i = 0; i < n; i++) {
        while (*reg(base, UART_FR) & FR_TXFF) {
        }
        *reg(base, UART_DR) = p[i];
    }
}

/* the medium: the primary and PORT_POOL regions in SRAM (zeroed by the startup code) */
static uint8_t ram[PORT_CAPACITY * (PORT_POOL + 1u)];

static int ram_read(void *ctx, uint64_t off, uint8_t *dst, uint32_t n)
{
    (void)ctx;
    if (off > sizeof ram || n > sizeof ram - off)
        return -1;
    for (uint32_t i = 0; i < n; i++)
        dst[i] = ram[off + i];
    return 0;
}

static int ram_write(void *ctx, uint64_t off, const uint8_t *src, uint32_t n)
{
    (void)ctx;
    if (off > sizeof ram || n > sizeof ram - off)
        return -1;
    for (uint32_t i = 0; i < n; i++)
        ram[off + i] = src[i];
    return 0;
}

static int ram_zero(void *ctx, uint64_t off, uint64_t n)
{
    (void)ctx;
    if (off > sizeof ram || n > sizeof ram - off)
        return -1;
    for (uint64_t i = 0; i < n; i++)
        ram[off + i] = 0;
    return 0;
}

static int ram_flush(void *ctx)
{
    (void)ctx;
    return 0; /* SRAM has no cache to empty */
}

static sp_board board;

static size_t uart_take(uint32_t base, uint8_t *buf, size_t cap)
{
    size_t n = 0;
    while (n < cap && !rx_empty(base))
        buf[n++] = (uint8_t)*reg(base, UART_DR);
    return n;
}

int main(void)
{
    static sp_storage storage;
    sp_board_config cfg = {
        .board_id = PORT_BOARD_ID,
        .firmware = 0x010000u,
        .features = SP_FEAT_FLUSH | SP_FEAT_TRIM | SP_FEAT_FUA | SP_FEAT_TRIGGER | SP_FEAT_CONTROL,
        .window = SP_WINDOW_MAX,
        .max_transfer = SP_MAX_TRANSFER_MAX,
        .block_size = 512u,
        .capacity = PORT_CAPACITY,
        .chunk_size = PORT_CHUNK,
        .pool_members = PORT_POOL,
        .tx = port_tx,
        .tx_ctx = 0,
    };
    __asm volatile("cpsid i"); /* no handler ever runs: interrupts only wake the WFI */
    uart_init(UART0_BASE);
    uart_init(UART1_BASE);
    NVIC_ISER0 = UART_IRQS;
    if (sd_spi_init(&storage) == 0) {
        /* the card holds the primary and the pool's regions: as large as the card and the dirty map allow */
        uint64_t capacity = storage.size / (PORT_POOL + 1u) / PORT_SD_CHUNK * PORT_SD_CHUNK;
        cfg.capacity = capacity < PORT_SD_CAPACITY ? capacity : PORT_SD_CAPACITY;
        cfg.chunk_size = PORT_SD_CHUNK;
    } else {
        storage = (sp_storage){0, sizeof ram, 1, ram_read, ram_write, ram_zero, ram_flush};
    }
    if (sp_board_init(&board, &cfg, &storage) != 0) {
        static const uint8_t msg[] = "ERR firmware configuration refused\n";
        port_tx(0, SP_CHANNEL_CONTROL, msg, sizeof msg - 1u);
        for (;;) {
        }
    }
    for (;;) {
        uint8_t buf[64];
        size_t n = uart_take(UART0_BASE, buf, sizeof buf);
        if (n)
            sp_board_data_in(&board, buf, n);
        size_t m = uart_take(UART1_BASE, buf, sizeof buf);
        if (m)
            sp_board_control_in(&board, buf, m);
        if (!n && !m)
            idle();
    }
}
