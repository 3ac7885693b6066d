"""The pytest side: snapshot items, the variance-controlled rounds, statistics, worker
processes, result checks, the history ledger, configuration, the report and the fixture.

``call`` replays one call; ``rounds`` and ``stats`` are free of I/O so they test exactly.
"""
