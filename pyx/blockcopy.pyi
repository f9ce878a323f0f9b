"""Stubs of splitpoint.pyx.blockcopy (and its twin blockcopy_py): copies, compares and digests of extents."""
from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from splitpoint.pyx.blockcopy_py import ExtentError as ExtentError
from splitpoint.pyx.blockcopy_py import ExtentOutOfRangeError as ExtentOutOfRangeError
from splitpoint.pyx.blockcopy_py import ExtentShapeError as ExtentShapeError
from splitpoint.pyx.blockcopy_py import NonContiguousBufferError as NonContiguousBufferError
from splitpoint.pyx.blockcopy_py import ReadOnlyBufferError as ReadOnlyBufferError
from splitpoint.pyx.epochmap_py import ChunkBitmap

Buffer = bytes | bytearray | memoryview | np.ndarray
Extent = tuple[int, int]
Extents = Iterable[Extent] | NDArray[np.integer]

def copy_extents(src: Buffer, dst: Buffer, extents: Extents) -> int: ...
def copy_file_extents(src_fd: int, dst_fd: int, extents: Extents, src_size: int, dst_size: int) -> int: ...
def copy_chunks(src: Buffer, dst: Buffer, chunks: ChunkBitmap | Iterable[int], chunk_size: int) -> int: ...
def compare_extents(a: Buffer, b: Buffer, extents: Extents) -> list[Extent]: ...
def digest(buf: Buffer, offset: int = 0, length: int | None = None) -> int: ...
def digest_regions(buf: Buffer, region_size: int) -> list[int]: ...
