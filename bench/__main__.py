"""Runs every benchmark in turn: `python -m bench` (about 45 minutes on 2 CPU cores)."""

from bench import (
    input_pipeline,
    memory,
    online,
    relabel,
    reproducibility,
    scaling,
    train_step,
)

for benchmark in (train_step, reproducibility, relabel, online, input_pipeline, scaling, memory):
    benchmark.main()
