"""Imported only after configure(targets=...): patched by the import hook."""

from __future__ import annotations


def late(x: int) -> int:
    return x * 3


class Late:
    def method(self, x: int) -> int:
        return x + 1

    @staticmethod
    def static(x: int) -> int:
        return x - 1
