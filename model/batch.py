"""Turning dialogs into model input.

Zhao et al. (2017) put a begin-of-dialog marker utterance ``<s> <d> </s>`` before every dialog;
here every real utterance is then a response whose context is the previous <= ``max_context``
utterances (the marker included while it is in the window), each with a floor flag saying
whether it was said by the responding speaker.

A :class:`DialogBatch` stores every distinct utterance once and describes each example's
context as indices into that table. The model therefore encodes each utterance once per batch
and gathers the context windows from those encodings, instead of re-encoding an utterance for
each of the up to 11 windows it appears in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch

from model.vocab import Vocabulary

Turn = tuple[str, Sequence[str]]  # (speaker, normalized tokens)


@dataclass
class DialogBatch:
    utterances: torch.Tensor  # [U, L] every distinct utterance once: <s> w1..wn </s>, 0-padded
    utt_lengths: torch.Tensor  # [U] including <s> and </s>
    context_index: torch.Tensor  # [E, W] rows of `utterances`, oldest first, -1 = padding
    context_lengths: torch.Tensor  # [E]
    context_floor: torch.Tensor  # [E, W] 1 if that utterance is by the responding speaker
    response_index: torch.Tensor | None = None  # [E] row holding the response; None at inference
    # CPU copies of the lengths and response rows, kept when the batch moves to a GPU:
    # pack_padded_sequence needs lengths on the host, and reading them back would stall.
    host: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    HOST_FIELDS = ("utt_lengths", "context_lengths", "response_index")

    @property
    def num_examples(self) -> int:
        return self.context_index.shape[0]

    def on_host(self, name: str) -> torch.Tensor:
        """Field ``name`` (one of HOST_FIELDS) on the CPU, without a device sync when the batch
        was built there."""
        kept = self.host.get(name)
        return kept if kept is not None else getattr(self, name).cpu()

    def _moved(self, move) -> DialogBatch:
        host = dict(self.host)
        for name in self.HOST_FIELDS:
            value = getattr(self, name)
            if value is not None and value.device.type == "cpu":
                host.setdefault(name, value)
        moved = {
            f.name: (move(v) if isinstance(v, torch.Tensor) else v)
            for f in fields(self)
            if f.name != "host"
            for v in [getattr(self, f.name)]
        }
        return DialogBatch(**moved, host=host)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> DialogBatch:
        return self._moved(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> DialogBatch:
        """The batch in page-locked memory, for an asynchronous copy to a GPU."""
        return self._moved(lambda t: t.pin_memory())

    def responses(self) -> torch.Tensor:
        """The response utterances [E, L] (<s> w1..wn </s>, 0-padded)."""
        if self.response_index is None:
            raise ValueError("this batch has no responses (built for inference)")
        return self.utterances[self.response_index]


def encode_utterance(vocab: Vocabulary, tokens: Sequence[str], max_utt_len: int = 40) -> list[int]:
    """``<s> w1..wn </s>`` with the words truncated to ``max_utt_len``."""
    return [vocab.bos_id, *vocab.encode(tokens[:max_utt_len]), vocab.eos_id]


class _BatchBuilder:
    def __init__(self, vocab: Vocabulary, max_context: int, max_utt_len: int):
        self.vocab, self.max_context, self.max_utt_len = vocab, max_context, max_utt_len
        # Row 0 is the begin-of-dialog marker, shared by every dialog of the batch.
        self.rows: list[list[int]] = [[vocab.bos_id, vocab.bod_id, vocab.eos_id]]
        self.contexts: list[list[int]] = []
        self.floors: list[list[int]] = []
        self.responses: list[int] = []

    def add_rows(self, turns: Sequence[Turn]) -> list[int]:
        start = len(self.rows)
        self.rows.extend(encode_utterance(self.vocab, toks, self.max_utt_len) for _, toks in turns)
        return [0, *range(start, start + len(turns))]

    def add_example(
        self, rows: list[int], speakers: Sequence[str | None], end: int, responder: str | None
    ):
        """Context = rows[end - max_context : end] (position 0 is the marker, speaker None)."""
        lo = max(0, end - self.max_context)
        self.contexts.append(rows[lo:end])
        self.floors.append([int(s is not None and s == responder) for s in speakers[lo:end]])

    def build(self, with_responses: bool) -> DialogBatch:
        n, width = len(self.contexts), max(len(c) for c in self.contexts)
        context_index = torch.full((n, width), -1, dtype=torch.long)
        context_floor = torch.zeros((n, width), dtype=torch.long)
        for i, (ctx, flo) in enumerate(zip(self.contexts, self.floors, strict=True)):
            context_index[i, : len(ctx)] = torch.tensor(ctx)
            context_floor[i, : len(flo)] = torch.tensor(flo)
        lengths = torch.tensor([len(r) for r in self.rows])
        utterances = torch.zeros((len(self.rows), int(lengths.max())), dtype=torch.long)
        for i, r in enumerate(self.rows):
            utterances[i, : len(r)] = torch.tensor(r)
        return DialogBatch(
            utterances=utterances,
            utt_lengths=lengths,
            context_index=context_index,
            context_lengths=torch.tensor([len(c) for c in self.contexts]),
            context_floor=context_floor,
            response_index=torch.tensor(self.responses) if with_responses else None,
        )


def dialog_batch(
    dialogs: Sequence[Sequence[Turn]],
    vocab: Vocabulary,
    max_context: int = 10,
    max_utt_len: int = 40,
    spans: Sequence[tuple[int, int]] | None = None,
) -> DialogBatch:
    """Training/evaluation examples: every utterance of ``dialogs`` is a response once.

    ``spans[i] = (start, end)`` restricts dialog ``i`` to the responses ``turns[start:end]``;
    only the utterances those responses and their contexts need are put in the batch.
    """
    builder = _BatchBuilder(vocab, max_context, max_utt_len)
    for i, turns in enumerate(dialogs):
        start, end = spans[i] if spans is not None else (0, len(turns))
        if not 0 <= start <= end <= len(turns):
            raise ValueError(f"span {(start, end)} out of range for a dialog of {len(turns)} turns")
        # Position p of the dialog is the marker (p = 0) or turn p - 1; a response at position
        # p sees positions p - max_context .. p - 1.
        first = max(0, start + 1 - max_context)
        needed = turns[max(0, first - 1) : end]
        rows = builder.add_rows(needed)
        if first > 0:
            rows = [-1] * first + rows[1:]  # positions before `first` are never looked at
        speakers = [None, *(spk for spk, _ in turns[:end])]
        for p in range(start + 1, end + 1):
            builder.add_example(rows, speakers, p, responder=speakers[p])
            builder.responses.append(rows[p])
    if not builder.contexts:
        raise ValueError("dialog_batch needs at least one dialog with an utterance")
    return builder.build(with_responses=True)


def next_speaker(turns: Sequence[Turn]) -> str:
    """The speaker who answers: the other one of a two-party dialog ("B" after "A").

    With one speaker alone, the other is "B" after "A" and "A" after anyone else (a speaker
    called "C" is answered by "A": the model knows two parties, not their names)."""
    if not turns:
        return "B"  # Switchboard dialogs open with speaker A; the marker stands for that turn
    last = turns[-1][0]
    others = [s for s, _ in reversed(turns) if s != last]
    if others:
        return others[0]
    return "B" if last == "A" else "A"


def context_batch(
    contexts: Sequence[Sequence[Turn]],
    vocab: Vocabulary,
    responders: Sequence[str | None] | None = None,
    max_context: int = 10,
    max_utt_len: int = 40,
) -> DialogBatch:
    """One inference example per context (a dialog so far, possibly empty)."""
    if not contexts:
        raise ValueError("context_batch needs at least one context")
    builder = _BatchBuilder(vocab, max_context, max_utt_len)
    for i, turns in enumerate(contexts):
        # Only the last max_context - 1 turns can be in the window next to the marker.
        turns = list(turns)[-max_context:]
        rows = builder.add_rows(turns)
        speakers: list[str | None]
        if len(turns) == max_context:
            rows = rows[1:]  # the marker has left the window
            speakers = [spk for spk, _ in turns]
        else:
            speakers = [None, *(spk for spk, _ in turns)]
        responder = (responders[i] if responders else None) or next_speaker(turns)
        builder.add_example(rows, speakers, len(rows), responder)
    return builder.build(with_responses=False)
