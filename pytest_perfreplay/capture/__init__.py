"""The production side: ``@capture``, redaction, capture by dotted name, the start-up hook.

Runs inside services, so it imports only the standard library, cloudpickle and
``pytest_perfreplay.snapshot``; never pytest, numpy, scipy or a profiler (a test checks).
"""

from __future__ import annotations

from .decorator import capture, configure, patch_targets, stats, target_name, unwrap_capture

__all__ = ["capture", "configure", "patch_targets", "stats", "target_name", "unwrap_capture"]
