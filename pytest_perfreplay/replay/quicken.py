"""Quicken a warm-up's code at once on CPython 3.11, instead of after eight calls.

CPython 3.11 rewrites a code object into its specializing form ("quickening") on its
eighth entry, or sooner when it loops. Code entered once per replayed call therefore runs
unquickened through the first seven calls, and a count needs eight warm-up calls. Under
valgrind those calls are most of the cost of counting a long call.

After one warm-up call, every code object the call entered that has not quickened yet has
its warm-up counter (``co_warmup``: -8 when fresh, one up on each entry and each backward
jump) between -7 and -2. Setting it to -1 makes its next entry quicken it, as its eighth
would have. Code the call never entered (still -8) is left alone, and so is code that has
quickened (0).

``co_warmup`` is not exposed to Python, so it is written through ctypes at its offset in
3.11's ``PyCodeObject``. :func:`supported` checks that layout on a fresh code object
before any write; anywhere else (another version, another implementation, 32-bit) the
counting process makes the plain warm-up calls instead.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import sys
import types
from collections.abc import Iterator

#: 3.11's PyCodeObject, 64-bit: PyObject_VAR_HEAD (24 bytes), then co_consts, co_names and
#: co_exceptiontable (8 each), then ``int co_flags`` and ``short co_warmup``.
_FLAGS_OFFSET = 48
_WARMUP_OFFSET = 52
#: QUICKENING_INITIAL_WARMUP_VALUE: a code object that has never run.
FRESH = -8


def _warmup(code: types.CodeType) -> ctypes.c_short:
    return ctypes.c_short.from_address(id(code) + _WARMUP_OFFSET)


@functools.cache
def supported() -> bool:
    """Whether this interpreter's code objects have 3.11's layout, checked on a fresh one:
    its flags where they should be, a fresh counter, and one step up after one call."""
    if sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11):
        return False
    if ctypes.sizeof(ctypes.c_void_p) != 8:
        return False
    scope: dict[str, object] = {}
    exec("def probe():\n    return 1\n", scope)  # noqa: S102 - a constant, for a fresh code object
    probe = scope["probe"]
    assert isinstance(probe, types.FunctionType)
    code = probe.__code__
    flags = ctypes.c_int.from_address(id(code) + _FLAGS_OFFSET).value
    if flags != code.co_flags or _warmup(code).value != FRESH:
        return False
    probe()
    return _warmup(code).value == FRESH + 1


def _codes() -> Iterator[types.CodeType]:
    """Every function's code, and the code nested in it (comprehensions, lambdas and
    inner functions, whose function objects may not exist between calls). Not deduplicated:
    a set of them would leave objects behind on the heap, and a second visit is a no-op."""
    stack = [f.__code__ for f in gc.get_objects() if isinstance(f, types.FunctionType)]
    while stack:
        code = stack.pop()
        yield code
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))


def quicken_entered() -> int:
    """Make every code object entered so far and not yet quickened quicken on its next
    entry. Returns how many were set; 0 where :func:`supported` is false."""
    if not supported():
        return 0
    n = 0
    for code in _codes():
        counter = _warmup(code)
        if FRESH < counter.value < -1:
            counter.value = -1
            n += 1
    return n
