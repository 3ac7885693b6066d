"""Profiles of just the replayed call: py-spy (pyinstrument as fallback), the profiling
pass, and the speedscope toolkit (model, validation, normalize, merge, summary, diff).
"""
