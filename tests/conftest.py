"""Shared test set-up: fixture plugins, and the rule that CI never skips a real-parts test."""

from __future__ import annotations

pytest_plugins = ["tests.speedscope_app", "tests.s3_server"]
