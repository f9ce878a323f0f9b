"""Type stubs of splitpoint.pyx.ringload (the compiled load loops) and its twin ringload_py."""
from typing import Any, TypedDict

from splitpoint.pyx.ring import MPSCRing, SPSCRing

MAX_LOOP_BATCH: int


class ConsumeReport(TypedDict):
    count: int
    seq_errors: int
    order_errors: int
    corrupt: int
    per_producer: list[int]
    first_seq: int | None
    last_seq: int | None
    checksum: int


def produce(ring: SPSCRing | MPSCRing, n: int, producer_id: int = 0, batch: int = 1,
            timeout: float = 60.0) -> int: ...
def consume(ring: SPSCRing | MPSCRing, n: int, producers: int = 1, batch: int = 1,
            timeout: float = 60.0) -> ConsumeReport: ...

def check_loop_args(ring: Any, ring_types: tuple[type, ...], n: Any, batch: Any, timeout: Any,
                    what: str) -> tuple[int, int, float]: ...
def check_producer_id(producer_id: Any) -> int: ...
def check_producers(producers: Any) -> int: ...
