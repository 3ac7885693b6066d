"""valgrind client requests from Python, for bracketing the counted calls under callgrind
(and switching cachegrind's instrumentation on and off, valgrind >= 3.22).

valgrind's tools are driven from inside a program by "client requests": a fixed sequence of
no-op instructions that valgrind recognises and that does nothing on a real CPU. C code gets
them from ``valgrind.h`` macros; Python has no compiler at hand, so this module places the
same few instructions (the amd64 sequence of ``VALGRIND_DO_CLIENT_REQUEST_EXPR``) on an
executable page and calls it through ctypes. Outside valgrind each request returns its
default (0), so a stray call is harmless.

Only x86-64 Linux is supported; :func:`available` says so, and the counting side falls back
to differencing whole processes elsewhere.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import platform
import sys
from collections.abc import Callable

#: uint64 request(uint64 *args, uint64 default): the valgrind.h amd64 sequence, as a function.
_AMD64 = bytes.fromhex(
    "4889f8"  # mov rax, rdi         ; rax -> the six-word argument block
    "4889f2"  # mov rdx, rsi         ; rdx = the default result
    "48c1c703"  # rol rdi, 3         ; the "special instruction" preamble: four rotations
    "48c1c70d"  # rol rdi, 13        ; that add up to 128 bits, so rdi is unchanged
    "48c1c73d"  # rol rdi, 61
    "48c1c733"  # rol rdi, 51
    "4887db"  # xchg rbx, rbx        ; rdx = client_request(rax)
    "4889d0"  # mov rax, rdx
    "c3"  # ret
)

RUNNING_ON_VALGRIND = 0x1001
_CALLGRIND = (ord("C") << 24) | (ord("T") << 16)
DUMP_STATS = _CALLGRIND + 0
ZERO_STATS = _CALLGRIND + 1
TOGGLE_COLLECT = _CALLGRIND + 2
START_INSTRUMENTATION = _CALLGRIND + 4
STOP_INSTRUMENTATION = _CALLGRIND + 5
_CACHEGRIND = (ord("C") << 24) | (ord("G") << 16)
#: cachegrind's own (valgrind >= 3.22, with ``--instr-at-start=no``).
CG_START_INSTRUMENTATION = _CACHEGRIND + 0
CG_STOP_INSTRUMENTATION = _CACHEGRIND + 1


def _platform_ok() -> bool:
    return sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")


@functools.cache
def available() -> bool:
    """Whether requests can be issued here: x86-64 Linux, where an executable page can be
    mapped (a hardened kernel may refuse that; counting then differences processes)."""
    if not _platform_ok():
        return False
    try:
        ClientRequests()
    except (OSError, ValueError, RuntimeError):
        return False
    return True


class ClientRequests:
    """The requests callgrind needs, each a ready-made ctypes call (the counted region pays
    for as little Python as possible between the two toggles)."""

    def __init__(self) -> None:
        if not _platform_ok():
            raise RuntimeError(
                f"valgrind client requests are not supported on {platform.machine()}"
            )
        self._page = mmap.mmap(
            -1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
        )
        self._page.write(_AMD64)
        address = ctypes.addressof(ctypes.c_char.from_buffer(self._page))
        proto = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64)
        self._fn = proto(address)
        self._blocks: list[ctypes.Array[ctypes.c_uint64]] = []  # kept alive with the calls
        self.running_on_valgrind = self._request(RUNNING_ON_VALGRIND)
        self.dump_stats = self._request(DUMP_STATS)
        self.zero_stats = self._request(ZERO_STATS)
        self.toggle_collect = self._request(TOGGLE_COLLECT)
        self.start_instrumentation = self._request(START_INSTRUMENTATION)
        self.stop_instrumentation = self._request(STOP_INSTRUMENTATION)
        self.cachegrind_start = self._request(CG_START_INSTRUMENTATION)
        self.cachegrind_stop = self._request(CG_STOP_INSTRUMENTATION)

    def _request(self, code: int) -> Callable[[], int]:
        block = (ctypes.c_uint64 * 6)(code, 0, 0, 0, 0, 0)
        self._blocks.append(block)
        fn, address = self._fn, ctypes.addressof(block)
        return lambda: int(fn(address, 0))
