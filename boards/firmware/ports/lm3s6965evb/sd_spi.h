/* An SD card over SSI0 (PL022) in SPI mode, chip select on GPIO PD0: the storage driver of the
 * lm3s6965evb port when a card answers (QEMU: -drive if=sd,format=raw,file=IMAGE). */
#ifndef SD_SPI_H
#define SD_SPI_H

#include <stdint.h>

#include "sp_storage.h"

/* bring the card up (CMD0, CMD8, ACMD41, CMD58, CMD9) and fill st; 0, or -1 when no card answers */
int sd_spi_init(sp_storage *st);

#endif
