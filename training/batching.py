"""Dialog-level batching.

A Switchboard conversation has ~170 utterances, and each is the response of one example. A batch
is made of *segments*: runs of ``segment_size`` consecutive responses from several different
dialogs. All utterances a segment needs (its responses and the <= 10 before them) are encoded
once, so a segment of 16 responses costs ~26 utterance encodings instead of the ~16 x 11 that
re-encoding every context window would cost, while a batch still mixes several conversations.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import torch

from model.batch import DialogBatch, Turn, dialog_batch
from model.vocab import Vocabulary


class Segment(NamedTuple):
    """Consecutive responses of one dialog (training batches them; evaluation too, in order)."""

    dialog: int
    start: int  # first response (turn index)
    end: int  # one past the last response


def split_dialogs(lengths: Iterable[int], segment_size: int) -> list[Segment]:
    """Each dialog's responses (``lengths``: responses per dialog) in segments of at most
    ``segment_size``, dialog by dialog."""
    return [
        Segment(i, s, min(s + segment_size, n))
        for i, n in enumerate(lengths)
        for s in range(0, n, segment_size)
    ]


def make_segments(dialogs: Sequence[Sequence[Turn]], segment_size: int) -> list[Segment]:
    return split_dialogs(map(len, dialogs), segment_size)


def plan_batches(
    lengths: Sequence[int], batch_dialogs: int, max_examples: int, limit: int | None = None
) -> list[list[Segment]]:
    """Batches of segments in dialog order, for evaluation: a batch holds at most
    ``batch_dialogs`` segments and ``max_examples`` responses (a longer dialog is split).
    ``limit`` keeps only the first ``limit`` responses overall."""
    if limit is not None:
        kept, remaining = [], limit
        for n in lengths:
            if remaining <= 0:
                break
            kept.append(min(n, remaining))
            remaining -= kept[-1]
        lengths = kept
    batches: list[list[Segment]] = []
    current: list[Segment] = []
    size = 0
    for segment in split_dialogs(lengths, max_examples):
        k = segment.end - segment.start
        if current and (len(current) >= batch_dialogs or size + k > max_examples):
            batches.append(current)
            current, size = [], 0
        current.append(segment)
        size += k
    if current:
        batches.append(current)
    return batches


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

    def batch_ids(self, epoch: int, world: int = 1) -> list[list[int]]:
        """The segment ids of each batch of ``epoch``: ``segments_per_batch`` at a time, in the
        epoch's order. Batch norm needs two or more examples in every process's share of a batch
        (a segment can be a single response: a dialog's last), so a batch too small for that
        takes in the next one; the last such batch joins the one before it (a corpus too small
        for even one such batch gives none)."""
        order, k = self.order(epoch), self.segments_per_batch
        batches: list[list[int]] = []
        pending: list[int] = []
        for i in range(0, len(order), k):
            pending += order[i : i + k]
            if self.splits(pending, world):
                batches.append(pending)
                pending = []
        if pending and batches:
            batches[-1] += pending
        return batches

    def splits(self, segment_ids: Sequence[int], world: int) -> bool:
        """Whether each of ``world`` processes gets two or more examples of this batch."""
        segs = self.segments
        shares = (segment_ids[rank::world] for rank in range(world))
        return all(sum(segs[i].end - segs[i].start for i in share) >= 2 for share in shares)

    def epoch(
        self, epoch: int, skip: int = 0, rank: int = 0, world: int = 1
    ) -> Iterator[DialogBatch]:
        """Batches of ``epoch`` from batch number ``skip`` on; with ``world`` > 1, this rank's share."""
        for ids in self.batch_ids(epoch, world)[skip:]:
            yield self.batch(ids[rank::world])


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


class Prefetcher:
    """Iterates ``batches`` with the next ``depth`` built (and moved to ``device``) on a background
    thread while the current one trains: building a batch takes milliseconds of Python that the
    training step would otherwise wait for. The order is unchanged. Use as a context manager, so
    that the thread stops when the loop leaves early.

    On a CUDA device the batch is copied from pinned memory without blocking the host.
    """

    _END = object()

    def __init__(self, batches: Iterable[DialogBatch], device: torch.device, depth: int = 2):
        self._batches, self._device = batches, torch.device(device)
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True, name="batch-prefetch")

    def _fill(self) -> None:
        try:
            for batch in self._batches:
                if self._device.type == "cuda":
                    batch = batch.pin_memory().to(self._device, non_blocking=True)
                elif self._device.type != "cpu":
                    batch = batch.to(self._device)
                if not self._put(batch):
                    return
        except BaseException as e:  # raised again in the consuming thread
            self._put(e)
            return
        self._put(self._END)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __enter__(self) -> Iterator[DialogBatch]:
        self._thread.start()
        return self._iterate()

    def _iterate(self) -> Iterator[DialogBatch]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
