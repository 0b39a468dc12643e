"""training/prepare.py: the prepared corpus, on hand-written inputs and on the shared data."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

import training.prepare as prep
from model.vocab import Vocabulary
from tests.conftest import SHARED_DATA
from training.corpus import PRETOKENIZED, CorpusError, read_zhao_jsonl
from training.leakage import NgramIndex
from training.prepare import PrepareConfig, load_prepared, main, prepare

# Invented conversations; LEAK appears in Zhao's valid split and (SwDA style) in swda/train.
LEAK = [
    ("A", "What kind of camping do you like to do?"),
    ("B", "Well, we mostly go tent camping up in the mountains, uh, near the state park."),
    ("B", "My kids love sleeping in the tent and cooking over the fire."),
    ("A", "Uh-huh."),
    ("A", "We used to do that until my back started hurting on the hard ground every morning."),
    ("B", "Oh, you should try one of those thick foam pads, they make a big difference."),
    ("A", "We bought a little pop-up trailer instead, and, um, it has a real mattress in it."),
    ("B", "That sounds nice, but I like the feeling of being out in the woods with nothing."),
]
OTHER = [
    ("A", "Do you follow any of the professional football teams?"),
    ("B", "Uh, I watch the Cowboys when they are on television on Sunday afternoons."),
    ("A", "They had a pretty rough season last year with all of the injuries."),
    ("B", "Yeah, the quarterback was out for most of the second half of the schedule."),
    ("A", "Uh."),
]
WEATHER = [
    ("A", "Has it been raining much where you live?"),
    ("B", "Not since March, the lawn is completely brown and the lake is way down."),
]
TESTCONV = [
    ("A", "How do you feel about the new recycling program in your city?"),
    ("B", "I think it is a good idea but the pickup schedule is really confusing."),
    ("A", "Ours comes every other Tuesday and I can never remember which week it is."),
    ("B", "We put a little calendar on the refrigerator just to keep track of it."),
]


def zhao_record(lines):
    """Zhao's layout: consecutive segments of a speaker joined, normalized, fillers gone."""
    utts = []
    for speaker, text in lines:
        words = [w.strip(",.?").lower() for w in text.split()]
        text = " ".join(w for w in words if w and w not in ("uh", "um"))
        if not text:
            continue
        if utts and utts[-1][0] == speaker:
            utts[-1][1] += " " + text
        else:
            utts.append([speaker, text, ["statement", [0.0, 1.0, 0.0, 0.0]]])
    return {"A": {"age": 40}, "B": {"age": 41}, "topic": '"X"', "prompt": "", "utts": utts}


def swda_text(lines):
    return "".join(f"{s}|{t}|sd\n" for s, t in lines)


@pytest.fixture
def inputs(tmp_path):
    zhao = tmp_path / "in" / "zhao"
    zhao.mkdir(parents=True)
    (zhao / "valid.jsonl").write_text(
        json.dumps(zhao_record(WEATHER)) + "\n" + json.dumps(zhao_record(LEAK)) + "\n"
    )
    (zhao / "test.jsonl").write_text(json.dumps(zhao_record(TESTCONV)) + "\n")
    swda = tmp_path / "in" / "swda"
    (swda / "train").mkdir(parents=True)
    (swda / "val").mkdir()
    (swda / "dialogue_acts.txt").write_text("Statement-non-opinion|sd\n")
    (swda / "train" / "2001.txt").write_text(swda_text(OTHER))
    (swda / "train" / "2002.txt").write_text(swda_text(LEAK))
    (swda / "val" / "3001.txt").write_text(swda_text(OTHER[::-1]))
    return zhao, swda


def run(tmp_path, zhao, swda, **kw) -> tuple[Path, dict]:
    out = tmp_path / "out"
    manifest = prepare(
        PrepareConfig(
            out=str(out), zhao=zhao and str(zhao), swda=swda and str(swda), progress=False, **kw
        )
    )
    return out, manifest


