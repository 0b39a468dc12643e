"""Readers of the Switchboard releases (training/corpus.py) on small hand-written files."""

from __future__ import annotations

import json
import os
import pickle

import pytest

from model.text import normalize_utterance
from training.corpus import (
    PRETOKENIZED,
    CorpusError,
    Dialog,
    ReadStats,
    Utterance,
    read_swda,
    read_swda_file,
    read_zhao,
    read_zhao_jsonl,
    read_zhao_pickle,
    write_jsonl,
)

ZHAO_DIALOG = {
    "A": {"age": 47, "sex": ' "MALE"'},
    "B": {"age": 50, "sex": ' "FEMALE"'},
    "topic": '"CREDIT CARD USE"',
    "prompt": "...",
    "utts": [
        [
            "A",
            "well what are your did you like do you use credit cards",
            ["yes-no-question", [0.1]],
        ],
        ["B", "not very often", ["statement-non-opinion", [0.0, 1.0]]],
        ["A", "uh-huh", ["acknowledge_(backchannel)", [0.0]]],
    ],
}


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- data types


def test_dialog_turns_is_the_batch_form():
    d = Dialog("1", "swda", [Utterance("A", ["hi", "there"], "sd"), Utterance("B", ["yeah"], None)])
    assert d.turns() == [("A", ["hi", "there"]), ("B", ["yeah"])]
    assert list(d.tokens()) == ["hi", "there", "yeah"]


# --------------------------------------------------------------------------- SwDA


def test_swda_file_is_read_and_normalized(tmp_path):
    f = write(
        tmp_path / "2001.txt",
        "A|Have you seen DANCING WITH WOLVES?|qy\n"
        "B|Yeah.|ny\n"
        "\n"  # blank lines are skipped
        "B|Uh.|%\n"  # empty after normalization: dropped and counted
        "B|that's, uh, that was a really good movie.|sv\n"
        "A|a|b line|sd\n",  # a '|' inside the text survives
    )
    stats = ReadStats()
    d = read_swda_file(f, stats=stats, tokenizer="words", segmentation="dialog-act")
    assert d.id == "2001" and d.source == "swda"
    assert d.turns() == [
        ("A", ["have", "you", "seen", "dancing", "with", "wolves"]),
        ("B", ["yeah"]),
        ("B", ["that's", "that", "was", "a", "really", "good", "movie"]),
        ("A", ["a", "b", "line"]),
    ]
    assert [u.act for u in d.utterances] == ["qy", "ny", "sv", "sd"]
    assert stats.dropped_empty_utterances == 1
    assert stats.utterances == 4 and stats.dialogs == 1
    # The defaults: Zhao's WordPunct tokens ("that ' s").
    d = read_swda_file(f, segmentation="dialog-act")
    assert d.turns()[2] == ("B", ["that", "'", "s", "that", "was", "a", "really", "good", "movie"])


def test_swda_sentence_segmentation_joins_a_speakers_open_segments(tmp_path):
    f = write(
        tmp_path / "2001.txt",
        "A|Oh, I haven't watched that very much,|sd\n"
        "A|is that,|qy\n"
        "A|do you like that?|qy\n"  # ends a sentence: A's next segment starts a new utterance
        "A|Yes.|ny\n"
        "A|Well,|%\n"
        "B|Uh.|%\n"  # empty after normalization: dropped, A's open segment goes on
        "A|it was on Thursdays. *[[listen]]|sd\n"
        "B|Right,|b\n"
        "A|and then,|sd\n",  # another speaker came between: a new utterance
    )
    stats = ReadStats()
    d = read_swda_file(f, stats=stats, tokenizer="words")
    assert [(s, " ".join(t)) for s, t in d.turns()] == [
        ("A", "oh i haven't watched that very much is that do you like that"),
        ("A", "yes"),
        ("A", "well it was on thursdays"),
        ("B", "right"),
        ("A", "and then"),
    ]
    assert stats.joined_segments == 3 and stats.dropped_empty_utterances == 1
    assert len(read_swda_file(f, tokenizer="words", segmentation="dialog-act").turns()) == 8


