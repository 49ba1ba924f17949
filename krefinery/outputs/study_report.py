"""What a study found, from its repeats' `results.json` records: study.json, table, chart, TensorBoard.

Every figure is over repeats: per generation, the mean, sample sd and 95% interval of
the mean; per comparison (generation k - generation 1, generation 2 - control), the
paired differences repeat by repeat, their mean, 95% Student-t interval and verdict.
A repeat whose control diverged has no control result: it is left out of the control's
figures and of generation 2 - control (`control_diverged` lists such repeats).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure

from krefinery import files
from krefinery.analysis import stats
from krefinery.analysis.underfit import DISAGREEMENT_KEY, FIT_KEY
from krefinery.config import Config
from krefinery.outputs import charts, report
from krefinery.outputs.summaries import SummaryWriter

STUDY = "study.json"
CHART = "study.png"
METRICS = ("val_accuracy", "test_accuracy")
# Verdicts are printed for the test split: validation is what selection looked at.
VERDICT_METRIC = "test_accuracy"
SHORT = {"val_accuracy": "val", "test_accuracy": "test"}


def _figures(entries: Sequence[dict[str, Any]], key: str) -> dict[str, Any] | None:
    values = [e.get(key) for e in entries]
    if any(v is None for v in values):
        return None
    return {"values": values, **stats.summarize(values).to_dict()}


def _summary_of(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {key: _figures(entries, key) for key in (*METRICS, FIT_KEY, DISAGREEMENT_KEY)}


def study_record(config: Config, runs: Sequence[dict[str, Any]], workdir: Path) -> dict[str, Any]:
    """The `study.json` record of the repeats finished so far (`runs`: their results)."""
    generations = []
    for k in range(1, config.generations + 1):
        entries = [run["generations"][k - 1] for run in runs]
        generations.append({"generation": k, **_summary_of(entries)})
    controls = [run.get("control") for run in runs]
    with_control = bool(runs) and None not in controls
    # A diverged control is no result: it leaves its repeat out of the control's figures
    # and of the generation 2 - control pairs; the other comparisons keep every repeat.
    diverged = [r for r, c in enumerate(controls) if with_control and c.get("diverged")]
    paired = [r for r in range(len(runs)) if with_control and r not in diverged]
    control = None
    if paired:
        control = {**_summary_of([controls[r] for r in paired]), "repeats": paired}
    every = list(range(len(runs)))
    comparisons = []
    for metric in METRICS:
        first = [run["generations"][0][metric] for run in runs]
        for k in range(2, config.generations + 1):
            later = [run["generations"][k - 1][metric] for run in runs]
            comparisons.append(_comparison(f"generation {k}", "generation 1", metric, later, first, every))
        if control is not None:
            second = [runs[r]["generations"][1][metric] for r in paired]
            twins = [controls[r][metric] for r in paired]
            comparisons.append(_comparison("generation 2", "control", metric, second, twins, paired))
    best_run = max(range(len(runs)), key=lambda r: _best(runs[r])["val_accuracy"])
    best = _best(runs[best_run])
    return {
        "dataset": config.dataset,
        "config": config.to_dict(),
        "repeats": len(runs),
        "seeds": [run["config"]["seed"] for run in runs],
        "split_seed": config.resolved_split_seed,
        "confidence": stats.CONFIDENCE,
        "generations": generations,
        "control": control,
        "control_diverged": diverged if with_control else None,
        "comparisons": comparisons,
        "best": {
            "repeat": best_run,
            "generation": best["generation"],
            "val_accuracy": best["val_accuracy"],
            "test_accuracy": best["test_accuracy"],
            "workdir": runs[best_run]["workdir"],
        },
        "runs": [run["workdir"] for run in runs],
        "finished": len(runs) == config.repeats,
        "workdir": os.fspath(workdir),
    }


def _best(run: dict[str, Any]) -> dict[str, Any]:
    return next(g for g in run["generations"] if g["generation"] == run["best_generation"])


def _comparison(
    a: str, b: str, metric: str, xs: list[float], ys: list[float], repeats: list[int]
) -> dict[str, Any]:
    return {"a": a, "b": b, "metric": metric, "repeats": repeats, **stats.compare(xs, ys).to_dict()}


def control_note(record: dict[str, Any]) -> str | None:
    """What a diverged control did to the study, in a sentence; None if no control diverged."""
    diverged = record.get("control_diverged")
    if not diverged:
        return None
    which = ", ".join(map(str, diverged))
    cause = "its loss or weights became NaN or infinite"
    if record["control"] is None:
        return (
            f"The control diverged in every repeat ({cause}): it is no result, so there is no "
            "control row and no generation 2 - control comparison; the other comparisons stand."
        )
    kept = len(record["control"]["repeats"])
    return (
        f"The control diverged in repeat(s) {which} ({cause}): it is no result, left out of "
        f"the control row and of generation 2 - control, which pairs the other {kept} "
        "repeat(s); the other comparisons pair every repeat."
    )


def _mean_sd(figures: dict[str, Any] | None) -> str:
    if figures is None:
        return "-"
    if figures["sd"] is None:
        return f"{figures['mean']:.4f}"
    return f"{figures['mean']:.4f} ± {figures['sd']:.4f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


def verdict_line(comparison: dict[str, Any]) -> str:
    """`generation 2 vs generation 1 (test accuracy): better, +1.20 points, 95% CI ...`."""
    name = f"{comparison['a']} vs {comparison['b']} ({comparison['metric'].replace('_', ' ')})"
    points = f"{100 * comparison['mean']:+.2f} points"
    if comparison["low"] is None:
        return f"{name}: {comparison['verdict']} ({points}, one pair)"
    return (
        f"{name}: {comparison['verdict']}, {points}, 95% CI {100 * comparison['low']:+.2f} to "
        f"{100 * comparison['high']:+.2f} over {comparison['n']} paired repeats"
    )


def format_study(record: dict[str, Any]) -> str:
    """The printed study: per-generation table, paired comparisons, one verdict per comparison."""
    seeds = ", ".join(map(str, record["seeds"]))
    lines = [
        f"Study: {record['repeats']} repeat(s), training seeds {seeds}, splits from seed "
        f"{record['split_seed']}; mean ± sd over repeats",
        "",
    ]
    header = ("generation", "val acc", "test acc", "train fit", "labels wrong")
    keys = (*METRICS, FIT_KEY, DISAGREEMENT_KEY)
    rows = [
        (str(g["generation"]), *(_mean_sd(g[key]) for key in keys)) for g in record["generations"]
    ]
    if record["control"] is not None:
        rows.append(("control", *(_mean_sd(record["control"][key]) for key in keys)))
    lines += report.table(header, rows)
    lines += [
        "train fit: accuracy on its own un-augmented training images; labels wrong: share of "
        "the refined labels it hands on whose argmax is not the ground truth.",
        "",
    ]
    header = ("comparison (paired)", "metric", "mean diff", "95% CI", "verdict")
    rows = [
        (
            f"{c['a']} - {c['b']}",
            SHORT[c["metric"]],
            _signed(c["mean"]),
            "-" if c["low"] is None else f"[{c['low']:+.4f}, {c['high']:+.4f}]",
            c["verdict"],
        )
        for c in record["comparisons"]
    ]
    lines += report.table(header, rows)
    note = control_note(record)
    if note is not None:
        lines += ["", note]
    lines += ["", "Verdicts (test accuracy; better/worse: the 95% interval excludes 0):"]
    lines += [
        f"  {verdict_line(c)}" for c in record["comparisons"] if c["metric"] == VERDICT_METRIC
    ]
    best = record["best"]
    lines += [
        "",
        f"Best generation by validation accuracy: generation {best['generation']} of repeat "
        f"{best['repeat']} (val {best['val_accuracy']:.4f}, test {best['test_accuracy']:.4f}).",
        f"Study in {record['workdir']}/{STUDY}; each repeat's run in its repeat_<r>/ folder.",
    ]
    return "\n".join(lines)


def study_chart(record: dict[str, Any], runs: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Validation and test accuracy by generation, side by side, written to `path`
    (study.png): one thin line per repeat, the mean with its 95% interval as a thick
    one, the control's repeats and mean as their own markers."""
    figure = Figure(figsize=(10, 3.8), layout="constrained")
    for index, metric in enumerate(METRICS):
        _draw_study(figure.add_subplot(1, 2, index + 1), record, runs, metric, fontsize=8)
    figure.suptitle(f"{record['dataset']}: {record['repeats']} repeat(s)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    files.atomic_write(path, lambda temporary: temporary.write_bytes(buffer.getvalue()))


def study_card_pngs(record: dict[str, Any], runs: Sequence[dict[str, Any]]) -> dict[str, bytes]:
    """study.png's two charts, one per metric, each at the size of a TensorBoard card
    (`charts.CARD_SIZE`), so each is shown at its own size: `{metric: PNG bytes}`."""
    pngs = {}
    for metric in METRICS:
        figure = Figure(figsize=charts.CARD_SIZE)
        figure.subplots_adjust(**charts.AXES_BOX)
        axes = figure.add_subplot()
        _draw_study(axes, record, runs, metric, fontsize=6)
        axes.set_title(f"{metric.replace('_', ' ')}: {record['repeats']} repeat(s)", fontsize=9)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=charts.CARD_DPI)
        pngs[metric] = buffer.getvalue()
    return pngs


