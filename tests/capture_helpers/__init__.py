"""Importable targets and subprocess entry points for the capture tests."""
