"""Whether one model beats another: over training seeds and over test contexts.

A claim "A beats B" on a metric needs both (docs/results.md's rule):

* :func:`welch` -- Welch's t-test (scipy.stats.ttest_ind, equal_var=False) on the metric's value
  per training seed of A against B's: p < 0.05.
* :func:`paired_bootstrap` -- a paired bootstrap over the test contexts: the contexts are drawn
  with replacement, the same draw for A and B, and the metric recomputed for each (averaged over
  each model's seeds); the 95% percentile interval of A - B must exclude 0.

Otherwise the verdict is "level". Both need the result JSONs of ``python -m eval.switchboard``,
the bootstrap also their per-context scores (``X.contexts.json`` beside ``X.json``; written by
every evaluation with ``--out``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from model.files import atomic_write_text

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 2000
# Corpus-level metrics computed from per-context sums, not means: (numerator terms, per token).
RATIO_METRICS = {"ppl": ("nll",), "elbo_ppl": ("nll", "kl")}
# The direction in which a metric is better; a metric not listed (KL, AU, MI, distinct-n of a
# model that loops less...) is reported as higher/lower only.
LOWER_IS_BETTER = {"ppl", "elbo_ppl", "degenerate_rate"}
HIGHER_IS_BETTER_PREFIXES = ("bleu", "zhao_bleu", "a_bow", "e_bow", "g_bow")


def reference_metric(metric: str) -> bool:
    """Whether the metric scores responses against the reference (BLEU, bag-of-words), so that
    a baseline row of responses has it too."""
    return metric.startswith(HIGHER_IS_BETTER_PREFIXES)


def baseline_column(row: str, metric: str) -> str:
    """The per-context column of a baseline row's metric (``random_responses:a_bow_r``), kept in
    the model's contexts file beside its own columns."""
    return f"{row}:{metric}"


def contexts_path(result_path: str | Path) -> Path:
    """Where the per-context scores of the result ``X.json`` are: ``X.contexts.json``."""
    path = Path(result_path)
    return path.with_name(path.stem + ".contexts.json")


def write_contexts(
    path: Path, keys: Sequence[str], columns: Mapping[str, Sequence[float | None]]
) -> None:
    """The per-context scores: ``{"keys": [dialog:turn, ...], "scores": {metric: [...]}}``,
    compact (one line), floats to 6 significant digits."""
    for name, values in columns.items():
        if len(values) != len(keys):
            raise ValueError(f"{name}: {len(values)} values for {len(keys)} contexts")
    scores = {
        k: [None if v is None else float(f"{v:.6g}") for v in vs] for k, vs in columns.items()
    }
    atomic_write_text(
        path, json.dumps({"keys": list(keys), "scores": scores}, separators=(",", ":"))
    )


