"""Text conventions shared by training data, evaluation and the service.

Zhao et al.'s Switchboard split (the test set of the BN-VAE paper) is lower case, has no
punctuation, drops the fillers ``uh``/``um`` and keeps backchannels such as ``uh-huh`` and
``um-hum`` and intra-word apostrophes/hyphens (``don't``, ``part-time``). Every piece of text
that reaches the model (SwDA training text, a user's own dialogs, a service request) goes
through :func:`normalize_utterance` so it is measured on the same distribution it was
trained on.
"""

from __future__ import annotations

import re

FILLERS = frozenset({"uh", "um"})

# A word: letters/digits, optionally joined by intra-word apostrophes, hyphens, '&' or '/'
# ("don't", "sister-in-law's", "a&m", "20/20"); a trailing possessive apostrophe is kept after
# an s ("kids'"); a leading hyphen marks a word fragment in Zhao's transcripts ("-eah").
_WORD = re.compile(r"(?<![a-z0-9])-?[a-z0-9]+(?:['\-&/][a-z0-9]+)*(?:(?<=s)')?")


def normalize_utterance(text: str) -> list[str]:
    """Return the tokens of ``text`` in the test split's conventions."""
    # SwDA transcribers append notes after '*' ("... *listen", "*typo"); they are not speech.
    text = text.split("*", 1)[0].lower()
    return [w for w in _WORD.findall(text) if w not in FILLERS]


def tokenize(text: str) -> list[str]:
    """Split already-normalized text (the prepared corpus) into tokens."""
    return text.split()