def test_prepare_small(tmp_path, inputs):
    zhao, swda = inputs
    out, manifest = run(tmp_path, zhao, swda)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["train.jsonl", "valid.jsonl", "test.jsonl", "vocab.json", "config.json", "manifest.json"]
    )  # and no temporary file is left behind
    config = json.loads((out / "config.json").read_text())
    assert config["zhao"] == str(zhao.resolve()) and config["swda"] == str(swda.resolve())
    assert config["max_words"] == 10_000 and config["leak_threshold"] == 0.2

    assert manifest["inputs"]["train_source"] == "swda"
    leak = manifest["leakage"]
    assert [(m["dialog_id"], m["split"], m["index"]) for m in leak["excluded"]] == [
        ("2002", "valid", 1)
    ]
    assert leak["excluded"][0]["score"] >= 0.5
    assert leak["max_kept_score"] < 0.2
    splits = manifest["splits"]
    # swda/val/3001 is held out of training (an evaluation set in the training format).
    assert {s: c["dialogs"] for s, c in splits.items()} == {"train": 1, "valid": 2, "test": 1}
    # 2001: 5 lines, "Uh." dropped.
    assert splits["train"]["utterances"] == 4 and splits["train"]["examples"] == 4
    assert manifest["dropped_empty_utterances"]["swda"] == 1
    for c in splits.values():
        assert c["examples"] == c["utterances"]

    corpus = load_prepared(out)
    assert [d.id for d in corpus.train] == ["2001"]
    assert all(d.source == "swda" for d in corpus.train)
    assert [d.id for d in corpus.valid] == ["valid/0", "valid/1"]
    assert corpus.train[0].turns()[1] == (
        "B",
        "i watch the cowboys when they are on television on sunday afternoons".split(),
    )
    assert corpus.train[0].utterances[0].act == "sd"
    assert "cowboys" in corpus.vocab and "camping" not in corpus.vocab  # leaked text not trained
    assert corpus.manifest == manifest
    norm = manifest["normalization"]
    assert set(norm["oov_vs_vocab"]) == {"valid", "test"}
    assert norm["oov_vs_vocab"]["test"]["oov_rate"] > 0
    assert set(norm["mean_utt_len"]) == {"train", "valid", "test"}
    assert "without_normalization" in norm


