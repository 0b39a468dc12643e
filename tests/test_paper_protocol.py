"""``--protocol paper``: the test routine behind the paper's Table 4 (eval/paper.py)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from gensim.models import KeyedVectors

from eval.paper import (
    BLEU_WEIGHTS,
    PaperBowScorer,
    PaperResponseMetrics,
    is_scored,
    nltk35_sentence_bleu,
    paper_bleu,
    reference_tokens,
)
from eval.report import markdown_table, results_table
from eval.switchboard import main
from tests.conftest import ROOT
from tests.test_eval_cli import setup  # noqa: F401  (the tiny checkpoint and dialogs)

FIXTURE = ROOT / "tests" / "fixtures" / "nltk35_bleu.json"


def nltk35_cases():
    data = json.loads(FIXTURE.read_text())
    assert data["nltk"] == "3.5"
    return data["cases"]


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_bleu_equals_nltk_3_5_bit_for_bit(order):
    """213 pairs scored once by nltk==3.5 (tests/fixtures/make_nltk35_bleu.py): the same floats,
    and an exception exactly where NLTK raised one."""
    for case in nltk35_cases():
        expected = case["bleu"][order - 1]
        ref, hyp = case["reference"], case["hypothesis"]
        if expected is None:
            with pytest.raises(ZeroDivisionError):
                nltk35_sentence_bleu(ref, hyp, BLEU_WEIGHTS[order])
            assert paper_bleu(ref, hyp, order) == 0.0
        else:
            assert nltk35_sentence_bleu(ref, hyp, BLEU_WEIGHTS[order]) == expected, case
            assert paper_bleu(ref, hyp, order) == 100 * expected


def test_bleu_known_values():
    # A one-word sample makes NLTK 3.5 divide by ln(1) = 0: the script scores it 0.
    assert paper_bleu(["yeah"], ["yeah"], 4) == 0.0
    # No matching word: 0 before any smoothing; an empty sample too.
    assert paper_bleu(["i", "think", "so"], ["no", "way"], 2) == 0.0
    assert paper_bleu(["i", "think", "so"], [], 1) == 0.0
    # "um - hum" against "uh - huh": only "-" matches, yet method7 lifts BLEU-4 above 100.
    assert paper_bleu("um - hum".split(), "uh - huh".split(), 4) == pytest.approx(344.6978017458697)
    # An exact 3-word match: BLEU-1 = (p1 + 1 + p1 + p2) / 3 = (1 + 1 + 1 + 1) / 3 = 4/3.
    assert paper_bleu("uh - huh".split(), "uh - huh".split(), 1) == pytest.approx(400 / 3)


def test_scored_examples_skip_the_first_and_the_last_response():
    assert [t for t in range(5) if is_scored(t, 5)] == [1, 2, 3]
    assert [t for t in range(2) if is_scored(t, 2)] == []


def test_reference_is_cut_to_38_words_with_unknown_words_as_unk():
    words = [f"w{i}" for i in range(45)]
    vocab = {f"w{i}" for i in range(45) if i != 3}
    ref = reference_tokens(words, vocab)
    assert len(ref) == 38 and ref[3] == "<unk>" and ref[-1] == "w37"


def keyed(vectors: dict[str, list[float]]) -> KeyedVectors:
    kv = KeyedVectors(vector_size=2)
    kv.add_vectors(list(vectors), np.array(list(vectors.values()), dtype=np.float32))
    return kv


def test_bag_of_words_is_cos_plus_one_over_two_on_known_words_only():
    scorer = PaperBowScorer(keyed({"up": [0.0, 1.0], "down": [0.0, -1.0], "right": [1.0, 0.0]}))
    metrics = PaperResponseMetrics(scorer)
    # Samples: the same direction (cos 1 -> 100), opposite (cos -1 -> 0), orthogonal (50), and
    # one without a known word (left out of the mean and the max, not scored 0).
    scores = metrics.add([["up"], ["down"], ["right", "zzz"], ["zzz"]], ["up", "qqq"])
    assert scores["a_bow_p"] == pytest.approx(50.0) and scores["a_bow_r"] == pytest.approx(100.0)
    # Extrema of "up right": per dimension the value of largest magnitude, here (1, 1).
    diagonal = 100 * (math.cos(math.pi / 4) + 1) / 2
    scores = metrics.add([["up", "right"]], ["up"])
    assert scores["e_bow_p"] == pytest.approx(diagonal)  # extrema (1, 1) against (0, 1)
    assert scores["a_bow_p"] == pytest.approx(diagonal)  # mean (0.5, 0.5) against (0, 1)
    # A reference without a known word: the context is left out of the bag-of-words means.
    scores = metrics.add([["up"]], ["<unk>"])
    assert "a_bow_p" not in scores and metrics.bow_unscored == 1
    result = metrics.result()
    # means over the 2 scored contexts
    assert result["a_bow_r"] == pytest.approx((100.0 + diagonal) / 2)
    assert result["a_bow_p"] == pytest.approx((50.0 + diagonal) / 2)
    # BLEU averages over all 3 contexts; a one-word sample scores 0.
    assert result["bleu1_r"] == pytest.approx(0.0 + paper_bleu(["up"], ["up", "right"], 1) / 3)


def test_cli_paper_protocol(setup, capsys):  # noqa: F811
    out = setup["base"] / "paper" / "result.json"
    argv = ["--checkpoint", str(setup["ckpt"]), "--data", str(setup["data"])]
    argv += ["--glove", str(setup["glove"]), "--max-length", "8", "--no-progress"]
    assert main([*argv, "--protocol", "paper", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["protocol"] == "paper" and result["samples_per_context"] == 5
    assert result["config"]["protocol"] == "paper"
    # Dialogs of 6, 3 and 2 utterances: responses 1..n-2 are scored.
    assert result["examples"] == result["examples_available"] == 4 + 1 + 0
    rules = result["protocol_rules"]
    assert "cvae_cyc.py:649-651" in rules["examples"] and "Twitter" in rules["paper_differences"]
    m = result["metrics"]
    assert m["zhao_bleu3_p"] is None and m["g_bow_p"] is None
    assert 0 <= m["a_bow_p"] <= m["a_bow_r"] <= 100 and m["ppl"] > 1
    table = capsys.readouterr().out
    assert "| BN-VAE (paper) | 30.67 | – | 5.18 | – | – | – | 8.64 |" in table
    assert "BLEU-1 P / R" in table and markdown_table(result) in table
    # One table holds one protocol: the paper's rows never stand beside project numbers.
    project = setup["base"] / "paper" / "project.json"
    assert main([*argv, "--samples", "2", "--out", str(project)]) == 0
    with pytest.raises(ValueError, match="separate tables"):
        results_table({"a": result, "b": json.loads(project.read_text())})
    assert "(paper)" in results_table({"a": result})
    # A fine-tuned model (its training started from another checkpoint) is not shown beside the
    # paper, which is compared only with models before any fine-tuning.
    tuned = copy.deepcopy(result)
    tuned["protocol_rules"]["model"]["checkpoint_metadata"]["train_config"]["init_from"] = "x/best"
    assert "(paper)" not in markdown_table(tuned) and "Fine-tuned from x/best" in markdown_table(
        tuned
    )
    assert "(paper)" not in results_table({"a": result, "tuned": tuned})
    # the paper's protocol is 5 samples per context; anything else is refused, not mislabelled
    assert main([*argv, "--protocol", "paper", "--samples", "10", "--out", str(project)]) == 2


def test_docs_show_the_paper_protocol():
    from eval.protocol import PAPER_PROTOCOL, paper_differences_markdown, protocol_markdown

    docs = (ROOT / "docs" / "evaluation.md").read_text()
    assert protocol_markdown(PAPER_PROTOCOL) in docs
    assert paper_differences_markdown() in docs


def zhao_test_windows(rows: int, backward: int = 10) -> list[tuple[int, int]]:
    """(start, end) of the windows row[start:end] the test loader cuts from one dialog of
    ``rows`` rows (the marker first) at batch size 1, step 1 (data_utils.py:56-67), written out
    from the public code as it reads."""
    num_seg = rows - backward
    if num_seg > 0:
        starts = [0] * (backward - 2) + list(range(0, num_seg))
        ends = list(range(2, backward)) + list(range(backward, num_seg + backward))
    else:
        starts, ends = [0] * (rows - 2), list(range(2, rows))
    return [(s, e) for s, e in zip(starts, ends, strict=True) if s < rows - 1]


@pytest.mark.parametrize("turns", [1, 2, 3, 9, 10, 11, 25])
def test_scored_contexts_are_the_test_loaders(turns):
    """The responses scored and their context lengths equal the windows of Zhao's loader, the
    ones with the marker alone as context skipped (cvae_cyc.py:649-651)."""
    from eval.paper import CONTEXT_UTTERANCES
    from model.batch import dialog_batch
    from model.vocab import Vocabulary

    expected = {
        e - 2: e - 1 - s  # the response row[e-1] is turn e-2; its context is row[s:e-1]
        for s, e in zhao_test_windows(turns + 1)
        if e - 1 - s != 1
    }
    scored = [t for t in range(turns) if is_scored(t, turns)]
    assert scored == sorted(expected)
    if scored:
        dialog = [("A" if t % 2 else "B", [f"w{t}"]) for t in range(turns)]
        vocab = Vocabulary.build([tokens for _, tokens in dialog])
        batch = dialog_batch(
            [dialog], vocab, max_context=CONTEXT_UTTERANCES, spans=[(scored[0], scored[-1] + 1)]
        )
        assert batch.context_lengths.tolist() == [expected[t] for t in scored]