@pytest.mark.parametrize(
    "line, expect",
    [
        ("A|no tag at all", "expected 'speaker|text|tag'"),
        ("just some words", "expected 'speaker|text|tag'"),
        ("|Yeah.|b", "empty speaker"),
    ],
)
def test_swda_malformed_line_names_file_and_line(tmp_path, line, expect):
    f = write(tmp_path / "swda" / "train" / "2001.txt", f"A|Okay.|fo\n\nB|Right.|b\n{line}\n")
    with pytest.raises(CorpusError) as e:
        read_swda(tmp_path / "swda")
    assert f"{f}:4:" in str(e.value)
    assert expect in str(e.value)


def test_swda_invalid_utf8_names_file_and_line(tmp_path):
    f = tmp_path / "2001.txt"
    f.write_bytes(b"A|Okay.|fo\nB|caf\xe9|sd\n")
    with pytest.raises(CorpusError, match=rf"{f}:2: not valid UTF-8"):
        read_swda_file(f)


def test_swda_directory_with_train_and_val(tmp_path):
    root = tmp_path / "swda"
    write(root / "dialogue_acts.txt", "Statement-non-opinion|sd\n")  # not a conversation
    write(root / "train" / "2010.txt", "A|Okay.|fo\nB|Right.|b\n")
    write(root / "train" / "2005.txt", "A|Hello.|fp\n")
    write(root / "train" / "notes.txt", "not|a|conversation\n")  # ignored: not <number>.txt
    write(root / "val" / "3000.txt", "B|Um, yes.|ny\n")
    write(root / "val" / "3001.txt", "A|Uh.|%\n")  # nothing left: dropped and counted
    stats = ReadStats()
    dialogs = read_swda(root, stats)
    assert [d.id for d in dialogs] == ["2005", "2010", "3000"]
    assert dialogs[2].turns() == [("B", ["yes"])]
    assert stats.dropped_empty_dialogs == 1 and stats.dropped_empty_utterances == 1


def test_swda_flat_directory(tmp_path):
    write(tmp_path / "4001.txt", "A|Okay.|fo\n")
    write(tmp_path / "999.txt", "B|Sure.|aa\n")
    assert [d.id for d in read_swda(tmp_path)] == ["999", "4001"]


def test_swda_duplicate_conversation_and_missing_directory(tmp_path):
    write(tmp_path / "train" / "2001.txt", "A|Okay.|fo\n")
    write(tmp_path / "val" / "2001.txt", "A|Okay.|fo\n")
    with pytest.raises(CorpusError, match="conversation 2001 already read"):
        read_swda(tmp_path)
    with pytest.raises(CorpusError, match="not found"):
        read_swda(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no SwDA conversation files"):
        read_swda(tmp_path / "empty")


# --------------------------------------------------------------------------- Zhao JSONL


def test_zhao_jsonl(tmp_path):
    f = write(
        tmp_path / "test.jsonl", json.dumps(ZHAO_DIALOG) + "\n\n" + json.dumps(ZHAO_DIALOG) + "\n"
    )
    dialogs = read_zhao_jsonl(f, tokenizer="words")
    assert [d.id for d in dialogs] == ["test/0", "test/1"]
    d = dialogs[0]
    assert d.source == "zhao"
    assert d.turns()[1] == ("B", ["not", "very", "often"])
    assert d.turns()[2] == ("A", ["uh-huh"])
    assert d.utterances[0].act == "yes-no-question"
    assert read_zhao_jsonl(f)[0].turns()[2] == ("A", ["uh", "-", "huh"])  # Zhao's WordPunct


@pytest.mark.parametrize(
    "record, expect",
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a dialog object"),
        ('{"A": {}, "topic": "x"}', "no 'utts' list"),
        ('{"utts": [["A"]]}', r"utts\[0\]: expected \[speaker, text"),
        ('{"utts": [["A", "hi", ["x", []]], ["B", 7, ["y", []]]]}', r"utts\[1\]: text must be"),
        ('{"utts": [["", "hi", ["x", []]]]}', "speaker must be a non-empty string"),
        ('{"utts": [["A", "hi", "statement"]]}', r"expected \[act, sentiment\]"),
        ('{"utts": [["A", "hi", [3, []]]]}', "dialog act must be a string"),
        ('{"source": "web", "utts": []}', "'source' must be"),
    ],
)
def test_zhao_jsonl_malformed_names_file_and_line(tmp_path, record, expect):
    f = write(tmp_path / "valid.jsonl", json.dumps(ZHAO_DIALOG) + "\n" + record + "\n")
    with pytest.raises(CorpusError, match=expect) as e:
        read_zhao_jsonl(f)
    assert str(e.value).startswith(f"{f}:2:")


