"""Zhao's tokenization: NLTK's WordPunct on the real valid split, and detokenizing for display."""

from __future__ import annotations

import json

import pytest
from nltk.tokenize import WordPunctTokenizer

from model.text import detokenize, normalize_utterance, tokenize, wordpunct
from tests.conftest import require_shared_data


def zhao_texts(split: str) -> list[str]:
    path = require_shared_data() / "zhao" / f"{split}.jsonl"
    return [u[1] for line in path.open() for u in json.loads(line)["utts"]]


def test_tokens_equal_nltk_wordpunct_on_every_valid_utterance():
    nltk_tokenize = WordPunctTokenizer().tokenize
    texts = zhao_texts("valid")
    assert len(texts) == 5225
    mismatches = [t for t in texts if tokenize(t) != nltk_tokenize(t.lower())]
    assert mismatches == []


def test_detokenize_round_trips_the_valid_split():
    texts = zhao_texts("valid")
    failures = [t for t in texts if detokenize(tokenize(t)) != " ".join(t.split())]
    # The one ambiguity WordPunct leaves: a word fragment after a word ("up -til") gives the same
    # tokens as a hyphenated word ("up-til"). Nothing else may fail.
    assert len(failures) <= 10
    for t in failures:
        assert " -" in t and detokenize(tokenize(t)) == t.replace(" -", "-")


@pytest.mark.parametrize(
    "text, tokens, shown",
    [
        ("It's a brand-new car, uh, isn't it?", "it ' s a brand - new car isn ' t it", None),
        ("Uh-huh.", "uh - huh", "uh-huh"),
        ("The kids' toys at A&M", "the kids ' toys at a & m", None),
        ("we've got 20/20 vision", "we ' ve got 20 / 20 vision", None),
    ],
)
def test_tokenize_and_detokenize(text, tokens, shown):
    assert tokenize(text) == tokens.split()
    expected = shown or " ".join(normalize_utterance(text))
    assert detokenize(tokens.split()) == expected


def test_words_tokenizer_is_the_old_normalization():
    text = "Well, I don't know, uh, it's the kids' thing."
    assert tokenize(text, "words") == normalize_utterance(text)
    assert detokenize(tokenize(text, "words")) == " ".join(normalize_utterance(text))
    with pytest.raises(ValueError, match="unknown tokenizer"):
        tokenize(text, "bpe")
    assert wordpunct("don't!?") == ["don", "'", "t", "!?"]


def test_typographic_apostrophes_are_apostrophes():
    assert tokenize("It\u2019s what they\u2018ve said") == tokenize("It's what they've said")
    assert normalize_utterance("don\u2019t") == ["don't"]


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("Um-hum.", ["um", "-", "hum"]),
        ("um-hum", ["um", "-", "hum"]),
        ("Uh-huh.", ["uh", "-", "huh"]),
        ("Huh-uh.", ["huh", "-", "uh"]),
    ],
)
def test_backchannels_keep_their_form(text, tokens):
    """`um-hum` and `uh-huh` stay distinct: the training text's near absence of `um - hum` (8
    utterances against 12,620 `uh - huh`) is the SwDA export's, not the normalization's."""
    assert tokenize(text, "wordpunct") == tokens
