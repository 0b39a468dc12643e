"""What the model reads of a conversation, and how much of it it could not read.

Only the trailing window of ``max_context`` turns is read (the model's context), each turn up to
``max_utt_len`` tokens: reading costs the same however many turns there are. Text
the tokenizer drops (punctuation aside) is counted as unreadable: letters outside a-z, digits
outside 0-9, emoji and other symbols.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from model.batch import next_speaker
from model.cvae import DialogCVAE
from model.text import tokenize
from model.vocab import Vocabulary
from service.schemas import InputReport

# Most of the input unreadable (by the measure of InputReport.unknown_rate): the response says so.
WARN_ABOVE = 0.5
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")


@dataclass(frozen=True)
class Reading:
    turns: list[tuple[str, list[str]]]  # the window: (speaker, tokens), oldest first
    responder: str
    report: InputReport


def read_conversation(
    turns: Sequence[tuple[str, str]],
    responder: str | None,
    model: DialogCVAE,
    vocab: Vocabulary,
) -> Reading:
    """``turns`` (speaker, raw text) -> the tokens the model reads and an :class:`InputReport`.

    ``responder`` defaults to the speaker other than the last turn's, looking back over the
    whole conversation, not only the window.
    """
    cfg = model.config
    tokenizer = cfg.tokenizer  # the checkpoint's own (model/checkpoint.py: words if unnamed)
    window = list(turns[-cfg.max_context :])
    read = [(speaker, tokenize(text, tokenizer)[: cfg.max_utt_len]) for speaker, text in window]
    tokens = sum(len(t) for _, t in read)
    unknown = sum(t not in vocab for _, toks in read for t in toks)
    unreadable = sum(unreadable_pieces(text) for _, text in window)
    pieces = tokens + unreadable
    rate = (unknown + unreadable) / pieces if pieces else 0.0
    warning = None
    if rate > WARN_ABOVE:
        warning = (
            f"most of the input could not be read: of {tokens} tokens, {unknown} are not in the "
            f"model's vocabulary, and {unreadable} pieces of text (other scripts, accented "
            "letters, emoji) were dropped. The model reads English; its responses are a guess."
        )
    speakers = [(speaker, ()) for speaker, _ in turns]
    return Reading(
        turns=read,
        responder=responder or next_speaker(speakers),
        report=InputReport(
            turns=len(turns),
            turns_read=len(read),
            tokens=tokens,
            unknown_tokens=unknown,
            unreadable=unreadable,
            unknown_rate=round(rate, 4),
            warning=warning,
        ),
    )


def unreadable_pieces(text: str) -> int:
    """Runs of characters the normalization drops that are not punctuation or spacing: words in
    other scripts, accented letters, emoji ("¿qué tal? 🙂" -> "é", "🙂": 2)."""
    return sum(
        any(unicodedata.category(ch)[0] in "LNS" for ch in run)
        for run in _NON_ASCII_RUN.findall(text)
    )
