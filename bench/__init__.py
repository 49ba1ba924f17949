"""Benchmarks: each module prints its figures side by side, as ratios, from one process.

Run them all with `python -m bench`, or one with `python -m bench.<name>`.
"""
