"""The sampled responses: each example's prior draws, and the samples file people read."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from model.files import naming


def example_noise(seed: int, position: int, num_samples: int, latent_dim: int) -> torch.Tensor:
    """The standard-normal draws of one example's prior samples [num_samples, latent_dim],
    from a generator seeded with (``seed``, the example's position in the evaluation order): the
    samples do not depend on how the examples are batched or on ``--limit``."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + position)
    return torch.randn(num_samples, latent_dim, generator=g)


class SamplesFile:
    """The samples file: per example its context, reference, samples and scores; ``.jsonl``
    gives JSON lines with the model's full context, any other suffix readable text showing the
    last ``context_shown`` utterances. With ``path`` None, nothing is written."""

    def __init__(self, path: Path | None, context_shown: int, max_context: int):
        self.path = path
        self.context_shown = context_shown
        self.max_context = max_context
        self.jsonl = path is not None and path.suffix == ".jsonl"
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("w", encoding="utf-8")

    def __enter__(self) -> SamplesFile:
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            assert self.path is not None, "a file is open only with a path"
            with naming(self.path):
                self._file.close()

    def write(self, dialog_id, turn: int, position: int, turns, samples, scores: dict) -> None:
        """Example ``position`` (turn ``turn`` of dialog ``dialog_id``, whose ``turns`` are
        (speaker, tokens) pairs), its ``samples`` and their ``scores``."""
        if self._file is None:
            return
        assert self.path is not None, "a file is open only with a path"
        make = self._record if self.jsonl else self._text
        with naming(self.path):  # a full disk's error names the file
            self._file.write(make(dialog_id, turn, position, turns, samples, scores))

    def _record(self, dialog_id, turn, position, turns, samples, scores) -> str:
        speaker, reference = turns[turn]
        record = {
            "example": position,
            "dialog": dialog_id,
            "turn": turn,
            "context": [
                [spk, " ".join(toks)] for spk, toks in turns[max(0, turn - self.max_context) : turn]
            ],
            "responder": speaker,
            "reference": " ".join(reference),
            "samples": [" ".join(s) for s in samples],
            "scores": scores,
        }
        return json.dumps(record, ensure_ascii=False) + "\n"

    def _text(self, dialog_id, turn, position, turns, samples, scores) -> str:
        speaker, reference = turns[turn]
        lo = max(0, turn - self.context_shown)
        lines = [f"=== example {position}: dialog {dialog_id}, turn {turn} ===\n"]
        if lo > 0:
            lines.append("  ...\n")
        if turn == 0:
            lines.append("  (start of dialog)\n")
        for spk, toks in turns[lo:turn]:
            lines.append(f"  {spk}: {' '.join(toks)}\n")
        lines.append(f"reference {speaker}: {' '.join(reference)}\n")
        for j, s in enumerate(samples, 1):
            lines.append(f"  sample {j:2d}: {' '.join(s) if s else '(empty)'}\n")
        lines.append(
            "  BLEU-4 P/R {:.1f}/{:.1f}  A-bow P/R {:.1f}/{:.1f}  distinct-1 {:.2f}\n\n".format(
                scores["bleu4_p"], scores["bleu4_r"], scores.get("a_bow_p") or 0.0,
                scores.get("a_bow_r") or 0.0, scores["intra_distinct1"],
            )
        )  # fmt: skip
        return "".join(lines)
