"""After each generation: how well it fits its own training images, and how wrong its labels are.

Refined labels carry every mistake of the generation that made them: a generation that
fits 58% of its training images hands on labels whose argmax is wrong for 42% of them,
and the next generation learns those mistakes (bench/STUDY.md). Two figures per
generation, in `results.json` and TensorBoard (`generation/...` in the `generations`
sub-run), and a warning when the labels handed on are wrong too often:

- `train_accuracy_unaugmented`: the generation's accuracy on its own training images,
  un-augmented, in inference mode;
- `refined_label_disagreement`: the share of training images whose refined label (after
  --temperature and --alpha, what the next generation trains on) has its argmax
  elsewhere than the ground truth; None for the last generation, which hands nothing on.

Both come from the relabel pass the chain runs anyway (`label_figures`, stored with the
generation, so a resumed run reports the same); only a generation that is not
relabelled (the last), or whose labels hide the model (alpha = 1), costs one inference
pass over the training images.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import numpy as np

from krefinery.config import Config

# Refined labels wrong on more than this share of the training images draw a warning.
# bench/STUDY.md: with generation 1's labels wrong on 0.4% and 0.8% of the images,
# generation 2 was within noise of it; at 3.7% it was 2.4 points worse (95% CI excluding
# 0), at 33% and 54% far worse. 2% lies between the harmless and the harmful levels seen.
UNDERFIT_THRESHOLD = 0.02
FIT_KEY = "train_accuracy_unaugmented"
DISAGREEMENT_KEY = "refined_label_disagreement"


def model_accuracy(refined: np.ndarray, truth: np.ndarray, alpha: float) -> float | None:
    """Accuracy of the model whose labels are `refined`, recovered from the labels alone.

    `refined = alpha * onehot(truth) + (1 - alpha) * softmax(logits / T)`: removing the
    ground-truth share leaves a positive multiple of the softmax, whose argmax is the
    model's (T never moves an argmax). At alpha = 1 nothing of the model is left: None.
    """
    if alpha >= 1.0:
        return None
    refined = np.asarray(refined, np.float64)
    model = refined - alpha * np.eye(refined.shape[-1])[truth]
    return float(np.mean(model.argmax(-1) == truth))


def label_figures(
    refined: np.ndarray, ids: np.ndarray, truth: np.ndarray, alpha: float
) -> dict[str, float | None]:
    """Both figures from the refined `[num_ids, classes]` labels of the training ids `ids`."""
    rows = np.asarray(refined)[ids]
    disagreement = float(np.mean(rows.argmax(-1) != truth))
    fit = 1.0 - disagreement if alpha == 0 else model_accuracy(rows, truth, alpha)
    return {FIT_KEY: fit, DISAGREEMENT_KEY: disagreement}


def underfit_warning(
    generation: int,
    fit: float | None,
    disagreement: float,
    config: Config,
    threshold: float = UNDERFIT_THRESHOLD,
) -> str | None:
    """The warning for labels wrong on more than `threshold` of the images, else None."""
    if disagreement <= threshold:
        return None
    fits = "" if fit is None else f"it fits only {fit:.1%} of its own training images, and "
    return (
        f"warning: generation {generation} under-fits: {fits}its refined labels disagree with "
        f"the ground truth on {disagreement:.1%} of them (more than {threshold:.0%}), so "
        f"generation {generation + 1} will learn those mistakes. Train each generation longer "
        f"(--epochs, now {config.epochs}) or keep ground truth in the labels (--alpha, now "
        f"{config.alpha:g}; e.g. 0.3)."
    )


class FitCheck:
    """Warns, once per generation, when the labels it hands on are wrong too often."""

    def __init__(
        self, config: Config, threshold: float = UNDERFIT_THRESHOLD, stream: TextIO | None = None
    ):
        self.config = config
        self.threshold = threshold
        self.stream = stream
        self.warnings: list[str] = []

    def check(self, generation: int, figures: dict[str, Any]) -> str | None:
        """Prints (to stderr) and returns the warning for `generation`'s figures, if any."""
        disagreement = figures.get(DISAGREEMENT_KEY)
        if disagreement is None:
            return None
        message = underfit_warning(
            generation, figures.get(FIT_KEY), disagreement, self.config, self.threshold
        )
        if message:
            self.warnings.append(message)
            print(message, file=self.stream or sys.stderr, flush=True)
        return message
