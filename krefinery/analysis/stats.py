"""Mean, spread and paired Student-t intervals over repeated chains, and their verdicts.

A study repeats a chain with different training seeds on the same splits, so any two
generations can be compared repeat by repeat: the differences are paired, and their
mean has a Student-t interval with n - 1 degrees of freedom. The verdict only says
whether that interval excludes zero; with one repeat there is no interval and no verdict.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from scipy import stats as scipy_stats

CONFIDENCE = 0.95
BETTER = "better"
WORSE = "worse"
WITHIN_NOISE = "within noise"
NO_VERDICT = "one repeat: no verdict"


@dataclasses.dataclass(frozen=True)
class Summary:
    """n values: their mean, sample sd (n - 1) and the mean's two-sided t interval.

    `sd`, `low` and `high` are None for a single value: one number says nothing about spread.
    """

    n: int
    mean: float
    sd: float | None
    low: float | None
    high: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """`a - b` over paired repeats, with the interval of the mean difference and a verdict."""

    differences: tuple[float, ...]
    difference: Summary
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "differences": list(self.differences),
            **self.difference.to_dict(),
            "verdict": self.verdict,
        }


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """Mean, sample standard deviation and `confidence` interval of the mean of `values`."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("summarize needs at least one value.")
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:
        return Summary(n, mean, None, None, None)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    return Summary(n, mean, sd, mean - half, mean + half)


def t_quantile(confidence: float, degrees_of_freedom: int) -> float:
    """The two-sided critical value: P(|T| <= q) = `confidence` for Student's t."""
    return float(scipy_stats.t.ppf(0.5 + confidence / 2, degrees_of_freedom))


def verdict(summary: Summary) -> str:
    """`better` / `worse` when the interval of a mean difference excludes 0, else `within noise`.

    An interval that touches 0 includes it. One repeat has no interval: no verdict.
    """
    if summary.low is None or summary.high is None:
        return NO_VERDICT
    if summary.low > 0:
        return BETTER
    if summary.high < 0:
        return WORSE
    return WITHIN_NOISE


def compare(
    a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
) -> Comparison:
    """`a[i] - b[i]` for each repeat i, summarised, with its verdict."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison of {len(a)} values with {len(b)}.")
    differences = tuple(float(x) - float(y) for x, y in zip(a, b))
    summary = summarize(differences, confidence)
    return Comparison(differences, summary, verdict(summary))