def read_contexts(result_path: str | Path) -> dict | None:
    """The per-context scores beside a result, or None when it has none."""
    path = contexts_path(result_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return {"keys": list(data["keys"]), "scores": dict(data["scores"])}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a per-context scores file: {e}") from e


# ----------------------------------------------------------------------------- over seeds
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def welch(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p of Welch's t-test of A's per-seed values against B's (NaN with fewer than
    two seeds on a side, or when every seed on both sides has the same value: no spread to test
    against, where scipy gives p 0 for any difference of the means, e.g. 200 active units on
    every seed of both)."""
    if len(a) < 2 or len(b) < 2 or (len(set(a)) == 1 and len(set(b)) == 1):
        return math.nan
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


# -------------------------------------------------------------------------- over contexts
def _statistic(metric: str, columns: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    """The metric over the contexts ``idx`` [R, C] of one run: [R]."""
    if metric in RATIO_METRICS:
        num = sum(columns[k][idx].sum(axis=1) for k in RATIO_METRICS[metric])
        return np.exp(num / columns["tokens"][idx].sum(axis=1))
    # (a context without a score for the metric is left out, as the result's mean leaves it)
    return np.nanmean(columns[metric][idx], axis=1)


def has_per_context(metric: str, runs: Sequence[dict[str, np.ndarray]]) -> bool:
    """Whether every run has the metric's per-context columns (the likelihood terms complete,
    a score for some context)."""
    if metric in RATIO_METRICS:
        needed = (*RATIO_METRICS[metric], "tokens")
        return all(k in run and not np.isnan(run[k]).any() for run in runs for k in needed)
    return all(metric in run and not np.isnan(run[metric]).all() for run in runs)


def paired_bootstrap(
    metric: str,
    runs_a: Sequence[dict[str, np.ndarray]],
    runs_b: Sequence[dict[str, np.ndarray]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    chunk: int = 100,
) -> tuple[float, float, float]:
    """(A - B on all contexts, 2.5th and 97.5th percentile of A - B over ``resamples`` paired
    resamples of the contexts). Each run is {column: [C] array} over the same C contexts in the
    same order; A's value is the mean over its runs (seeds), as is B's."""
    n = len(next(iter(runs_a[0].values())))
    rng = np.random.default_rng(seed)

    def diff(idx: np.ndarray) -> np.ndarray:
        a = np.mean([_statistic(metric, r, idx) for r in runs_a], axis=0)
        b = np.mean([_statistic(metric, r, idx) for r in runs_b], axis=0)
        return a - b

    observed = float(diff(np.arange(n)[None, :])[0])
    diffs = []
    for start in range(0, resamples, chunk):
        diffs.append(diff(rng.integers(0, n, size=(min(chunk, resamples - start), n))))
    low, high = np.percentile(np.concatenate(diffs), [2.5, 97.5])
    return observed, float(low), float(high)


def aligned(contexts: Sequence[dict]) -> list[dict[str, np.ndarray]]:
    """The per-context columns of several results restricted to the contexts all of them
    scored, in one order (pairing by dialog and turn)."""
    common = set(contexts[0]["keys"]).intersection(*(c["keys"] for c in contexts[1:]))
    order = [k for k in contexts[0]["keys"] if k in common]
    if not order:
        raise ValueError("the results share no test context")
    out = []
    for c in contexts:
        position = {k: i for i, k in enumerate(c["keys"])}
        rows = np.array([position[k] for k in order])
        out.append(
            {
                name: np.array([np.nan if v is None else v for v in values], dtype=np.float64)[rows]
                for name, values in c["scores"].items()
            }
        )
    return out


# --------------------------------------------------------------------------------- verdict
def better_direction(metric: str) -> int:
    """+1 when higher is better, -1 when lower is, 0 when neither."""
    if metric in LOWER_IS_BETTER:
        return -1
    if metric.startswith(HIGHER_IS_BETTER_PREFIXES):
        return 1
    return 0


@dataclass
class Comparison:
    metric: str
    difference: float  # mean over A's seeds - mean over B's
    p: float  # Welch over seeds (NaN: too few seeds)
    ci: tuple[float, float] | None  # bootstrap over contexts (None: no per-context scores)

    @property
    def significant(self) -> bool:
        """p < 0.05 and the CI excludes 0 on the side of the difference (both needed)."""
        if self.ci is None or not self.p < ALPHA:
            return False
        return self.ci[0] > 0 < self.difference or self.ci[1] < 0 > self.difference

    def verdict(self, a: str, b: str) -> str:
        higher = self.difference > 0
        if self.ci is None:
            # No per-context scores (active units, MI): only the seeds speak, and a claim needs
            # both tests, so the verdict says which one it rests on instead of "level".
            if not self.p < ALPHA:
                return "seeds only: level"
            return f"seeds only: {a if higher else b} higher"
        if not self.significant:
            return "level"
        direction = better_direction(self.metric)
        if direction == 0:
            return f"{a} {'higher' if higher else 'lower'}"
        winner = a if higher == (direction > 0) else b
        return f"{winner} better"
