"""A normal run: one refinery chain whose store lives in its work directory.

`train_and_evaluate` checks the work directory, loads the data, then runs the chain
through `ChainRunner` (which loads what the store holds and resumes what was in
flight) with `RunOutputs` writing what the run leaves behind. The same command on the
same `--workdir` therefore continues an interrupted run, and reprints a finished one.
With `--control`, a second chain at alpha = 1 on the same store trains the control
(`RunOutputs.on_control`), so it resumes and reuses like any generation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from krefinery.chain.experiment import Experiment, prepare_experiment
from krefinery.chain.runner import ChainRunner, best_generation, warn
from krefinery.chain.store import GenerationStore
from krefinery.config import Config
from krefinery.errors import Damaged, Diverged
from krefinery.outputs import report, workdirs
from krefinery.outputs.export import intact, prepare_export_dir
from krefinery.outputs.run_outputs import CONTROL_OF, RunOutputs
from krefinery.runtime.hosts import ALONE, Hosts

STORE = "generations"


def train_and_evaluate(config: Config, hosts: Hosts = ALONE) -> dict[str, Any]:
    """Runs (or resumes) the refinery chain that `config` describes; returns the results.

    Bad input (flags, dataset, folder, export folder, a work directory holding another
    run) raises `UserError` before the work directory is made and before training.
    A generation that diverges raises `Diverged` once the results are written and the
    best earlier generation, if any, is exported; `error.results` holds the record.
    A full disk raises `DiskFull`; the same command resumes once space is freed.

    `hosts`: the processes of a run on several (`runtime.hosts.join`): each runs this
    with the same flags and code (checked first), on one work directory they all see
    (checked once claimed); process 0 alone claims and writes it.
    """
    if hosts.several:
        workdirs.check_alike(config, hosts)
    marker = workdirs.marker_of(config)
    workdir = workdirs.check(config, workdirs.RUN, marker)
    with workdirs.claim(config, workdirs.RUN, workdir, hosts=hosts) as held:
        results = _finished(held.path) if held.marked else None
        if results is None:
            hosts.on_writer(lambda: prepare_export_dir(config))  # Cheap checks first: before any data.
            experiment = prepare_experiment(config, hosts=hosts)
            workdirs.check_runtime(held.path, experiment.runtime)
            held.mark({**marker, "runtime": experiment.runtime})
            results = _run(experiment, held.path, hosts)
    if results["diverged"] is not None:
        diverged = results["diverged"]
        # Labels that are not finite, refined below T = 1, say the temperature overflowed
        # the logits; at T >= 1 only logits that were not finite could, the model's fault.
        blame = diverged.get("labels_not_finite") and config.temperature < 1
        temperature = config.temperature if blame else None
        raise Diverged(diverged["generation"], diverged["epoch"], results, temperature)
    return results


def _run(experiment: Experiment, workdir: Path, hosts: Hosts) -> dict[str, Any]:
    """The chain, and the control if asked for, over the store in `workdir`; the results."""
    config = experiment.config
    store = GenerationStore(workdir / STORE, hosts)
    outputs = RunOutputs(workdir, experiment, store, hosts)
    runner = ChainRunner(experiment, store, on_relabel=outputs.on_relabel, label_figures=True)
    refinement = config.refinement
    try:
        runner.run(refinement, callbacks=outputs.callbacks, on_generation=outputs.on_generation)
        if config.control and best_generation(outputs.generations) is not None:
            if not any(g.get("diverged") for g in outputs.generations):
                # Generation 2 at alpha = 1 trains on the ground truth with generation 2's
                # seed and stream; its generation 1 is the run's, from the store. It hands
                # no labels on, so the run observes no relabel of it.
                control = dataclasses.replace(refinement, generations=CONTROL_OF, alpha=1.0)
                runner.run(control, callbacks=outputs.control_callbacks, on_generation=outputs.on_control)
        results = outputs.finish()
        hosts.barrier("finished")  # Process 0's exports and results are on disk.
        return results
    finally:
        outputs.close()


def _finished(workdir: Path) -> dict[str, Any] | None:
    """The results of a finished run whose exports are all still there and whole (their
    files match their manifests), else None: the run then exports again what is not.

    A `results.json` that fails its checksum (cut, edited, or from before checksums) is
    said in one line and counts as absent: the run then rebuilds it from its store,
    which holds every figure, rather than return a damaged record as its result."""
    try:
        results = report.read_results(workdir)
    except Damaged as damaged:
        warn(f"{damaged}; rebuilding it from the stored generations.")
        return None
    if results is None or not results.get("finished"):
        return None
    if not all(intact(path) for path in results.get("exports", {}).values()):
        return None
    return results

