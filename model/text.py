"""Text conventions shared by training data, evaluation and the service.

Two steps turn any text (SwDA training text, Zhao's test split, a user's own dialogs, a service
request) into the tokens the model sees:

1. :func:`normalize_utterance`: Zhao et al.'s Switchboard conventions. Lower case, no
   punctuation, the fillers ``uh``/``um`` dropped, backchannels such as ``uh-huh`` and intra-word
   apostrophes/hyphens kept (``don't``, ``part-time``). It is the identity on the already
   normalized text of Zhao's valid/test split (checked on every utterance in the tests).
2. The checkpoint's tokenizer (:data:`TOKENIZERS`, named in its ``config.json``):

   * ``wordpunct``: what Zhao's code does (``WordPunctTokenizer().tokenize(utt.lower())`` in
     NeuralDialog-CVAE's ``SWDADialogCorpus``): NLTK's regex ``\\w+|[^\\w\\s]+``, so
     ``it's`` -> ``it ' s`` and ``uh-huh`` -> ``uh - huh``. Perplexity is then per Zhao token,
     as in the papers' tables.
   * ``words``: the normalized words as they are (``it's``, ``uh-huh``): what checkpoints trained
     before the switch to ``wordpunct`` use; they keep loading, serving and evaluating with it.

:func:`detokenize` turns tokens back into readable text for display (``it ' s`` -> ``it's``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

FILLERS = frozenset({"uh", "um"})
TOKENIZERS = ("wordpunct", "words")
DEFAULT_TOKENIZER = "wordpunct"
# Checkpoints whose config.json names no tokenizer were trained on whitespace words.
LEGACY_TOKENIZER = "words"

# A word: letters/digits, optionally joined by intra-word apostrophes, hyphens, '&' or '/'
# ("don't", "sister-in-law's", "a&m", "20/20"); a trailing possessive apostrophe is kept after
# an s ("kids'"); a leading hyphen marks a word fragment in Zhao's transcripts ("-eah").
_WORD = re.compile(r"(?<![a-z0-9])-?[a-z0-9]+(?:['\-&/][a-z0-9]+)*(?:(?<=s)')?")
# NLTK's WordPunctTokenizer pattern (nltk.tokenize.regexp.WordPunctTokenizer), with Python's
# unicode-aware \w exactly as NLTK compiles it.
_WORDPUNCT = re.compile(r"\w+|[^\w\s]+")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
# Punctuation that joins the words around it in normalized text (see _WORD).
_JOINERS = frozenset({"'", "-", "&", "/"})
# What follows an apostrophe inside a word ("it's", "don't", "we've"); after any other word an
# apostrophe that follows an s is a plural possessive ("teachers' holidays").
_CLITICS = frozenset({"s", "t", "ve", "re", "ll", "d", "m"})


def normalize_utterance(text: str) -> list[str]:
    """The words of ``text`` in the test split's conventions."""
    # SwDA transcribers append notes after '*' ("... *listen", "*typo"); they are not speech.
    # Typographic apostrophes (what phones and word processors type) are apostrophes.
    text = text.split("*", 1)[0].lower().translate(_APOSTROPHES)
    return [w for w in _WORD.findall(text) if w not in FILLERS]


def wordpunct(text: str) -> list[str]:
    """NLTK's ``WordPunctTokenizer().tokenize(text)``."""
    return _WORDPUNCT.findall(text)


def check_tokenizer(name: str) -> str:
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; choose from {list(TOKENIZERS)}")
    return name


def tokenize(text: str, tokenizer: str = DEFAULT_TOKENIZER) -> list[str]:
    """Raw text (any casing, punctuation, fillers) -> the model's tokens."""
    words = normalize_utterance(text)
    if check_tokenizer(tokenizer) == "words":
        return words
    return [t for w in words for t in wordpunct(w)]


def split_tokens(text: str) -> list[str]:
    """Tokens that were written joined by single spaces (a prepared corpus) -> the tokens."""
    return text.split()


def detokenize(tokens: Sequence[str]) -> str:
    """Readable text: the pieces a word was split into are joined again.

    ``it ' s`` -> ``it's``, ``uh - huh`` -> ``uh-huh``, ``a & m`` -> ``a&m``, ``kids '`` ->
    ``kids'``, ``- eah`` -> ``-eah``. The inverse of ``wordpunct`` on normalized text, but
    for one ambiguity tokenization cannot resolve: a fragment after a word (``up -til``) comes
    back hyphenated (``up-til``), since ``brand-new`` gives the same tokens. ``words`` tokens
    pass through unchanged.
    """
    out: list[str] = []
    glue_next = False
    for i, tok in enumerate(tokens):
        if tok in _JOINERS and out and out[-1][-1:].isalnum():
            # "it ' s": attach to the word before, and the next word to it
            out[-1] += tok
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
            possessive = tok == "'" and out[-1].endswith("s'") and nxt not in _CLITICS
            glue_next = nxt[:1].isalnum() and not possessive
            continue
        if tok == "-" and i + 1 < len(tokens) and tokens[i + 1][:1].isalnum():
            out.append(tok)  # a leading hyphen marks a fragment: "- eah" -> "-eah"
            glue_next = True
            continue
        if glue_next:
            out[-1] += tok
        else:
            out.append(tok)
        glue_next = False
    return " ".join(out)
