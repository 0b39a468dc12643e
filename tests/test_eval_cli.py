"""End-to-end runs of ``python -m eval.switchboard`` on a tiny randomly initialised checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from eval.config import EvalConfig, EvalError, repo_relative
from eval.protocol import METRIC_KEYS
from eval.report import markdown_table
from eval.switchboard import evaluate, main
from model.checkpoint import save_pretrained
from model.config import ModelConfig
from model.cvae import DialogCVAE
from model.text import normalize_utterance, tokenize
from model.vocab import Vocabulary
from tests.conftest import ROOT
from training.batching import plan_batches

DIALOGS = [
    [
        ["A", "Hi, how are you doing today?", ["greeting", [0, 0, 0, 0]]],
        ["B", "I'm fine, thanks. Uh, and you?", ["greeting", [0, 0, 0, 0]]],
        ["A", "Pretty good. Do you like dogs?", ["question", [0, 0, 0, 0]]],
        ["B", "Uh-huh.", ["backchannel", [0, 0, 0, 0]]],
        ["B", "I have two dogs and a cat.", ["statement", [0, 0, 0, 0]]],
        ["A", "That's nice.", ["statement", [0, 0, 0, 0]]],
    ],
    [
        ["A", "What do you think about taxes?", ["question", [0, 0, 0, 0]]],
        ["B", "Um, I don't like taxes at all.", ["statement", [0, 0, 0, 0]]],
        ["A", "Right, nobody does.", ["agree", [0, 0, 0, 0]]],
    ],
    [
        ["A", "Uh.", ["filler", [0, 0, 0, 0]]],  # empty after normalization: dropped
        ["B", "Do you play golf?", ["question", [0, 0, 0, 0]]],
        ["A", "No, I play tennis.", ["statement", [0, 0, 0, 0]]],
    ],
]
EXAMPLES = 6 + 3 + 2

# A tiny word-vector file in GloVe's text format (no header) covering some of the words.
GLOVE = """i 0.1 0.2 0.3 0.4
you 0.2 0.1 0.0 -0.1
dogs 0.9 -0.2 0.1 0.0
cat 0.8 -0.1 0.2 0.1
taxes -0.5 0.5 0.3 0.2
golf 0.3 0.3 -0.6 0.1
tennis 0.3 0.4 -0.5 0.2
do -0.1 0.2 0.2 0.2
n't -0.3 -0.3 0.1 0.0
like 0.4 0.1 0.1 0.6
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    data = base / "dialogs.jsonl"
    data.write_text("\n".join(json.dumps({"topic": "x", "utts": d}) for d in DIALOGS) + "\n")
    glove = base / "glove.txt"
    glove.write_text(GLOVE)
    words = [tokenize(u[1]) for d in DIALOGS for u in d]
    vocab = Vocabulary.build(words[:-2])  # leave some words out: <unk> in the vocabulary view
    torch.manual_seed(0)
    model = DialogCVAE(ModelConfig.preset("tiny", variant="bn-cvae", vocab_size=len(vocab)))
    ckpt = base / "ckpt"
    meta = {"note": "random init", "train_config": {"out": str(base / "run")}}  # absolute
    save_pretrained(model, vocab, ckpt, metadata=meta)
    cvae = base / "ckpt-cvae"
    save_pretrained(
        DialogCVAE(ModelConfig.preset("tiny", variant="cvae", vocab_size=len(vocab))), vocab, cvae
    )
    return {"base": base, "data": data, "glove": glove, "ckpt": ckpt, "cvae": cvae}


def run_cli(setup, out, *extra) -> dict:
    argv = ["--checkpoint", str(setup["ckpt"]), "--data", str(setup["data"])]
    argv += ["--glove", str(setup["glove"]), "--samples", "3", "--max-length", "8"]
    argv += ["--no-progress", "--out", str(out), *extra]
    assert main(argv) == 0
    return json.loads(out.read_text())