def test_zhao_directory(tmp_path):
    write(tmp_path / "valid.jsonl", json.dumps(ZHAO_DIALOG) + "\n")
    with pytest.raises(CorpusError, match="test.jsonl: missing"):
        read_zhao(tmp_path)
    write(tmp_path / "test.jsonl", json.dumps(ZHAO_DIALOG) + "\n")
    assert sorted(read_zhao(tmp_path)) == ["test", "valid"]
    write(tmp_path / "train.jsonl", json.dumps(ZHAO_DIALOG) + "\n")
    assert sorted(read_zhao(tmp_path)) == ["test", "train", "valid"]
    with pytest.raises(CorpusError, match="not found"):
        read_zhao(tmp_path / "nope")


def test_prepared_format_round_trip(tmp_path):
    dialogs = [
        Dialog("2001", "swda", [Utterance("A", ["i", "don't", "know"], "sd")]),
        Dialog("test/3", "zhao", [Utterance("B", ["uh-huh"], None), Utterance("A", ["ok"], "b")]),
    ]
    write_jsonl(dialogs, tmp_path / "x.jsonl")
    first = json.loads((tmp_path / "x.jsonl").read_text().splitlines()[0])
    assert first == {"id": "2001", "source": "swda", "utts": [["A", "i don't know", ["sd", []]]]}
    assert read_zhao_jsonl(tmp_path / "x.jsonl", tokenizer=PRETOKENIZED) == dialogs
    wordpunct = [Dialog("1", "swda", [Utterance("A", ["it", "'", "s", "uh", "-", "huh"], None)])]
    write_jsonl(wordpunct, tmp_path / "y.jsonl")
    assert read_zhao_jsonl(tmp_path / "y.jsonl", tokenizer=PRETOKENIZED) == wordpunct
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


# --------------------------------------------------------------------------- Zhao pickle


def zhao_pickle_data():
    return {"train": [ZHAO_DIALOG, ZHAO_DIALOG], "valid": [ZHAO_DIALOG], "test": [ZHAO_DIALOG]}


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_zhao_pickle(tmp_path, protocol):
    f = tmp_path / "corpus.p"
    f.write_bytes(pickle.dumps(zhao_pickle_data(), protocol=protocol))
    splits = read_zhao_pickle(f)
    assert {s: [d.id for d in ds] for s, ds in splits.items()} == {
        "train": ["train/0", "train/1"],
        "valid": ["valid/0"],
        "test": ["test/0"],
    }
    assert splits["test"][0].turns()[1] == ("B", ["not", "very", "often"])
    assert read_zhao(f)["valid"][0].utterances[0].act == "yes-no-question"


def test_zhao_pickle_decodes_byte_strings(tmp_path):
    data = zhao_pickle_data()
    data["test"] = [{"utts": [(b"A", b"so how are you", (b"open-question", (0.0,)))]}]
    f = tmp_path / "corpus.p"
    f.write_bytes(pickle.dumps(data))
    assert read_zhao_pickle(f)["test"][0].turns() == [("A", ["so", "how", "are", "you"])]


class Sneaky:
    pass


class RunsCode:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_zhao_pickle_refuses_classes(tmp_path):
    f = tmp_path / "corpus.p"
    data = zhao_pickle_data()
    data["valid"] = [Sneaky()]
    f.write_bytes(pickle.dumps(data))
    with pytest.raises(CorpusError, match="refusing to load global") as e:
        read_zhao_pickle(f)
    assert str(f) in str(e.value) and "Sneaky" in str(e.value)


def test_zhao_pickle_never_runs_code(tmp_path):
    f = tmp_path / "corpus.p"
    marker = tmp_path / "pwned"
    f.write_bytes(pickle.dumps({"train": [], "valid": [], "test": RunsCode(str(marker))}))
    with pytest.raises(CorpusError, match=r"refusing to load global '(posix|nt|os)\.mkdir'"):
        read_zhao(f)
    assert not marker.exists()


