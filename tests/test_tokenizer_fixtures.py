"""The text conventions (model/text.py) and the training corpus reader's use of them, on the
committed cases of tests/fixtures/tokenizer_cases.tsv: no ../shared data needed.

Each row is checked against the pinned words, tokens and display text, and the tokens also
against NLTK's WordPunctTokenizer (the reference for the ``wordpunct`` tokenizer). Changing a rule
means regenerating the fixture (tests/fixtures/make_tokenizer_cases.py) and reviewing its diff.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from nltk.tokenize import WordPunctTokenizer

from model.text import detokenize, normalize_utterance, tokenize
from training.corpus import ReadStats, join_continuations, parse_swda_line, read_swda_file

FIXTURE = Path(__file__).parent / "fixtures" / "tokenizer_cases.tsv"
RULES = ("lowercase", "punctuation", "fillers", "backchannel", "apostrophe",
         "typographic-apostrophe", "possessive", "hyphen", "fragment", "ampersand-slash",
         "digits", "transcriber-note", "whitespace", "non-ascii", "normalized-text")  # fmt: skip


def unescape(text: str) -> str:
    return text.replace("\\t", "\t").replace("\\n", "\n").replace("\\\\", "\\")


def load_cases() -> list[dict]:
    with FIXTURE.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [{k: unescape(v) for k, v in row.items()} for row in rows]


CASES = load_cases()


def test_the_fixture_covers_every_rule():
    counts = Counter(c["rule"] for c in CASES)
    assert len(CASES) >= 300
    assert {r: counts[r] >= 4 for r in RULES} == {r: True for r in RULES}
    assert sum(n for r, n in counts.items() if r.startswith("generated-")) == 240


# (ids of plain characters: a test id must be usable on pytest's command line)
@pytest.mark.parametrize("case", CASES, ids=[f"{c['rule']}-{i}" for i, c in enumerate(CASES)])
def test_case(case):
    text, words, tokens = case["text"], case["words"].split(), case["tokens"].split()
    assert normalize_utterance(text) == words
    assert tokenize(text, "words") == words
    assert tokenize(text) == tokens
    # wordpunct is NLTK's WordPunctTokenizer on the normalized words
    assert tokens == [t for w in words for t in WordPunctTokenizer().tokenize(w)]
    assert detokenize(tokens) == case["shown"]
    # display: the normalized words, but for the one ambiguity of a fragment after a word
    joined = " ".join(words)
    assert case["shown"] in (joined, joined.replace(" -", "-"))
    # normalizing is idempotent: the normalized text of Zhao's release stays as it is
    assert normalize_utterance(joined) == words


def test_fragments_are_kept_with_their_hyphen():
    """Zhao's transcripts mark a cut-off word with a leading hyphen ("-til"): a word, not
    punctuation, and split by wordpunct into the hyphen and the rest."""
    assert normalize_utterance("up -til now") == ["up", "-til", "now"]
    assert tokenize("-til then") == ["-", "til", "then"]
    assert detokenize(["-", "eah"]) == "-eah"
    assert detokenize(["up", "-", "til"]) == "up-til"  # the ambiguity (brand-new is the same)


# --- the training corpus reader ---------------------------------------------------------------


@pytest.mark.parametrize(
    "segment, continues",
    [
        ("I was fortunate in that", True),
        ("But there's,", True),
        ("Okay.", False),
        ("Really?", False),
        ("Wow!", False),
        ("Okay.  ", False),
        ("No. Huh-uh. *two utts", False),  # the note is not what ends the sentence
        ("I see that *sd.", True),
        ("", True),
        ("so -- anyway", True),
    ],
)
def test_a_segment_continues_unless_it_ends_a_sentence(segment, continues):
    assert join_continuations(segment) is continues


def test_swda_lines_and_sentences_through_the_reader(tmp_path):
    lines = [
        "A|Okay.|fo_o_fw_by_bc",
        "B|Uh, our,|%",  # continued by B's next segment
        "B|had place my mother in a nursing home.|sd",
        "A|Uh.|b",  # empty once the filler is gone: dropped
        "A|Uh-huh.|b",
        "B|a|b|c|sd",  # a '|' inside the text survives
        "B|It's -til then *note|",
    ]
    path = tmp_path / "2001.txt"
    path.write_text("\n".join(lines) + "\n")
    stats = ReadStats()
    dialog = read_swda_file(path, stats=stats)
    assert [(u.speaker, " ".join(u.tokens), u.act) for u in dialog.utterances] == [
        ("A", "okay", "fo_o_fw_by_bc"),
        ("B", "our had place my mother in a nursing home", "%"),
        ("A", "uh - huh", "b"),
        ("B", "a b c it ' s - til then", "sd"),
    ]
    assert (stats.dropped_empty_utterances, stats.joined_segments) == (1, 2)
    assert parse_swda_line("B|a|b|c|", "x") == ("B", "a|b|c", None)


def test_a_joiner_or_hyphen_at_the_end():
    """The last token has no next one to glue (the fixture's token lists never end so)."""
    assert detokenize(["the", "kids", "'"]) == "the kids'"
    assert detokenize(["it", "'"]) == "it'"
    assert detokenize(["well", "-"]) == "well-"
    assert detokenize(["-"]) == "-"
