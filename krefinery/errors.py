"""The exceptions that end a run with one line instead of a traceback, and their exit codes;
and `Damaged`, a file that fails its check, which its reader handles without ending the run."""

from __future__ import annotations

import signal


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


class PeerLost(RuntimeError):
    """A run on several processes lost one (it never joined, or it died): every process
    that is left stops, since each step needs them all; the checkpoints on disk stay."""

    exit_code = 5


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


class Interrupted(BaseException):
    """A stop asked for by a signal (SIGINT: Ctrl-C; SIGTERM: Slurm, Kubernetes, a
    preempted machine). `run.py` installs the handlers that raise it (`krefinery.stops`).

    A `BaseException`, like `KeyboardInterrupt`, so that `except Exception` (keras-tuner's
    failed trial, cleanup code) lets it through. Each layer it passes says where it was
    (`locate`: the innermost wins; `within`: a trial, a repeat); `run.py` prints the
    message and exits 128 + the signal's number, as a shell reports a signal.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.where: str | None = None
        self.resume: str | None = None
        self._within: list[str] = []

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    def locate(self, where: str, resume: str) -> Interrupted:
        """Where the stop hit (`in generation 2, epoch 3`) and what the same command does
        next (`resumes from the end of epoch 2`), unless an inner layer said so first."""
        if self.where is None:
            self.where, self.resume = where, resume
        return self

    def within(self, context: str) -> Interrupted:
        """The work that was stopped (`trial 03`, `repeat 2`), outermost last."""
        self._within.append(context)
        return self

    def __str__(self) -> str:
        where = f" {self.where}" if self.where else ""
        if self._within:
            where += f" ({', '.join(self._within)})"
        return f"interrupted by {self.signal_name}{where}; the same command {self.resume or 'resumes'}"