def test_end_to_end_json_has_every_key(setup, capsys):
    out = setup["base"] / "run1" / "metrics.json"
    result = run_cli(setup, out)
    assert set(result) == {
        "checkpoint", "split", "examples", "examples_available", "samples_per_context", "seed",
        "runtime_s", "protocol", "metrics", "baselines", "responses", "config",
    }  # fmt: skip
    assert list(result["metrics"]) == list(METRIC_KEYS)
    m = result["metrics"]
    assert result["examples"] == EXAMPLES and result["samples_per_context"] == 3
    # Paths are written relative to the repository, never as a machine's absolute paths.
    assert result["split"] == repo_relative(setup["data"]) and result["seed"] == 0
    assert not Path(result["checkpoint"]).is_absolute()
    assert (ROOT / result["checkpoint"]).resolve() == setup["ckpt"].resolve()
    assert result["config"]["samples"] == 3
    assert result["config"]["glove"] == repo_relative(setup["glove"])
    # the checkpoint's metadata too: a committed result holds no machine's absolute paths
    out_path = result["protocol"]["model"]["checkpoint_metadata"]["train_config"]["out"]
    assert out_path == repo_relative(setup["base"] / "run") and not Path(out_path).is_absolute()
    assert result["config"]["samples_out"] == repo_relative(out.parent / "metrics.samples.txt")
    for key in METRIC_KEYS:
        assert m[key] is not None, key
        assert math.isfinite(m[key]), key
    assert m["ppl"] > 1 and m["elbo_ppl"] >= m["ppl"] and m["kl"] >= 0
    for z in ("zhao_bleu3", "zhao_bleu4"):
        assert 0 <= m[f"{z}_p"] <= m[f"{z}_r"] <= 100
    assert 0 <= m["degenerate_rate"] <= 1
    # Baseline rows: the same keys, model-only metrics null, text metrics scored.
    # frequent_response needs a prepared training split (test_prepared_split has one).
    assert {"random_responses", "shuffled_context"} <= set(result["baselines"])
    for name, b in result["baselines"].items():
        assert list(b) == list(METRIC_KEYS), name
        assert b["ppl"] is None and b["kl"] is None and b["active_units"] is None
        assert 0 <= b["bleu4_p"] <= b["bleu4_r"] <= 100 and b["a_bow_r"] is not None

    for n in range(1, 5):
        assert 0 <= m[f"bleu{n}_p"] <= m[f"bleu{n}_r"] <= 100
    for b in ("a_bow", "e_bow", "g_bow"):
        assert -100 <= m[f"{b}_p"] <= m[f"{b}_r"] <= 100
    assert 0 <= m["intra_distinct1"] <= 1 and 0 <= m["inter_distinct2"] <= 1
    assert 0 <= m["active_units"] <= 8 and isinstance(m["active_units"], int)
    assert m["kl_lower_bound"] >= 8 * 0.6**2 / 2 - 1e-9  # beta starts at 0
    assert m["kl_prior_standard"] >= 0
    assert "mutual_info" in result["protocol"] and "kl_lower_bound" in result["protocol"]
    # stdout: the markdown table with this checkpoint's row; the paper's rows only stand beside
    # results of --protocol paper (tests/test_paper_protocol.py)
    table = capsys.readouterr().out
    assert "(paper)" not in table
    assert "this checkpoint (bn-cvae)" in table and "GloVe 6B 50-d" in table
    assert "baseline: shuffled_context" in table and "ELBO-PPL" in table
    assert "Subset" not in table
    # the samples file next to --out: every example with its reference and 3 samples
    samples = (out.parent / "metrics.samples.txt").read_text()
    assert samples.count("=== example") == EXAMPLES
    assert samples.count("sample  3:") == EXAMPLES
    assert "reference B: i have two dogs and a cat" in samples


def test_same_seed_gives_identical_metrics(setup):
    a = run_cli(setup, setup["base"] / "a.json")
    b = run_cli(
        setup, setup["base"] / "b.json", "--batch-dialogs", "1", "--max-batch-examples", "2"
    )
    c = run_cli(setup, setup["base"] / "c.json")
    assert a["metrics"] == c["metrics"]
    # the generated responses do not depend on the batching
    assert (setup["base"] / "a.samples.txt").read_text() == (
        setup["base"] / "b.samples.txt"
    ).read_text()
    for key in METRIC_KEYS:
        if key not in ("ppl", "elbo_ppl"):  # z ~ q(z|c,x) comes from the global RNG
            assert a["metrics"][key] == pytest.approx(b["metrics"][key], rel=1e-6), key
    d = run_cli(setup, setup["base"] / "d.json", "--seed", "1")
    assert d["metrics"] != a["metrics"]


def test_limit_and_jsonl_samples(setup):
    out = setup["base"] / "limited.json"
    samples_out = setup["base"] / "limited.samples.jsonl"
    result = run_cli(setup, out, "--limit", "4", "--samples-out", str(samples_out))
    assert result["examples"] == 4 and result["examples_available"] == EXAMPLES
    assert f"Subset: 4 of {EXAMPLES} examples" in markdown_table(result)
    records = [json.loads(line) for line in samples_out.read_text().splitlines()]
    assert [r["turn"] for r in records] == [0, 1, 2, 3]
    assert records[1]["context"] == [["A", "hi how are you doing today"]]
    assert records[1]["reference"] == "i ' m fine thanks and you"
    assert len(records[1]["samples"]) == 3


