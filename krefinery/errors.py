"""The exceptions that end a run with one line instead of a traceback, and their exit codes;
and `Damaged`, a file that fails its check, which its reader handles without ending the run."""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's input: reported as one line, never as a traceback.

    `run.py` catches it, prints the message and exits non-zero; library users can
    catch it to tell bad input apart from bugs.
    """

    exit_code = 2


class DiskFull(OSError):
    """A write found no space left (ENOSPC, or a quota): nothing half-written stays."""

    exit_code = 4

    def __init__(self, path: object):
        super().__init__(
            f"no space left on the device writing {path}; free some space and rerun the "
            "same command: the run resumes from its last checkpoint."
        )
        self.path = path


class Damaged(Exception):
    """A file read back that fails its check (`krefinery.files`): `path` names it,
    `problem` says how; `str()` is the two as a sentence ("<path> is missing").

    Never ends a run: its reader goes on without the file (a stored generation is
    trained again, a checkpoint dropped, `results.json` rebuilt) and says so in one line.
    """

    def __init__(self, path: object, problem: str):
        super().__init__(f"{path} {problem}")
        self.path = path
        self.problem = problem


class Diverged(RuntimeError):
    """A generation's loss or weights stopped being finite; nothing of it is kept."""

    exit_code = 3

    def __init__(
        self, generation: int, epoch: int, results: dict | None = None, temperature: float | None = None
    ):
        if temperature is None:
            cure = "Try a lower --learning_rate (or --precision=float32)"
        else:  # Its labels were not finite: the cause is the temperature, not the step.
            cure = (
                f"The labels it trained on, refined at --temperature={temperature:g}, were not "
                "finite (the logits divided by the temperature overflow): try a larger --temperature"
            )
        super().__init__(
            f"generation {generation} diverged in epoch {epoch} (the loss or the weights "
            f"became NaN or infinite); it is not used as a teacher or exported. {cure}, with "
            "another --workdir."
        )
        self.generation = generation
        self.epoch = epoch
        # The run's record (`results.json`), when a run's chain diverged after others.
        self.results = results


class SearchDiverged(RuntimeError):
    """No trial of a search produced a model: generation 1, which every trial shares,
    diverged. Exits as a diverged run does; the search's records stay for a rerun."""

    exit_code = Diverged.exit_code

    def __init__(self, workdir: object, trials: int):
        super().__init__(
            f"no trial of the search in {workdir} produced a model: each of its {trials} "
            "trial(s) failed because generation 1, which every trial shares, diverged (the "
            "loss or the weights became NaN or infinite); nothing was exported. Try a lower "
            "--learning_rate (or --precision=float32), with another --workdir."
        )
        self.workdir = workdir
        self.trials = trials
