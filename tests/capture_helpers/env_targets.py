"""Run with PERFREPLAY_CAPTURE=1 PERFREPLAY_TARGETS=...: nothing here is decorated."""

from __future__ import annotations

import json
import sys

import pytest_perfreplay  # noqa: F401  (start-up: reads the environment)
from pytest_perfreplay.capture.decorator import stats

from . import late_target

assert late_target.late(2) == 6
assert late_target.Late().method(1) == 2
assert late_target.Late.static(1) == 0
json.dump(stats(), sys.stdout)