def test_non_bn_variant_has_null_bn_diagnostics(setup):
    config = EvalConfig(
        checkpoint=str(setup["cvae"]), data=str(setup["data"]), glove=str(setup["glove"]),
        samples=2, max_length=5, progress=False,
    )  # fmt: skip
    result = evaluate(config)
    assert result["metrics"]["kl_prior_standard"] is None
    assert result["metrics"]["kl_lower_bound"] is None
    assert "this checkpoint (cvae)" in markdown_table(result)


def test_prepared_split(setup, synthetic_prepared):
    config = EvalConfig(
        checkpoint=str(setup["ckpt"]), prepared=str(synthetic_prepared), split="valid",
        glove=str(setup["glove"]), samples=2, max_length=5, limit=20, progress=False,
    )  # fmt: skip
    result = evaluate(config)
    assert result["split"] == "valid" and result["examples"] == 20
    assert "prepared corpus" in result["protocol"]["data"]
    assert result["config"]["prepared"] == repo_relative(synthetic_prepared)
    assert result["config"]["glove"] == repo_relative(setup["glove"])
    assert result["protocol"]["frequent_response"]  # from the prepared training split
    frequent = result["baselines"]["frequent_response"]
    assert frequent["intra_distinct1"] <= 1 / 2 + 1e-9  # one response repeated


def test_errors(setup, tmp_path, caplog):
    with pytest.raises(EvalError, match="no such file"):
        evaluate(EvalConfig(checkpoint=str(setup["ckpt"]), data=str(tmp_path / "nope.jsonl")))
    with pytest.raises(EvalError, match="--samples"):
        EvalConfig(checkpoint="x", samples=0).validate()
    with pytest.raises(EvalError, match="split"):
        EvalConfig(checkpoint="x", split="train").validate()
    assert main(["--checkpoint", str(tmp_path / "missing"), "--data", str(setup["data"])]) == 2
    assert "missing" in caplog.text
    with pytest.raises(SystemExit):
        main(["--data", str(setup["data"])])  # no --checkpoint
    with pytest.raises(SystemExit):
        main(["--checkpoint", "x", "--data", "y", "--split", "valid"])


def test_plan_batches():
    assert plan_batches([3, 5, 2], batch_dialogs=2, max_examples=4) == [
        [(0, 0, 3)],
        [(1, 0, 4)],
        [(1, 4, 5), (2, 0, 2)],
    ]
    assert plan_batches([3, 5, 2], batch_dialogs=3, max_examples=100, limit=4) == [
        [(0, 0, 3), (1, 0, 1)]
    ]


def test_zhao_release_fallback(setup, tmp_path, monkeypatch):
    from eval import config as eval_config

    zhao = tmp_path / "zhao"
    zhao.mkdir()
    (zhao / "valid.jsonl").write_text(setup["data"].read_text())
    monkeypatch.setattr(eval_config, "DEFAULT_PREPARED", str(tmp_path / "no-prepared-corpus"))
    common = dict(checkpoint=str(setup["ckpt"]), glove=str(setup["glove"]), samples=2, max_length=5)
    from_zhao = evaluate(EvalConfig(split="valid", zhao=str(zhao), progress=False, **common))
    from_file = evaluate(EvalConfig(data=str(setup["data"]), progress=False, **common))
    assert from_zhao["config"]["zhao"] == repo_relative(zhao)
    assert "Zhao release" in from_zhao["protocol"]["data"]
    assert from_zhao["metrics"] == from_file["metrics"]
    with pytest.raises(EvalError, match="no evaluation data"):
        evaluate(EvalConfig(split="test", zhao=str(zhao), progress=False, **common))


