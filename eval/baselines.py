"""The reference rows (``PROTOCOL["baselines"]``), scored by the same code as the model."""

from __future__ import annotations

import random
from collections.abc import Callable

from eval.protocol import BASELINES, METRIC_KEYS


def score_baselines(
    references: list[list[str]],
    samples: list[list[list[str]]],
    frequent: list[str] | None,
    new_metrics: Callable,
    k: int,
    seed: int,
    per_context: dict[str, dict[str, list[float]]] | None = None,
) -> dict[str, dict]:
    """The reference rows (PROTOCOL["baselines"]), each with the keys of ``metrics``, scored by
    accumulators from ``new_metrics()`` (the protocol's ``ResponseMetrics``); each row's
    per-context values go into ``per_context`` (if given) under its name."""
    rng = random.Random(seed)
    n = len(references)
    candidates: dict[str, list[list[list[str]]]] = {
        "random_responses": [[references[rng.randrange(n)] for _ in range(k)] for _ in range(n)],
    }
    if frequent is not None:
        candidates["frequent_response"] = [[frequent] * k for _ in range(n)]
    if n > 1:
        # A random derangement: example order[j] gets the samples of example order[j + 1].
        order = list(range(n))
        rng.shuffle(order)
        successor = {i: order[(j + 1) % n] for j, i in enumerate(order)}
        candidates["shuffled_context"] = [samples[successor[i]] for i in range(n)]
    out = {}
    for name in BASELINES:
        if name not in candidates:
            continue
        metrics = new_metrics()
        rows = [
            metrics.add(hyps, ref) for ref, hyps in zip(references, candidates[name], strict=True)
        ]
        scores = metrics.result()
        if per_context is not None:
            per_context[name] = {k: [r.get(k) for r in rows] for k in rows[0]}
        out[name] = {key: scores.get(key) for key in METRIC_KEYS}
    return out
