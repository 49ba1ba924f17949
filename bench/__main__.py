"""Runs every benchmark in turn: `python -m bench` (about 50 minutes on 2 CPU cores)."""

from bench import (
    default_run,
    input_pipeline,
    memory,
    online,
    paper_input,
    relabel,
    reproducibility,
    scaling,
    train_step,
)

for benchmark in (train_step, reproducibility, relabel, online, input_pipeline, paper_input, scaling, memory, default_run):
    benchmark.main()
