"""Runs every benchmark in turn: `python -m bench` (about 50 minutes on 2 CPU cores)."""

from bench import (
    default_run,
    input_pipeline,
    memory,
    online,
    relabel,
    reproducibility,
    scaling,
    train_step,
)

for benchmark in (train_step, reproducibility, relabel, online, input_pipeline, scaling, memory, default_run):
    benchmark.main()