def test_zhao_pickle_malformed(tmp_path):
    f = tmp_path / "corpus.p"
    f.write_bytes(b"this is not a pickle")
    with pytest.raises(CorpusError, match="not a loadable Zhao corpus pickle") as e:
        read_zhao_pickle(f)
    assert str(f) in str(e.value)
    f.write_bytes(pickle.dumps({"train": [], "valid": []}))
    with pytest.raises(CorpusError, match=r"missing split\(s\) \['test'\]"):
        read_zhao_pickle(f)
    f.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CorpusError, match="expected a dict"):
        read_zhao_pickle(f)
    data = zhao_pickle_data()
    data["train"][1] = {"utts": [["A", "ok", ["x", []]], ["B"]]}
    f.write_bytes(pickle.dumps(data))
    with pytest.raises(CorpusError, match=rf"{f}: train\[1\]: utts\[1\]: expected"):
        read_zhao_pickle(f)


# --------------------------------------------------------------------------- normalization
# Real lines of the same conversations in both releases (SwDA export vs Zhao's test/valid
# split): SwDA keeps case, punctuation and fillers and segments turns differently, so the lines
# are compared as token streams of the stretch where the transcripts agree.

SAME_STRETCHES = [
    (  # SwDA 2883 / Zhao test: "credit cards"
        ["A|Well, what are your,|qw", "A|did you like, do you use credit cards?|qy"],
        ["well what are your did you like do you use credit cards"],
    ),
    (
        [
            "B|Uh, not very often.|ng",
            "B|I usually, uh,|sd",
            "B|the ones we use is like Visa|sd",
            "B|and we always try to pay it back at the end of the month.|sd",
        ],
        [
            "not very often i usually the ones we use is like visa and we always try to pay it "
            "back at the end of the month"
        ],
    ),
    (
        [
            "A|Otherwise, you end up paying so much more for your merchandise that it's hardly, "
            "uh, it's not a very good idea.|sv"
        ],
        [
            "otherwise you end up paying so much more for your merchandise that it's hardly",
            "it's not a very good idea",
        ],
    ),
    (
        ["A|Well, I have a lot of them|na", "A|but I don't use them very much, though.|sd"],
        ["well i have a lot of them but i don't use them very much though"],
    ),
    (  # SwDA 3520 / Zhao valid: voting
        [
            "A|Well, seems to me the, one of the reasons that people don't go out to vote is "
            "maybe they're bored with the whole election process.|sv"
        ],
        [
            "well seems to me the one of the reasons that people don't go out to vote is maybe "
            "they're bored with the whole election process"
        ],
    ),
    (
        [
            "B|Well, I agree with the boredom of the election process,|aa",
            "B|but I also, uh, think that people don't realize that their boat, vote will make a "
            "difference.|sv",
        ],
        [
            "well i agree with the boredom of the election process but i also think that people "
            "don't realize that their boat vote will make a difference"
        ],
    ),
    (["A|Huh-uh.|b"], ["huh-uh"]),
    (["B|Uh-huh.|b"], ["uh-huh"]),
    (
        ["A|Well, sometimes, strangely enough, one vote has made the difference.|sv"],
        ["well sometimes strangely enough one vote has made the difference"],
    ),
]


@pytest.mark.parametrize("swda_lines, zhao_texts", SAME_STRETCHES)
def test_swda_and_zhao_lines_normalize_alike(tmp_path, swda_lines, zhao_texts):
    f = write(tmp_path / "2883.txt", "\n".join(swda_lines) + "\n")
    swda_tokens = list(read_swda_file(f).tokens())
    record = {"utts": [["A", t, ["x", []]] for t in zhao_texts]}
    z = write(tmp_path / "test.jsonl", json.dumps(record) + "\n")
    zhao_tokens = list(read_zhao_jsonl(z)[0].tokens())
    assert swda_tokens == zhao_tokens
    # Zhao's text is already in the target convention: normalization is the identity there.
    for t in zhao_texts:
        assert normalize_utterance(t) == t.split()


def test_filler_only_utterances_vanish():
    for text in ["Uh.", "Um,", "Uh, um, uh.", "uh -- um"]:
        assert normalize_utterance(text) == []