def test_cli(tmp_path, inputs, capsys):
    zhao, swda = inputs
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--zhao", str(zhao), "--swda", str(swda), "--no-progress"]
    assert main(argv + ["--max-words", "3", "--leak-threshold", "0.3"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["max_words"] == 3 and config["leak_threshold"] == 0.3
    assert config["progress"] is False
    assert len(Vocabulary.load(out / "vocab.json")) == 5 + 3
    assert json.loads(capsys.readouterr().out)["splits"]["train"]["dialogs"] == 1


def test_cli_has_every_config_field(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    usage = capsys.readouterr().out
    for option in ("--out", "--zhao", "--swda", "--max-words", "--ngram", "--leak-threshold",
                   "--leak-min-shared", "--progress", "--no-progress"):  # fmt: skip
        assert f"[{option} " in usage or f" {option} " in usage or f"| {option}]" in usage, option
    with pytest.raises(SystemExit) as e:
        main([])  # --out is required
    assert e.value.code == 2


def test_missing_inputs_are_clear_errors(tmp_path, inputs, monkeypatch):
    zhao, swda = inputs
    monkeypatch.setattr(prep, "DEFAULT_DATA", tmp_path / "nowhere")
    with pytest.raises(CorpusError, match="--zhao is required"):
        prepare(PrepareConfig(out=str(tmp_path / "o"), progress=False))
    with pytest.raises(CorpusError, match="--swda is required"):
        prepare(PrepareConfig(out=str(tmp_path / "o"), zhao=str(zhao), progress=False))
    assert main(["--out", str(tmp_path / "o")]) == 2
    with pytest.raises(CorpusError, match="SwDA directory not found"):
        run(tmp_path, zhao, tmp_path / "no-swda")


def test_zhao_train_split_is_the_train_set(tmp_path, inputs, monkeypatch):
    zhao, _ = inputs
    monkeypatch.setattr(prep, "DEFAULT_DATA", tmp_path / "nowhere")
    # A Zhao train split: one own dialog, and one that is (wrongly) a copy of a valid dialog.
    (zhao / "train.jsonl").write_text(
        json.dumps(zhao_record(OTHER)) + "\n" + json.dumps(zhao_record(LEAK)) + "\n"
    )
    out, manifest = run(tmp_path, zhao, None)
    assert manifest["inputs"] == {
        "zhao": str(zhao.resolve()),
        "swda": None,
        "train_source": "zhao",
    }
    assert [m["dialog_id"] for m in manifest["leakage"]["excluded"]] == ["train/1"]
    assert [d.id for d in load_prepared(out).train] == ["train/0"]
    assert "without_normalization" not in manifest["normalization"]


def test_zhao_pickle_input(tmp_path):
    data = {
        "train": [zhao_record(OTHER), zhao_record(LEAK[:3])],
        "valid": [zhao_record(LEAK)],
        "test": [zhao_record(TESTCONV)],
    }
    f = tmp_path / "full_swda_clean_42da_sentiment_dialog_corpus.p"
    f.write_bytes(pickle.dumps(data, protocol=2))
    out, manifest = run(tmp_path, f, None, leak_min_shared=5)
    assert {s: c["dialogs"] for s, c in manifest["splits"].items()} == {
        "train": 1,
        "valid": 1,
        "test": 1,
    }
    assert manifest["leakage"]["excluded"][0]["dialog_id"] == "train/1"
    assert load_prepared(out).test[0].id == "test/0"


def test_load_prepared_errors(tmp_path, inputs):
    zhao, swda = inputs
    out, _ = run(tmp_path, zhao, swda)
    load_prepared(out)

    (out / "valid.jsonl").write_text((out / "valid.jsonl").read_text() + "\n")
    with pytest.raises(CorpusError, match=r"valid\.jsonl: checksum differs"):
        load_prepared(out)

    out, manifest = run(tmp_path, zhao, swda)
    (out / "vocab.json").write_text("{")
    manifest["files"].pop("vocab.json")
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorpusError, match=r"vocab\.json"):
        load_prepared(out)

    out, manifest = run(tmp_path, zhao, swda)
    manifest["splits"]["test"]["dialogs"] = 7
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorpusError, match=r"test\.jsonl: 1 dialogs, .*manifest\.json says 7"):
        load_prepared(out)

    (out / "train.jsonl").unlink()
    with pytest.raises(CorpusError, match=r"train\.jsonl: missing"):
        load_prepared(out)

    (out / "manifest.json").write_text("[")
    with pytest.raises(CorpusError, match=r"manifest\.json: corrupt manifest"):
        load_prepared(out)
    (out / "manifest.json").unlink()
    with pytest.raises(CorpusError, match=r"manifest\.json: missing"):
        load_prepared(out)


# --------------------------------------------------------------------------- the shared data


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    if not ((SHARED_DATA / "zhao").is_dir() and (SHARED_DATA / "swda").is_dir()):
        pytest.skip(f"shared Switchboard data not found at {SHARED_DATA}")
    out = tmp_path_factory.mktemp("switchboard")
    manifest = prepare(
        PrepareConfig(
            out=str(out),
            zhao=str(SHARED_DATA / "zhao"),
            swda=str(SHARED_DATA / "swda"),
            progress=False,
        )
    )
    return manifest, load_prepared(out)


@pytest.mark.slow
def test_real_counts(real):
    manifest, corpus = real
    splits = manifest["splits"]
    assert (splits["valid"]["dialogs"], splits["valid"]["utterances"]) == (60, 5225)
    assert (splits["test"]["dialogs"], splits["test"]["utterances"]) == (62, 5543)
    leak = manifest["leakage"]
    assert leak["candidates"] == 1115  # swda/train; swda/val is held out (SWDA_TRAIN)
    assert splits["train"]["dialogs"] == leak["candidates"] - leak["excluded_count"]
    for name, dialogs in [("train", corpus.train), ("valid", corpus.valid), ("test", corpus.test)]:
        c = splits[name]
        assert c["dialogs"] == len(dialogs)
        assert c["utterances"] == c["examples"] == sum(len(d.turns()) for d in dialogs)
        assert c["tokens"] == sum(len(t) for d in dialogs for _, t in d.turns())
    # SwDA segments joined into sentences: fewer, longer training utterances than SwDA's lines.
    seg = manifest["segmentation"]
    assert manifest["tokenizer"] == "wordpunct" and seg["rule"] == "sentence"
    before, after = seg["splits"]["train (dialog-act)"], seg["splits"]["train (sentence)"]
    assert after == {k: splits["train"][k] for k in after}
    assert before["tokens"] == after["tokens"] and before["dialogs"] == after["dialogs"]
    assert after["utterances"] + seg["joined_segments"] >= before["utterances"] > 150_000
    assert 100_000 < after["utterances"] < 150_000
    assert splits["test"]["tokens"] == 74_240  # Zhao's text, WordPunct-tokenized
    assert splits["test"]["utts_per_dialog"] == pytest.approx(89.4, abs=0.1)
    assert manifest["dropped_empty_utterances"]["swda"] > 0
    assert manifest["dropped_empty_utterances"]["zhao"] == 0
    assert len(corpus.vocab) == 10_005


def test_real_excluded_conversations(real):
    manifest, corpus = real
    leak = manifest["leakage"]
    # README: roughly 27 of the test and 28 of the valid dialogs are SwDA conversations.
    assert 24 <= leak["excluded_per_split"]["test"] <= 32
    assert 24 <= leak["excluded_per_split"]["valid"] <= 32
    matched = [(m["split"], m["index"]) for m in leak["excluded"]]
    assert len(set(matched)) == len(matched)  # one SwDA conversation per Zhao dialog
    for m in leak["excluded"]:
        assert m["score"] >= leak["threshold"] and m["shared"] >= leak["min_shared"]
        assert m["ref_id"] == f"{m['split']}/{m['index']}"
    # A clear margin on both sides of the threshold.
    assert leak["min_excluded_score"] >= 1.5 * leak["threshold"]
    assert leak["max_kept_score"] <= 0.5 * leak["threshold"]
    train_ids = {d.id for d in corpus.train}
    assert not train_ids & {m["dialog_id"] for m in leak["excluded"]}


@pytest.mark.slow
def test_real_zero_leakage(real):
    manifest, corpus = real
    index = NgramIndex({"valid": corpus.valid, "test": corpus.test})
    threshold = manifest["leakage"]["threshold"]
    worst = max((index.best(d) for d in corpus.train), key=lambda m: m.score if m else 0)
    assert worst.score < threshold, worst


@pytest.mark.slow
def test_real_normalization_statistics(real):
    manifest, corpus = real
    norm = manifest["normalization"]
    for split in ("valid", "test"):
        vs_vocab = norm["oov_vs_vocab"][split]["oov_rate"]
        vs_types = norm["oov_vs_train_types"][split]["oov_rate"]
        assert 0 < vs_types <= vs_vocab < 0.05
        # Normalizing SwDA to the test conventions is what makes the vocabularies agree.
        assert norm["without_normalization"]["oov_rate_vs_vocab"][split] > 3 * vs_vocab
    lengths = norm["mean_utt_len"]
    # The data README's 12.0 words per test utterance are 13.4 WordPunct tokens ("it ' s").
    assert lengths["test"] == pytest.approx(13.39, abs=0.01)
    # Joined into sentences, train utterances come within 15% of valid's length (SwDA's
    # dialog-act segments were 8.0 tokens).
    assert 0.85 * lengths["valid"] < lengths["train"] < lengths["test"]
    assert norm["vocab_size"] == len(corpus.vocab)
    # What was written is what was loaded (the prepared text reads back unchanged).
    out = Path(manifest["config"]["out"]) / "test.jsonl"
    assert read_zhao_jsonl(out, tokenizer=PRETOKENIZED) == corpus.test


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_empty_split_is_refused(tmp_path, split):
    zhao = tmp_path / "zhao"
    zhao.mkdir()
    for s in ("train", "valid", "test"):
        record = zhao_record(OTHER if s == "train" else WEATHER)
        (zhao / f"{s}.jsonl").write_text("" if s == split else json.dumps(record) + "\n")
    with pytest.raises(CorpusError, match=f"the {split} split has no dialogs"):
        run(tmp_path, zhao, None)
    assert main(["--out", str(tmp_path / "cli"), "--zhao", str(zhao), "--no-progress"]) == 2


def test_a_failed_prepare_leaves_no_folder(tmp_path, inputs, monkeypatch):
    zhao, swda = inputs
    with pytest.raises(CorpusError, match="SwDA directory not found"):
        run(tmp_path, zhao, tmp_path / "no-swda")
    assert not (tmp_path / "out").exists()

    def full_disk(dialogs, path):
        Path(path).write_text("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prep, "write_jsonl", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run(tmp_path, zhao, swda)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # the inputs alone


def test_a_second_prepare_replaces_the_files_of_the_first(tmp_path, inputs):
    zhao, swda = inputs
    out, first = run(tmp_path, zhao, swda)
    out, second = run(tmp_path, zhao, swda, max_words=5)
    assert json.loads((out / "config.json").read_text())["max_words"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]  # no staging left
