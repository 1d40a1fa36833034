"""Chunk codecs of the cache writer: HDF5 filter settings, and chunk bytes made outside HDF5
(in worker threads) in each filter's own layout."""

from __future__ import annotations

import struct
import threading
import zlib
from typing import Any, Callable

from rqf import RqfError

IN_LIBRARY_CODECS = ("lzf", "zstd", "lz4", "blosc", "bitshuffle")
CODECS = ("none", "gzip") + IN_LIBRARY_CODECS


def plugin_filter(codec: str, level: int) -> dict[str, Any]:
    if codec == "lzf":
        return {"compression": "lzf"}
    try:
        import hdf5plugin
    except ImportError:
        raise RqfError(f"compression {codec!r} needs the optional package hdf5plugin "
                       "(pip install hdf5plugin)") from None
    filters = {"zstd": lambda: hdf5plugin.Zstd(clevel=level or 3),
               "lz4": lambda: hdf5plugin.LZ4(),
               "blosc": lambda: hdf5plugin.Blosc(cname="lz4", clevel=level or 5,
                                                 shuffle=hdf5plugin.Blosc.SHUFFLE),
               "bitshuffle": lambda: hdf5plugin.Bitshuffle(cname="lz4")}
    return dict(filters[codec]())


def chunk_compressor(codec: str, level: int) -> Callable[[Any], bytes | None] | None:
    """A function making the filter's own chunk bytes from an array's buffer, or None.

    It runs in worker threads, outside HDF5. gzip is zlib's stream; zstd is one zstd frame
    (``zstandard``); lz4 is the HDF5 LZ4 filter's layout: total size and block size (8 + 4
    bytes, big-endian), then one block as its size (4 bytes) and its bytes, stored raw when
    compression does not shrink it (``lz4``). Returns None for a chunk it cannot make.
    """
    if codec == "gzip":
        return lambda buf: zlib.compress(buf, level)
    if codec == "zstd":
        try:
            import zstandard
        except ImportError:
            return None
        local = threading.local()  # a compressor context is not shared between threads

        def zstd_chunk(buf: Any) -> bytes:
            if not hasattr(local, "ctx"):
                local.ctx = zstandard.ZstdCompressor(level=level or 3)
            return local.ctx.compress(buf)
        return zstd_chunk
    if codec == "lz4":
        try:
            import lz4.block
        except ImportError:
            return None

        def lz4_chunk(buf: Any) -> bytes | None:
            n = memoryview(buf).nbytes
            if n >= 1 << 30:  # beyond one filter block: HDF5 compresses it
                return None
            block = lz4.block.compress(buf, store_size=False)
            if len(block) >= n:
                block = bytes(buf)
            return struct.pack(">qii", n, n, len(block)) + block
        return lz4_chunk
    return None
