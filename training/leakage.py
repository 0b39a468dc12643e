"""Keep valid/test conversations out of training: detect the same conversation by content.

About half of Zhao's valid and test dialogs are also SwDA conversations, transcribed and
segmented differently (SwDA keeps ``uh``/``um``, splits and joins turns elsewhere), so no line
matches exactly. Both are compared after :func:`model.text.normalize_utterance`, as *sets of
word 5-grams over the whole dialog* (the token stream with utterance boundaries ignored, so the
segmentation does not matter). The score of a candidate ``C`` against a reference ``R`` is the
containment

    score = |ngrams(C) & ngrams(R)| / min(|ngrams(C)|, |ngrams(R)|)

A candidate is a leak when its best score is ``>= threshold`` *and* at least ``min_shared``
5-grams are shared (so a tiny dialog cannot match on a couple of stock phrases).

Threshold (measured by ``python -m training.prepare`` on the shared data, its manifest's
``leakage`` entry: the 1,115 SwDA training conversations against Zhao's 60 valid + 62 test
dialogs; SwDA's 21 val conversations are held out and not candidates): the 53 matches (27 valid,
26 test) score 0.366-0.862 and share >= 87 5-grams; every other conversation's best score is
<= 0.040 (2924 against test dialog 23, 16 shared 5-grams). The default threshold 0.2 sits 5x
above the highest non-match and 1.8x below the lowest match; 1,062 conversations are kept.

The reference 5-grams are indexed once (5-gram -> reference dialogs); each candidate is scored
against all references in one pass over its own 5-grams.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TypeGuard

from training.corpus import Dialog

DEFAULT_N = 5
DEFAULT_THRESHOLD = 0.2
DEFAULT_MIN_SHARED = 20

Ngram = tuple[str, ...]


def dialog_ngrams(dialog: Dialog, n: int = DEFAULT_N) -> set[Ngram]:
    """The set of word ``n``-grams of the dialog's token stream (utterance boundaries ignored)."""
    tokens = list(dialog.tokens())
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


@dataclass(frozen=True)
class LeakMatch:
    """A candidate dialog's overlap with one reference dialog."""

    dialog_id: str  # the candidate (e.g. SwDA conversation number)
    split: str  # the reference split ("valid", "test")
    index: int  # the reference dialog's position in that split
    ref_id: str  # the reference dialog's id
    shared: int  # shared n-grams
    score: float  # containment, see the module docstring

    def to_json(self) -> dict:
        d = asdict(self)
        d["score"] = round(self.score, 4)
        return d


class NgramIndex:
    """Word n-grams of reference dialogs, indexed once for scoring many candidates."""

    def __init__(self, references: Mapping[str, Sequence[Dialog]], n: int = DEFAULT_N):
        self.n = n
        self.refs: list[tuple[str, int, str, int]] = []  # (split, index, id, number of n-grams)
        index: dict[Ngram, list[int]] = defaultdict(list)
        for split, dialogs in references.items():
            for i, d in enumerate(dialogs):
                grams = dialog_ngrams(d, n)
                r = len(self.refs)
                self.refs.append((split, i, d.id, len(grams)))
                for g in grams:
                    index[g].append(r)
        self.index = dict(index)

    def scores(self, dialog: Dialog) -> list[LeakMatch]:
        """Every reference sharing at least one n-gram with ``dialog``, best score first."""
        grams = dialog_ngrams(dialog, self.n)
        counts = Counter(r for g in grams for r in self.index.get(g, ()))
        out = []
        for r, shared in counts.items():
            split, i, ref_id, size = self.refs[r]
            score = shared / max(1, min(len(grams), size))
            out.append(LeakMatch(dialog.id, split, i, ref_id, shared, score))
        out.sort(key=lambda m: (-m.score, m.split, m.index))
        return out

    def best(self, dialog: Dialog) -> LeakMatch | None:
        """The highest-scoring reference for ``dialog`` (``None`` if nothing is shared)."""
        s = self.scores(dialog)
        return s[0] if s else None


@dataclass
class LeakReport:
    """Result of :func:`filter_leaks`."""

    kept: list[Dialog]
    excluded: list[LeakMatch]  # best match of every excluded candidate, in candidate order
    max_kept: LeakMatch | None  # best score among the kept candidates (the margin)
    n: int = DEFAULT_N
    threshold: float = DEFAULT_THRESHOLD
    min_shared: int = DEFAULT_MIN_SHARED
    excluded_per_split: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready record for the manifest."""
        return {
            "method": f"containment of word {self.n}-grams over the whole dialog",
            "n": self.n,
            "threshold": self.threshold,
            "min_shared": self.min_shared,
            "candidates": len(self.kept) + len(self.excluded),
            "excluded_count": len(self.excluded),
            "excluded_per_split": self.excluded_per_split,
            "min_excluded_score": (
                round(min(m.score for m in self.excluded), 4) if self.excluded else None
            ),
            "max_kept_score": round(self.max_kept.score, 4) if self.max_kept else 0.0,
            "max_kept_match": self.max_kept.to_json() if self.max_kept else None,
            "excluded": [m.to_json() for m in self.excluded],
        }


def is_leak(match: LeakMatch | None, threshold: float, min_shared: int) -> TypeGuard[LeakMatch]:
    return match is not None and match.score >= threshold and match.shared >= min_shared


def filter_leaks(
    candidates: Iterable[Dialog],
    references: Mapping[str, Sequence[Dialog]] | NgramIndex,
    *,
    n: int = DEFAULT_N,
    threshold: float = DEFAULT_THRESHOLD,
    min_shared: int = DEFAULT_MIN_SHARED,
    progress: bool = False,
) -> LeakReport:
    """Split ``candidates`` into the ones to keep and the ones that are a reference dialog.

    ``references`` maps a split name to its dialogs (or is a prebuilt :class:`NgramIndex`).
    """
    from tqdm import tqdm

    index = references if isinstance(references, NgramIndex) else NgramIndex(references, n)
    candidates = list(candidates)
    kept: list[Dialog] = []
    excluded: list[LeakMatch] = []
    max_kept: LeakMatch | None = None
    per_split: Counter[str] = Counter()
    for d in tqdm(candidates, desc="leakage", unit="dialog", disable=not progress):
        best = index.best(d)
        if is_leak(best, threshold, min_shared):
            excluded.append(best)
            per_split[best.split] += 1
        else:
            kept.append(d)
            if best is not None and (max_kept is None or best.score > max_kept.score):
                max_kept = best
    return LeakReport(
        kept, excluded, max_kept, index.n, threshold, min_shared, dict(sorted(per_split.items()))
    )