def _draw_study(axes, record: dict[str, Any], runs: Sequence[dict[str, Any]], metric: str, fontsize: int) -> None:
    steps = [g["generation"] for g in record["generations"]]
    for r, run in enumerate(runs):
        axes.plot(
            steps,
            [g[metric] for g in run["generations"]],
            color="tab:blue",
            alpha=0.35,
            linewidth=0.8,
            label="each repeat" if r == 0 else None,
        )
    means = [g[metric]["mean"] for g in record["generations"]]
    errors = _errors(g[metric] for g in record["generations"])
    # An interval of few repeats can reach past 1, which no accuracy can: the axis stops at 1.
    control = record["control"]
    figures = [g[metric] for g in record["generations"]] + ([control[metric]] if control else [])
    beyond = any(f["high"] is not None and f["high"] > 1.0 for f in figures)
    axes.errorbar(
        steps, means, yerr=errors, color="tab:blue", linewidth=2.5, capsize=4, marker="o",
        label="mean" if errors is None else "mean, 95% CI" + (" (cut at 1)" if beyond else ""),
    )
    if control is not None:
        x = record["generations"][1]["generation"] + 0.12
        axes.plot(
            [x] * len(control[metric]["values"]), control[metric]["values"], linestyle="none",
            marker="x", color="tab:red", alpha=0.6,
        )
        axes.errorbar(
            [x], [control[metric]["mean"]], yerr=_errors([control[metric]]), color="tab:red",
            marker="D", capsize=4, linestyle="none", label="control (gen 2 seed, ground truth)",
        )
    if beyond:
        axes.set_ylim(top=1.0)
    axes.set_xticks(steps)
    axes.tick_params(labelsize=fontsize)
    axes.set_xlabel("generation", fontsize=fontsize)
    axes.set_ylabel(metric.replace("_", " "), fontsize=fontsize)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=fontsize)


