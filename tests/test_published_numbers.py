"""The shipped checkpoint's numbers on a fixed slice, pinned: the first 200 examples of Zhao's
valid split, 3 samples per context, seed 0, float32 decoding (the evaluation's defaults but for
the slice). The values and tolerances are in tests/published_numbers.json, beside this file.

Changing them is a deliberate act: a change to the model, the data, the likelihood pass, the
decoding or a metric that moves a number must come with a commit that rewrites the JSON and
says why (the measurement, the command, the CPU).

The tolerances come from measurements: ppl, elbo_ppl and kl are sums of float32 computations
whose order depends on the CPU's kernels (thread count, AVX-512/AVX2/no vector extensions);
they moved by at most 1.2e-6 relative, and are pinned to 1e-5. The sampled responses did not
move at all (greedy decoding, fixed z draws), so the text metrics are pinned to 1e-9. The
decoding is float32 on every CPU: the evaluation never takes the service's bf16 default
("auto" picks bfloat16 on CPUs with AVX512-BF16, model.cvae.fast_decode_dtype), which would
make the numbers depend on the CPU.

The baseline rows and the most frequent training response (read from the whole training set)
are not part of the pinned metrics and are left out, to keep this under 30 s on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import eval.switchboard as evaluation
from eval.config import EvalConfig
from tests.conftest import require_shared_data

ROOT = Path(__file__).resolve().parents[1]
PINNED = json.loads((Path(__file__).parent / "published_numbers.json").read_text())


@pytest.mark.slow
def test_the_shipped_checkpoint_gives_the_pinned_numbers(monkeypatch):
    data = require_shared_data() / "zhao" / "valid.jsonl"
    monkeypatch.setattr(evaluation, "most_frequent_training_response", lambda config, tok: None)
    monkeypatch.setattr(evaluation, "score_baselines", lambda *args, **kwargs: {})
    config = EvalConfig(checkpoint=str(ROOT / PINNED["checkpoint"]), data=str(data),
                        samples=PINNED["samples"], seed=PINNED["seed"], limit=PINNED["examples"],
                        progress=False)  # fmt: skip
    assert config.decode_dtype == "float32" and config.decoding == "greedy"
    result = evaluation.evaluate(config)
    assert result["examples"] == PINNED["examples"]
    got = {k: result["metrics"][k] for k in PINNED["metrics"]}
    expected = {
        k: pytest.approx(v, rel=PINNED["relative_tolerance"][k], abs=1e-12)
        for k, v in PINNED["metrics"].items()
    }
    assert got == expected
