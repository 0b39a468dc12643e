"""Dialog-level batching.

A Switchboard conversation has ~170 utterances, and each is the response of one example. A batch
is made of *segments*: runs of ``segment_size`` consecutive responses from several different
dialogs. All utterances a segment needs (its responses and the <= 10 before them) are encoded
once, so a segment of 16 responses costs ~26 utterance encodings instead of the ~16 x 11 that
re-encoding every context window would cost, while a batch still mixes several conversations.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from model.batch import DialogBatch, Turn, dialog_batch
from model.vocab import Vocabulary


@dataclass(frozen=True)
class Segment:
    dialog: int
    start: int  # first response (turn index)
    end: int  # one past the last response


def make_segments(dialogs: Sequence[Sequence[Turn]], segment_size: int) -> list[Segment]:
    return [
        Segment(i, s, min(s + segment_size, len(turns)))
        for i, turns in enumerate(dialogs)
        for s in range(0, len(turns), segment_size)
    ]


class SegmentBatches:
    """Shuffled batches of ``segments_per_batch`` segments, the order fixed by (seed, epoch)."""

    def __init__(
        self,
        dialogs: Sequence[Sequence[Turn]],
        vocab: Vocabulary,
        segment_size: int,
        segments_per_batch: int,
        max_context: int = 10,
        max_utt_len: int = 40,
        seed: int = 0,
    ):
        self.dialogs, self.vocab = dialogs, vocab
        self.max_context, self.max_utt_len = max_context, max_utt_len
        self.segments = make_segments(dialogs, segment_size)
        self.segments_per_batch = segments_per_batch
        self.seed = seed

    def __len__(self) -> int:
        return -(-len(self.segments) // self.segments_per_batch)

    def examples_per_batch(self) -> float:
        """The mean number of examples (responses) per batch."""
        return sum(s.end - s.start for s in self.segments) / max(len(self), 1)

    def order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.segments), generator=g).tolist()

    def batch(self, segment_ids: Sequence[int]) -> DialogBatch:
        segs = [self.segments[i] for i in segment_ids]
        return dialog_batch(
            [self.dialogs[s.dialog] for s in segs],
            self.vocab,
            self.max_context,
            self.max_utt_len,
            spans=[(s.start, s.end) for s in segs],
        )

    def epoch(
        self, epoch: int, skip: int = 0, rank: int = 0, world: int = 1
    ) -> Iterator[DialogBatch]:
        """Batches of ``epoch`` from batch number ``skip`` on; with ``world`` > 1, this rank's share."""
        order = self.order(epoch)
        k = self.segments_per_batch
        for b in range(skip, len(self)):
            ids = order[b * k : (b + 1) * k]
            if len(ids) < world:  # a last batch too small to give every process a segment
                continue
            yield self.batch(ids[rank::world] if world > 1 else ids)


def eval_batches(
    dialogs: Sequence[Sequence[Turn]],
    vocab: Vocabulary,
    dialogs_per_batch: int = 4,
    max_context: int = 10,
    max_utt_len: int = 40,
) -> Iterator[DialogBatch]:
    """Every example of ``dialogs`` once, in order, a few whole dialogs per batch."""
    for i in range(0, len(dialogs), dialogs_per_batch):
        chunk = [d for d in dialogs[i : i + dialogs_per_batch] if len(d)]
        if chunk:
            yield dialog_batch(chunk, vocab, max_context, max_utt_len)