def _errors(figures) -> list[list[float]] | None:
    figures = list(figures)
    if any(f["low"] is None for f in figures):
        return None
    return [[f["mean"] - f["low"] for f in figures], [f["high"] - f["mean"] for f in figures]]


# In the `generation` group, the second of Time Series, which TensorBoard expands, after
# each repeat's accuracy chart: one card per metric.
CHART_TAG = "generation/study_{metric}"
TABLE_TAG = "study/table"
_TABLE_DESCRIPTION = "The study's printed report: per-generation figures, the control, paired comparisons. Step = 0."


def chart_tag(metric: str) -> str:
    return CHART_TAG.format(metric=metric)


def write_tensorboard(record: dict[str, Any], runs: Sequence[dict[str, Any]], logdir: str | os.PathLike) -> None:
    """The study as the TensorBoard sub-run `logdir` (`<workdir>/tensorboard/study`): its
    charts and its report. No scalars: a figure per generation would be a line of 2-3
    points, which TensorBoard's default smoothing bends."""
    with SummaryWriter(logdir) as writer:
        for metric, png in study_card_pngs(record, runs).items():
            description = (
                f"The study's {metric.replace('_', ' ')} by generation (as in study.png): each "
                "repeat a thin line, the mean with its 95% interval a thick one, the control "
                "(generation 2's seed on the ground truth) beside generation 2. Step = 0."
            )
            writer.image_png(chart_tag(metric), png, 0, description=description)
        writer.text(TABLE_TAG, "```\n" + format_study(record) + "\n```", 0, description=_TABLE_DESCRIPTION)
