"""Runs every benchmark in turn: `python -m bench` (about 40 minutes on 2 CPU cores)."""

from bench import input_pipeline, memory, online, relabel, scaling, torch_compare, train_step

for benchmark in (train_step, torch_compare, relabel, online, input_pipeline, memory, scaling):
    benchmark.main()
