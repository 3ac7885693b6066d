"""Start-up hook for ``perfreplay run``: its folder goes first on PYTHONPATH."""
