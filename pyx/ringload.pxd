# ringload.pxd: ringload has no C-level API of its own.
#
# Its nogil loops drive the ring through ring.pxd (sp_ring_push, sp_ring_push_batch,
# sp_ring_pop_batch on `_Ring.r`), so every kernel that loads a ring cimports that, not this.
