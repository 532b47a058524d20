"""Benchmarks (``make bench``); not part of the installed packages."""
