"""Tools built on the core, which never imports them: the benchmarks, expert-library training, the mini reproduction.

Each is driven by a script under scripts/ (and a Makefile target).
"""
