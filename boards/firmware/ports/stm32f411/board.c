/* The stm32f411 port (the Black Pill's MCU; runs in QEMU as `-M netduinoplus2`, an STM32F405 with
 * the same USARTs at the same addresses): USART1 (PA9/PA10) is the data channel, USART2 (PA2/PA3)
 * the control channel, and the medium is SRAM. The main loop drains both receivers and hands the
 * bytes to the core; with nothing to read it sleeps in WFI until a USART has a byte (interrupts stay
 * masked, so no handler runs). The clock and pin set-up is the real chip's (HSI, 16 MHz, 115200 baud);
 * QEMU ignores it. */
#include <stdint.h>

#include "sp_board.h"

#ifndef PORT_BOARD_ID
#define PORT_BOARD_ID "emu-uart-3m"
#endif
#define PORT_CAPACITY (16u * 1024u) /* bytes of the primary and of each of the pool's regions */
#define PORT_POOL 3u
#define PORT_CHUNK 1024u

#define RCC_AHB1ENR 0x40023830u
#define RCC_APB1ENR 0x40023840u
#define RCC_APB2ENR 0x40023844u
#define GPIOA_MODER 0x40020000u
#define GPIOA_AFRL 0x40020020u
#define GPIOA_AFRH 0x40020024u
#define USART1 0x40011000u
#define USART2 0x40004400u
#define USART_SR 0x00u
#define USART_DR 0x04u
#define USART_BRR 0x08u
#define USART_CR1 0x0Cu
#define SR_RXNE 0x20u
#define SR_TXE 0x80u
#define CR1_UE 0x2000u
#define CR1_RXNEIE 0x20u
#define CR1_TE 0x08u
#define CR1_RE 0x04u
#define NVIC_ISER1 (*(volatile uint32_t *)0xE000E104u)
#define NVIC_ICPR1 (*(volatile uint32_t *)0xE000E284u)
#define USART_IRQS ((1u << (37 - 32)) | (1u << (38 - 32))) /* USART1 is interrupt 37, USART2 38 */

static volatile uint32_t *reg(uint32_t addr) { return (volatile uint32_t *)addr; }

static void pins_and_clocks(void)
{
    *reg(RCC_AHB1ENR) |= 1u;         /* GPIOA */
    *reg(RCC_APB2ENR) |= 1u << 4;    /* USART1 */
    *reg(RCC_APB1ENR) |= 1u << 17;   /* USART2 */
    /* PA2, PA3, PA9, PA10 in alternate-function mode, AF7 (USART1/2) */
    uint32_t moder = *reg(GPIOA_MODER);
    moder &= ~((3u << 4) | (3u << 6) | (3u << 18) | (3u << 20));
    moder |= (2u << 4) | (2u << 6) | (2u << 18) | (2u << 20);
    *reg(GPIOA_MODER) = moder;
    *reg(GPIOA_AFRL) = (*reg(GPIOA_AFRL) & ~0xFF00u) | 0x7700u;
    *reg(GPIOA_AFRH) = (*reg(GPIOA_AFRH) & ~0xFF0u) | 0x770u;
}

static void usart_init(uint32_t base)
{
    *reg(base + USART_BRR) = 0x8Bu;  /* 16 MHz / 115200 */
    *reg(base + USART_CR1) = CR1_UE | CR1_TE | CR1_RE | CR1_RXNEIE;
}

static int rx_ready(uint32_t base) { return (*reg(base + USART_SR) & SR_RXNE) != 0; }

static void port_tx(void *ctx, int channel, const uint8_t *p, size_t n)
{
    (void)ctx;
    uint32_t base = channel == SP_CHANNEL_DATA ? USART1 : USART2;
    for (size_t i = 0; i < n; i++) {
        while (!(*reg(base + USART_SR) & SR_TXE)) {
        }
        *reg(base + USART_DR) = p[i];
    }
}

static size_t usart_take(uint32_t base, uint8_t *buf, size_t cap)
{
    size_t n = 0;
    while (n < cap && rx_ready(base))
        buf[n++] = (uint8_t)*reg(base + USART_DR);
    return n;
}

static void idle(void)
{
    NVIC_ICPR1 = USART_IRQS;
    if (!rx_ready(USART1) && !rx_ready(USART2))
        __asm volatile("wfi");
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
    return 0;
}

static sp_board board;

int main(void)
{
    static const sp_storage storage = {0, sizeof ram, 1, ram_read, ram_write, ram_zero, ram_flush};
    const sp_board_config cfg = {
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
    pins_and_clocks();
    usart_init(USART1);
    usart_init(USART2);
    NVIC_ISER1 = USART_IRQS;
    if (sp_board_init(&board, &cfg, &storage) != 0) {
        static const uint8_t msg[] = "ERR firmware configuration refused\n";
        port_tx(0, SP_CHANNEL_CONTROL, msg, sizeof msg - 1u);
        for (;;) {
        }
    }
    for (;;) {
        uint8_t buf[64];
        size_t n = usart_take(USART1, buf, sizeof buf);
        if (n)
            sp_board_data_in(&board, buf, n);
        size_t m = usart_take(USART2, buf, sizeof buf);
        if (m)
            sp_board_control_in(&board, buf, m);
        if (!n && !m)
            idle();
    }
}
