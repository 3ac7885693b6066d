"""Put a process at a chosen place in the small-object allocator's pools.

A call that allocates runs slower or faster, and executes more or fewer instructions, with
the state of pymalloc's pools: an allocation that fills a pool, or a free that reopens a
full one, costs extra, and a loop over ints can pay that on every iteration. That state
carries everything the process ran before the call, so two processes that import the same
code from different folders (a baseline checkout and today's tree) start at different
places, the same place for every process of a side: identical code then reads as a change
(1.8% in instructions in a CI run of this suite). A pad of small objects held for the
process's life moves it: :func:`heap_pad` holds ``part / whole`` of a pool's worth of
blocks of every size class. The counting processes take evenly spaced places, so the
spread over them shows how far the count moves with the place.
"""

from __future__ import annotations

import sys

#: pymalloc's pools (16 KiB on 64-bit CPython 3.10+) less their 48-byte header, and its
#: size classes: multiples of 16 bytes up to 512.
POOL_BYTES = 16384 - 48
SIZE_CLASSES = range(16, 513, 16)


def heap_pad(part: int, whole: int) -> list[object]:
    """``part / whole`` (0 to 1) of a pool's worth of blocks of every size class, to be
    kept alive: about 4,000 objects and 0.5 MB at most, made in a few milliseconds."""
    empty = sys.getsizeof(b"")  # bytes of length n take empty + n bytes
    pad: list[object] = []
    for block in SIZE_CLASSES:
        count = POOL_BYTES // block * part // max(1, whole)
        if block == 16:
            pad.extend(object() for _ in range(count))
        elif block == 32:
            pad.extend(n + 1_000_000 for n in range(count))  # one-digit ints: 28 bytes
        else:
            pad.extend(bytes(block - empty) for _ in range(count))
    return pad
