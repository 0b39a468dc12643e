"""Seed aggregation and significance (eval/significance.py, python -m eval.report --group)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from eval.report import main as report_main
from eval.report import seeds_table
from eval.significance import (
    Comparison,
    aligned,
    contexts_path,
    mean_std,
    paired_bootstrap,
    read_contexts,
    welch,
)
from tests.test_eval_cli import run_cli, setup  # noqa: F401  (the tiny checkpoints fixture)


def test_mean_and_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([4.0]) == (4.0, 0.0)


def test_welch_by_hand():
    # means 2 and 5, variances 1 and 1, n 3 and 3: t = -3 / sqrt(2/3), Welch df = 4
    t = 3 / math.sqrt(2 / 3)
    assert welch([1, 2, 3], [4, 5, 6]) == pytest.approx(2 * stats.t.sf(t, 4), rel=1e-12)
    assert welch([1, 2, 3], [4, 5, 6]) == pytest.approx(0.0213116, abs=1e-7)
    assert welch([10.1, 10.5, 9.8], [9.0, 9.4, 9.9]) == pytest.approx(
        stats.ttest_ind([10.1, 10.5, 9.8], [9.0, 9.4, 9.9], equal_var=False).pvalue
    )
    assert math.isnan(welch([1.0], [2.0, 3.0]))  # one seed: no test
    # no spread on either side: no test (scipy would say p 0 for any two different values)
    assert math.isnan(welch([200.0, 200.0, 200.0], [145.0, 145.0, 145.0]))
    assert math.isnan(welch([0.3, 0.3], [0.3, 0.3]))
    # spread on one side is enough: t = -3 / sqrt(1/3), Welch df = 2 (scipy warns of precision
    # loss for the constant side, needlessly: its variance is exactly 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = welch([1, 1, 1], [3, 4, 5])
    assert p == pytest.approx(2 * stats.t.sf(3 / math.sqrt(1 / 3), 2), rel=1e-12)


def test_paired_bootstrap_by_hand():
    # every context 0.5 better: every resample says 0.5
    a = {"a_bow_r": np.array([1.0, 2.0, 3.0, 4.0])}
    b = {"a_bow_r": a["a_bow_r"] - 0.5}
    assert paired_bootstrap("a_bow_r", [a], [b], resamples=500) == pytest.approx((0.5, 0.5, 0.5))
    # two contexts: a resample is (0, 0), (0, 1), (1, 0) or (1, 1), each with probability 1/4,
    # so the 2.5th and 97.5th percentiles are the two extremes
    a = {"nll": np.array([2.0, 4.0]), "tokens": np.array([1.0, 3.0])}
    b = {"nll": np.array([1.0, 3.0]), "tokens": np.array([1.0, 3.0])}
    e = math.e
    observed, low, high = paired_bootstrap("ppl", [a], [b], resamples=1000, seed=0)
    assert observed == pytest.approx(math.exp(6 / 4) - math.exp(4 / 4))  # exp(sum nll / tokens)
    assert (low, high) == pytest.approx((math.exp(4 / 3) - e, math.exp(2) - e))
    # several seeds: each side's value is the mean over its seeds
    a2 = {"a_bow_r": np.array([3.0, 5.0])}
    b2 = {"a_bow_r": np.array([1.0, 1.0])}
    b3 = {"a_bow_r": np.array([3.0, 3.0])}
    assert paired_bootstrap("a_bow_r", [a2], [b2, b3], resamples=200)[0] == pytest.approx(2.0)


def test_verdict_needs_both_tests():
    assert Comparison("a_bow_r", 1.0, 0.01, (0.2, 1.5)).verdict("A", "B") == "A better"
    assert Comparison("a_bow_r", 1.0, 0.20, (0.2, 1.5)).verdict("A", "B") == "level"  # p
    assert Comparison("a_bow_r", 1.0, 0.01, (-0.1, 1.5)).verdict("A", "B") == "level"  # CI
    # no CI over contexts: never "better", but what the seeds say is not hidden behind "level"
    assert (
        Comparison("active_units", 144.0, 0.003, None).verdict("A", "B") == "seeds only: A higher"
    )
    assert Comparison("a_bow_r", -1.0, 0.01, None).verdict("A", "B") == "seeds only: B higher"
    assert Comparison("a_bow_r", 1.0, 0.20, None).verdict("A", "B") == "seeds only: level"
    assert Comparison("a_bow_r", 1.0, math.nan, (0.2, 1.5)).verdict("A", "B") == "level"
    assert Comparison("ppl", -2.0, 0.01, (-3.0, -1.0)).verdict("A", "B") == "A better"
    assert Comparison("ppl", 2.0, 0.01, (1.0, 3.0)).verdict("A", "B") == "B better"
    assert Comparison("kl", 2.0, 0.01, (1.0, 3.0)).verdict("A", "B") == "A higher"
    # the CI on the other side of 0 from the seed means: no claim
    assert Comparison("a_bow_r", 1.0, 0.01, (-2.0, -1.0)).verdict("A", "B") == "level"


def test_contexts_are_paired_by_dialog_and_turn():
    one = {"keys": ["d1:0", "d1:1", "d2:0"], "scores": {"x": [1.0, 2.0, 3.0]}}
    two = {"keys": ["d2:0", "d1:0"], "scores": {"x": [30.0, 10.0]}}
    a, b = aligned([one, two])
    assert a["x"].tolist() == [1.0, 3.0] and b["x"].tolist() == [10.0, 30.0]
    with pytest.raises(ValueError, match="no test context"):
        aligned([one, {"keys": ["d9:0"], "scores": {"x": [1.0]}}])


def test_evaluation_writes_per_context_scores_that_give_its_metrics(setup):  # noqa: F811
    out = setup["base"] / "contexts" / "one.json"
    result = run_cli(setup, out)
    contexts = read_contexts(out)
    assert contexts_path(out).name == "one.contexts.json" and contexts is not None
    assert len(contexts["keys"]) == result["examples"] == len(set(contexts["keys"]))
    scores, m = contexts["scores"], result["metrics"]
    assert math.exp(sum(scores["nll"]) / sum(scores["tokens"])) == pytest.approx(m["ppl"], rel=1e-5)
    elbo = math.exp((sum(scores["nll"]) + sum(scores["kl"])) / sum(scores["tokens"]))
    assert elbo == pytest.approx(m["elbo_ppl"], rel=1e-5)
    for key in ("kl", "bleu4_r", "zhao_bleu3_p", "a_bow_r", "e_bow_p", "degenerate_rate"):
        assert np.mean(scores[key]) == pytest.approx(m[key], rel=1e-5, abs=1e-9), key
    # the random test responses' reference metrics are there too, and give that baseline row
    random_rows = result["baselines"]["random_responses"]
    columns = sorted(k.split(":")[1] for k in scores if k.startswith("random_responses:"))
    assert columns == sorted(k for k in scores if k.startswith(("bleu", "zhao_bleu", "a_bow",
                                                                 "e_bow", "g_bow")))  # fmt: skip
    for key in ("bleu4_r", "zhao_bleu3_r", "a_bow_r", "e_bow_r"):
        mean = np.mean(scores[f"random_responses:{key}"])
        assert mean == pytest.approx(random_rows[key], rel=1e-5, abs=1e-9), key


def test_report_groups_mean_std_p_and_ci(setup, capsys):  # noqa: F811
    base = setup["base"] / "groups"
    bn = [base / f"bn-s{s}.json" for s in (0, 1)]
    cvae = [base / f"cvae-s{s}.json" for s in (0, 1)]
    for seed, path in enumerate(bn):
        run_cli(setup, path, "--seed", str(seed))
    for seed, path in enumerate(cvae):
        run_cli(setup, path, "--seed", str(seed), "--checkpoint", str(setup["cvae"]))
    capsys.readouterr()
    argv = ["--group", "bn", *map(str, bn), "--group", "cvae", *map(str, cvae)]
    assert report_main([*argv, "--bootstrap-resamples", "300"]) == 0
    text = capsys.readouterr().out

    def per_seed(metric: str, group: list) -> list[float]:
        return [json.loads(p.read_text())["metrics"][metric] for p in group]

    def comparison_cells(metric: str) -> list[str]:  # | metric | A − B | p | CI | verdict |
        row = next(r for r in text.splitlines() if r.startswith(f"| {metric} |") and "[" in r)
        return [c.strip() for c in row.split("|")[1:-1]]

    mean, std = mean_std(per_seed("a_bow_r", bn))
    assert text.splitlines()[0] == "| metric | bn (2 seeds) | cvae (2 seeds) |"
    assert text.count("| a_bow_r |") == 3  # the seeds table, the comparison, the baseline row
    seeds_row = next(r for r in text.splitlines() if r.startswith("| a_bow_r |") and "±" in r)
    assert f"{mean:.2f} ± {std:.2f}" in seeds_row
    # the sampled responses vary with the evaluation's seed, so their metrics have a spread
    cells = comparison_cells("a_bow_r")
    assert float(cells[2]) == pytest.approx(
        welch(per_seed("a_bow_r", bn), per_seed("a_bow_r", cvae)), rel=1e-2
    )
    assert cells[4] in ("level", "bn better", "cvae better")
    # the KL does not (closed form, one checkpoint per group, only the evaluation's seed
    # differs): no Welch test, so level, though its bootstrap interval excludes 0
    cells = comparison_cells("kl")
    kl = [per_seed("kl", bn), per_seed("kl", cvae)]
    assert len(set(kl[0])) == len(set(kl[1])) == 1 and kl[0] != kl[1]
    low, high = map(float, cells[3].strip("[]").split(","))
    assert (low > 0 or high < 0) and cells[2] == "–" and cells[4] == "level"
    assert "**bn − cvae**" in text and "paired bootstrap" in text
    # each group against the random test responses: the row's value, the margin of the seeds'
    # mean over it, and a CI around that margin
    random_row = json.loads(bn[0].read_text())["baselines"]["random_responses"]["a_bow_r"]
    header = "| metric | random_responses | bn − random_responses | cvae − random_responses |"
    table = text[text.index(header) :].split("\n\n")[0].splitlines()
    cells = [c.strip() for c in next(r for r in table if r.startswith("| a_bow_r |")).split("|")]
    cells = cells[1:-1]
    assert float(cells[1]) == pytest.approx(random_row, abs=0.006)
    for group, cell in zip((bn, cvae), cells[2:], strict=True):
        margin, low, high, side = cell.replace("[", "").replace("]", "").replace(",", "").split()
        assert float(margin) == pytest.approx(mean_std(per_seed("a_bow_r", group))[0] - random_row,
                                              abs=0.006)  # fmt: skip
        assert float(low) <= float(margin) <= float(high)
        assert side == ("above" if float(low) > 0 else "below" if float(high) < 0 else "level")

    # results of the two protocols are not compared
    paper = base / "bn-paper.json"
    paper.write_text(json.dumps({**json.loads(bn[0].read_text()), "protocol": "paper"}))
    with pytest.raises(SystemExit) as stopped:
        report_main([*argv, "--group", "paper", str(paper)])
    assert stopped.value.code == 2
    assert "the paper and the project protocol go in separate" in capsys.readouterr().err

    # a result without per-context scores: no CI, so level, and said so
    contexts_path(cvae[1]).unlink()
    assert report_main([*argv, "--bootstrap-resamples", "50"]) == 0
    text = capsys.readouterr().out
    assert "No per-context scores" in text and str(cvae[1]) in text
    compared = [r for r in text.splitlines() if r.count("|") == 6 and "±" not in r]
    without_ci = [r for r in compared if r.split("|")[4].strip() == "–"]
    assert without_ci and all("| seeds only: " in r for r in without_ci)
    # the group without every contexts file is left out of the table against the baseline row
    assert "| metric | random_responses | bn − random_responses |\n" in text


def test_seeds_table_counts_one_seed_as_one():
    result = {"metrics": {"ppl": 33.0}}
    header = seeds_table({"bn": [result, result], "cvae": [result]}).splitlines()[0]
    assert header == "| metric | bn (2 seeds) | cvae (1 seed) |"