def test_default_output_goes_under_runs(setup, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--checkpoint", str(setup["ckpt"]), "--data", str(setup["data"]), "--limit", "2"]
    assert main([*argv, "--glove", str(setup["glove"]), "--samples", "2", "--no-progress"]) == 0
    assert (tmp_path / "runs" / "eval" / "ckpt-dialogs.json").is_file()
    assert (tmp_path / "runs" / "eval" / "ckpt-dialogs.samples.txt").is_file()


def test_checkpoint_keeps_its_own_tokenizer(setup, synthetic_prepared, tmp_path):
    """A checkpoint trained on whole words evaluates on words, whatever the prepared corpus."""
    words = [normalize_utterance(u[1]) for d in DIALOGS for u in d]
    vocab = Vocabulary.build(words)
    config = ModelConfig.preset("tiny", variant="cvae", vocab_size=len(vocab), tokenizer="words")
    save_pretrained(DialogCVAE(config), vocab, tmp_path / "words-ckpt")
    zhao = tmp_path / "zhao"
    zhao.mkdir()
    (zhao / "valid.jsonl").write_text(setup["data"].read_text())
    result = evaluate(
        EvalConfig(
            checkpoint=str(tmp_path / "words-ckpt"),
            prepared=str(synthetic_prepared),
            zhao=str(zhao),
            split="valid",
            glove=str(setup["glove"]),
            samples=2,
            max_length=5,
            progress=False,
            samples_out=str(tmp_path / "s.jsonl"),
        )  # fmt: skip
    )
    assert "Zhao release" in result["protocol"]["data"]  # the prepared corpus holds WordPunct
    assert result["protocol"]["model"]["tokenizer"] == "words"
    refs = [json.loads(line)["reference"] for line in (tmp_path / "s.jsonl").open()]
    assert "i'm fine thanks and you" in refs


def test_swda_directory_as_data(setup, tmp_path):
    """--data DIR reads SwDA conversation files, segmented and tokenized as the training text."""
    swda = tmp_path / "val"
    swda.mkdir()
    (swda / "2001.txt").write_text(
        "A|Hi, how are you doing today?|qw\nB|I'm fine,|sd\nB|thanks, and you?|qw\nA|Good.|sd\n"
    )
    config = EvalConfig(
        checkpoint=str(setup["ckpt"]), data=str(swda), glove=str(setup["glove"]), samples=2,
        max_length=5, progress=False, samples_out=str(tmp_path / "s.jsonl"),
    )  # fmt: skip
    result = evaluate(config)
    assert result["examples"] == 3 and "SwDA directory" in result["protocol"]["data"]
    refs = [json.loads(line)["reference"] for line in (tmp_path / "s.jsonl").open()]
    assert refs == ["hi how are you doing today", "i ' m fine thanks and you", "good"]


def test_docs_list_the_differences_the_cli_prints():
    """The differences from the paper are written once (eval/protocol.py); the docs show them."""
    from eval.protocol import differences_markdown

    assert differences_markdown() in (ROOT / "docs" / "evaluation.md").read_text()


def test_docs_show_the_protocol_the_json_carries():
    """The protocol is written once (eval/protocol.py's PROTOCOL); the docs show its text."""
    from eval.protocol import PROTOCOL, protocol_markdown

    shown = protocol_markdown()
    assert shown in (ROOT / "docs" / "evaluation.md").read_text()
    assert len(shown.splitlines()) == len(PROTOCOL)


def test_report_table_of_several_results(setup, capsys):
    from eval.report import main as report_main

    out = setup["base"] / "report" / "one.json"
    run_cli(setup, out, "--samples-out", str(out.with_suffix(".samples.jsonl")))
    two = run_cli(setup, out.with_name("two.json"), "--seed", "1", "--samples-out",
                  str(out.with_name("two.samples.jsonl")))  # fmt: skip
    capsys.readouterr()
    paths = [str(out), str(out.with_name("two.json"))]
    assert report_main(paths) == 0
    table = capsys.readouterr().out
    assert "| **one** |" in table and "| **two** |" in table
    assert "baseline: random_responses" in table
    assert "(paper)" not in table
    assert "| AU | MI |" in table

    # the seed spread: per metric, the two values and their range
    assert report_main([*paths, "--spread"]) == 0
    rows = {
        r.split("|")[1].strip(): r.split("|")[2:-1] for r in capsys.readouterr().out.splitlines()
    }
    one = json.loads(out.read_text())
    values = [one["metrics"]["e_bow_r"], two["metrics"]["e_bow_r"]]
    assert [float(c) for c in rows["e_bow_r"]] == pytest.approx(
        [*values, max(values) - min(values)], abs=0.006
    )

    # samples of both models on the same contexts
    assert report_main([*paths, "--samples", "2"]) == 0
    text = capsys.readouterr().out
    assert text.count("**Example ") == 2 and text.count("- one: ") == 2
    assert text.count("- two: ") == 2 and "**reference " in text
    # a result without a JSON-lines samples file: one line naming it, exit 2
    with pytest.raises(SystemExit) as e:
        report_main([str(setup["base"] / "run1" / "metrics.json"), "--samples", "1"])
    assert e.value.code == 2 and "samples" in capsys.readouterr().err


def test_decoding_options_reach_the_samples(setup, tmp_path):
    plain = run_cli(setup, tmp_path / "plain.json", "--limit", "6")
    assert plain["protocol"]["decoding"]["plain"] is True
    blocked = run_cli(
        setup, tmp_path / "blocked.json", "--limit", "6", "--no-repeat-ngram-size", "1",
        "--no-allow-unk", "--max-length", "8",
    )  # fmt: skip
    assert blocked["protocol"]["decoding"]["no_repeat_ngram_size"] == 1
    assert blocked["protocol"]["decoding"]["plain"] is False
    for line in (tmp_path / "blocked.samples.txt").read_text().splitlines():
        if line.strip().startswith("sample"):
            words = line.split(":", 1)[1].split()
            assert words == ["(empty)"] or len(set(words)) == len(words)  # no token repeated
    assert "not the plain protocol" in markdown_table(blocked)
