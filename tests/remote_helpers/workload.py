"""The function the multi-process tests capture. Importable, so replay finds it by name."""

from __future__ import annotations

from pytest_perfreplay import capture


@capture(sample_rate=1.0, max_snapshots=20, force=True)
def score(items: list[int], scale: float, label: str) -> float:
    """Deterministic, so a replay can be checked against ``expected``. Quota: 20."""
    return expected(items, scale, label)


@capture(sample_rate=1.0, max_snapshots=100_000, force=True)
def bulk(items: list[int], scale: float, label: str) -> float:
    """The same, with a quota the outage test never reaches."""
    return expected(items, scale, label)


def expected(items: list[int], scale: float, label: str) -> float:
    return sum(i * scale for i in items) + len(label)


def arguments(host: int, call: int, size: int = 200) -> tuple[list[int], float, str]:
    return [host * 100_000 + call + i for i in range(size)], 0.5 + call % 7, f"h{host}c{call}"
