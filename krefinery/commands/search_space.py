"""What a tuning search explores, checked once, before anything is loaded or trained.

Kept apart from `tuning` (which imports keras-tuner and TensorFlow) so that bad search
flags are reported at once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from krefinery.errors import UserError

TUNERS = ("random", "bayesian", "hyperband")
# Temperatures are searched on a log grid whose neighbours differ by at most this factor.
TEMPERATURE_RATIO = 2.0
ALPHA_STEP = 0.1


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """The search: ranges (inclusive), the keras-tuner algorithm and the trial budget.

    `alpha=None` keeps the chain's `--alpha` fixed. `MIN == MAX` fixes a value.
    """

    generations: tuple[int, int] = (1, 3)
    temperature: tuple[float, float] = (1.0, 4.0)
    alpha: tuple[float, float] | None = None
    tuner: str = "random"
    max_trials: int = 10

    def __post_init__(self) -> None:
        low, high = self.generations
        _require(low <= high, f"--tune_generations={low},{high} is inverted: MIN must be <= MAX.")
        _require(low >= 1, f"--tune_generations={low},{high}: generations must be >= 1.")
        low, high = self.temperature
        _require(low <= high, f"--tune_temperature={low},{high} is inverted: MIN must be <= MAX.")
        _require(
            math.isfinite(high) and low > 0,
            f"--tune_temperature={low},{high}: temperatures must be positive numbers.",
        )
        if self.alpha is not None:
            low, high = self.alpha
            _require(low <= high, f"--tune_alpha={low},{high} is inverted: MIN must be <= MAX.")
            _require(0 <= low and high <= 1, f"--tune_alpha={low},{high}: alpha must be in [0, 1].")
        _require(
            self.tuner in TUNERS,
            f"--tuner={self.tuner} is not a tuner; choose one of {', '.join(TUNERS)}.",
        )
        _require(self.max_trials >= 1, f"--max_trials={self.max_trials} must be >= 1.")

    def temperatures(self) -> list[float]:
        """A log-spaced grid from MIN to MAX (both included), neighbours at most 2x apart.

        A grid rather than a continuous range so that trials meet on the same
        temperatures and share their chains' generations.
        """
        low, high = self.temperature
        steps = math.ceil(math.log(high / low) / math.log(TEMPERATURE_RATIO) - 1e-9)
        if steps == 0:
            return [low]
        values = [low * (high / low) ** (i / steps) for i in range(steps + 1)]
        return sorted({float(f"{v:.3g}") for v in values[1:-1]} | {low, high})

    def alphas(self, fixed: float) -> list[float]:
        """MIN to MAX in steps of 0.1 (both ends included), or just `fixed`."""
        if self.alpha is None:
            return [fixed]
        low, high = self.alpha
        steps = math.ceil((high - low) / ALPHA_STEP - 1e-9)
        inner = {round(low + i * ALPHA_STEP, 6) for i in range(1, steps)}
        return sorted(inner | {low, high})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_range(flag: str, text: str, cast: Callable[[str], Any]) -> tuple[Any, Any]:
    """`'MIN,MAX'` -> (MIN, MAX); anything else is a `UserError` naming the flag."""
    parts = [part.strip() for part in (text or "").split(",")]
    if len(parts) != 2 or not all(parts):
        raise UserError(f"--{flag}={text!s} must be MIN,MAX (two numbers), e.g. --{flag}=1,3.")
    try:
        return cast(parts[0]), cast(parts[1])
    except ValueError:
        kind = "integers" if cast is int else "numbers"
        raise UserError(f"--{flag}={text} must be MIN,MAX with {kind}.") from None


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)
