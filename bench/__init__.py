"""Benchmarks: each module prints its figures side by side, as ratios, from one process.

Run them all with `python -m bench`, or one with `python -m bench.<name>`.
"""

from krefinery.runtime.device import prefer_onednn

# TensorFlow's kernels as run.py loads them (oneDNN on x86-64): benchmarks time what runs do.
prefer_onednn()
