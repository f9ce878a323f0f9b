/* Cortex-M startup shared by the ports (M3 on lm3s6965evb, M4 on stm32f411): the vector table, and
 * a reset handler that copies .data from flash, zeroes .bss and runs main. No interrupt handler
 * runs: interrupts stay masked and only wake the main loop's WFI. */
#include <stdint.h>

extern uint32_t _etext, _sdata, _edata, _sbss, _ebss, _stack_top;
int main(void);

void Reset_Handler(void);
static void Fault_Handler(void);

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))(&_stack_top), /* initial stack pointer */
    Reset_Handler,                 /* reset */
    Fault_Handler,                 /* NMI */
    Fault_Handler,                 /* hard fault */
    Fault_Handler,                 /* memory management fault */
    Fault_Handler,                 /* bus fault */
    Fault_Handler,                 /* usage fault */
    0, 0, 0, 0,                    /* reserved */
    Fault_Handler,                 /* SVCall */
    Fault_Handler,                 /* debug monitor */
    0,                             /* reserved */
    Fault_Handler,                 /* PendSV */
    Fault_Handler,                 /* SysTick */
};

void Reset_Handler(void)
{
    uint32_t *src = &_etext, *dst = &_sdata;
    while (dst < &_edata)
        *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss;)
        *dst++ = 0;
    main();
    for (;;) {
    }
}

/* a fault stops the board: the host's retransmissions then run out and it reports the board gone */
static void Fault_Handler(void)
{
    for (;;) {
    }
}
