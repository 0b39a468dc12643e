"""Prepare the Switchboard corpus for training: ``python -m training.prepare --out DIR``.

Inputs (defaults: ``../shared/data/switchboard/{zhao,swda}`` relative to the project root, used
only if they exist; otherwise ``--zhao``/``--swda`` are required):

* ``--zhao``: Zhao et al.'s release, a directory with ``valid.jsonl``/``test.jsonl`` (and
  optionally ``train.jsonl``) or NeuralDialog-CVAE's pickle with ``train``/``valid``/``test``.
* ``--swda``: the SwDA export (``train/`` + ``val/`` of ``NNNN.txt``), the training set when the
  Zhao release has no train split.

valid/test are Zhao's. The train set is Zhao's train split if there is one, else every SwDA
conversation. Either way, every training dialog that is the same conversation as a valid or
test dialog (see :mod:`training.leakage`) is excluded.

Output directory (every file written to a temporary name and renamed; ``manifest.json`` last, so
its presence means the directory is complete):

* ``train.jsonl``, ``valid.jsonl``, ``test.jsonl``: one dialog per line,
  ``{"id", "source", "utts": [[speaker, "tokens joined by spaces", [act_or_null, []]], ...]}``
  (Zhao's layout, read back by :func:`training.corpus.read_zhao_jsonl` with
  ``tokenizer=PRETOKENIZED``); the tokens are ``--tokenizer``'s (:mod:`model.text`) and the SwDA
  training utterances are segmented as ``--segmentation`` says (:mod:`training.corpus`);
* ``vocab.json``: :class:`model.vocab.Vocabulary` of the ``max_words`` most frequent train words;
* ``config.json``: the resolved :class:`PrepareConfig`;
* ``manifest.json``: counts per split, excluded conversations with their scores and matches,
  normalization/OOV statistics, dropped utterances, run time, inputs and file checksums.

Read it back with :func:`load_prepared`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from model.cli import parse_args
from model.files import file_kind, os_error_reason, read_bytes
from model.text import DEFAULT_TOKENIZER, LEGACY_TOKENIZER, TOKENIZERS
from model.vocab import SPECIALS, Vocabulary
from training.corpus import (
    DEFAULT_SEGMENTATION,
    PRETOKENIZED,
    SEGMENTATIONS,
    SPLITS,
    CorpusError,
    Dialog,
    ReadStats,
    parse_swda_line,
    read_swda,
    read_zhao,
    read_zhao_jsonl,
    swda_files,
    write_jsonl,
)
from training.leakage import (
    DEFAULT_MIN_SHARED,
    DEFAULT_N,
    DEFAULT_THRESHOLD,
    filter_leaks,
)

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "switchboard"
# The SwDA export's val/ conversations stay out of training: they are a held-out set in the
# training text's own format (python -m eval.switchboard --data DIR/swda/val).
SWDA_TRAIN = ("train",)
MANIFEST_VERSION = 2  # 2: the manifest names the tokenizer and the segmentation


@dataclass
class PrepareConfig:
    """Everything :func:`prepare` depends on; each field is a ``--option`` of the CLI."""

    out: str = field(metadata={"help": "output directory"})
    zhao: str | None = field(
        default=None,
        metadata={
            "help": "Zhao release: directory with valid/test[/train].jsonl, or the pickle",
            "default": f"{DEFAULT_DATA / 'zhao'} if present",
        },
    )
    swda: str | None = field(
        default=None,
        metadata={
            "help": "SwDA export directory (train/ + val/); the train set unless Zhao has "
            "a train split",
            "default": f"{DEFAULT_DATA / 'swda'} if present",
        },
    )
    tokenizer: str = field(
        default=DEFAULT_TOKENIZER,
        metadata={"help": "tokens of every split (model/text.py)", "choices": TOKENIZERS},
    )
    segmentation: str = field(
        default=DEFAULT_SEGMENTATION,
        metadata={
            "help": "SwDA training utterances: 'sentence' joins a speaker's consecutive "
            "segments until one ends a sentence (training/corpus.py)",
            "choices": SEGMENTATIONS,
        },
    )
    max_words: int = field(
        default=10_000, metadata={"help": "vocabulary size (without specials)", "ge": 1}
    )
    ngram: int = field(default=DEFAULT_N, metadata={"help": "n of the leakage n-grams", "ge": 1})
    leak_threshold: float = field(
        default=DEFAULT_THRESHOLD,
        metadata={"help": "containment score that marks a leak", "gt": 0, "le": 1},
    )
    leak_min_shared: int = field(
        default=DEFAULT_MIN_SHARED, metadata={"help": "minimum shared n-grams for a leak", "ge": 1}
    )
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def resolved(self) -> PrepareConfig:
        """Absolute paths, defaults filled in; :class:`CorpusError` if the Zhao input is missing.

        ``swda`` stays ``None`` when there is no SwDA input; :func:`prepare` needs it only if the
        Zhao release has no train split.
        """
        if self.tokenizer not in TOKENIZERS:
            raise CorpusError(f"--tokenizer must be one of {list(TOKENIZERS)}")
        if self.segmentation not in SEGMENTATIONS:
            raise CorpusError(f"--segmentation must be one of {list(SEGMENTATIONS)}")
        zhao: str | Path | None = self.zhao
        swda: str | Path | None = self.swda
        if zhao is None:
            if not (DEFAULT_DATA / "zhao").exists():
                raise CorpusError(
                    f"--zhao is required: the default {DEFAULT_DATA / 'zhao'} does not exist"
                )
            zhao = DEFAULT_DATA / "zhao"
        if swda is None and (DEFAULT_DATA / "swda").exists():
            swda = DEFAULT_DATA / "swda"
        return dataclasses.replace(
            self,
            out=str(Path(self.out).resolve()),
            zhao=str(Path(zhao).resolve()),
            swda=str(Path(swda).resolve()) if swda is not None else None,
        )


@dataclass
class PreparedCorpus:
    train: list[Dialog]
    valid: list[Dialog]
    test: list[Dialog]
    vocab: Vocabulary
    manifest: dict

    @property
    def tokenizer(self) -> str:
        """The tokenizer of every split (corpora prepared before it was recorded used words)."""
        return self.manifest.get("tokenizer", LEGACY_TOKENIZER)


# --------------------------------------------------------------------------- statistics


def split_counts(dialogs: Sequence[Dialog]) -> dict:
    """Dialogs, utterances, examples (= responses = utterances), tokens, mean utterance length
    (tokens) and utterances per dialog."""
    utts = sum(len(d.utterances) for d in dialogs)
    tokens = sum(len(u.tokens) for d in dialogs for u in d.utterances)
    return {
        "dialogs": len(dialogs),
        "utterances": utts,
        # Every utterance after the begin-of-dialog marker is a response (model/batch.py).
        "examples": utts,
        "tokens": tokens,
        "mean_utt_len": round(tokens / utts, 3) if utts else 0.0,
        "utts_per_dialog": round(utts / len(dialogs), 2) if dialogs else 0.0,
    }


def _oov(tokens: Counter, known: set[str]) -> dict:
    total = sum(tokens.values())
    oov = sum(c for w, c in tokens.items() if w not in known)
    return {
        "tokens": total,
        "oov_tokens": oov,
        "oov_rate": round(oov / total, 5) if total else 0.0,
        "oov_types": sum(1 for w in tokens if w not in known),
    }


def _token_counts(dialogs: Sequence[Dialog]) -> Counter:
    return Counter(t for d in dialogs for u in d.utterances for t in u.tokens)


def vocabulary_stats(
    train: Sequence[Dialog], evals: Mapping[str, Sequence[Dialog]], vocab: Vocabulary
) -> dict:
    """OOV rates of the evaluation splits against the vocabulary and against all train types."""
    train_counts = _token_counts(train)
    in_vocab = set(vocab.words[len(SPECIALS) :])
    train_types = set(train_counts)
    out = {
        "vocab_size": len(vocab),
        "train_word_types": len(train_types),
        "train_oov_rate_vs_vocab": _oov(train_counts, in_vocab)["oov_rate"],
        "oov_vs_vocab": {},
        "oov_vs_train_types": {},
    }
    for split, dialogs in evals.items():
        counts = _token_counts(dialogs)
        out["oov_vs_vocab"][split] = _oov(counts, in_vocab)
        out["oov_vs_train_types"][split] = _oov(counts, train_types)
    return out


def unnormalized_baseline(
    swda_dir: str, keep_ids: set[str], evals: Mapping[str, Sequence[Dialog]], max_words: int
) -> dict:
    """The same statistics with SwDA text only split on whitespace (no normalization): what
    normalization buys. Empty lines only are skipped; the kept conversations are ``keep_ids``."""
    counts: Counter = Counter()
    utts = 0
    for f in swda_files(swda_dir, SWDA_TRAIN):
        if f.stem not in keep_ids:
            continue
        for lineno, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                _, text, _ = parse_swda_line(line, f"{f}:{lineno}")
                counts.update(text.split())
                utts += 1
    vocab_words = {w for w, _ in counts.most_common(max_words)}
    tokens = sum(counts.values())
    return {
        "tokenization": "SwDA text split on whitespace (case, punctuation, fillers kept)",
        "train_word_types": len(counts),
        "train_mean_utt_len": round(tokens / utts, 3) if utts else 0.0,
        "oov_rate_vs_vocab": {
            s: _oov(_token_counts(d), vocab_words)["oov_rate"] for s, d in evals.items()
        },
        "oov_rate_vs_train_types": {
            s: _oov(_token_counts(d), set(counts))["oov_rate"] for s, d in evals.items()
        },
    }


# --------------------------------------------------------------------------- prepare


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _publish(staging: Path, out: Path) -> None:
    """The staged corpus as ``out``: renamed into place, or file by file over an earlier one."""
    if not out.exists():
        staging.chmod(0o755)  # mkdtemp's directory is private; a corpus is read by others
        os.replace(staging, out)
        return
    for f in staging.iterdir():
        os.replace(f, out / f.name)


def prepare(config: PrepareConfig) -> dict:
    """Build the prepared corpus in ``config.out``; returns the manifest (also written)."""
    t0 = time.perf_counter()
    cfg = config.resolved()
    assert cfg.zhao is not None, "resolved() fills in the Zhao input or raises"
    out = Path(cfg.out)  # made only once everything is read (a failed prepare leaves nothing)

    zhao_stats = ReadStats()
    log.info("reading Zhao release %s", cfg.zhao)
    zhao = read_zhao(cfg.zhao, zhao_stats, cfg.tokenizer)
    evals = {"valid": zhao["valid"], "test": zhao["test"]}

    swda_stats = ReadStats()
    if "train" in zhao:
        train_source, candidates = "zhao", zhao["train"]
        if config.swda is not None:
            log.warning("Zhao release has a train split: ignoring --swda %s", cfg.swda)
        cfg = dataclasses.replace(cfg, swda=None)
    else:
        if cfg.swda is None:
            raise CorpusError(
                f"{cfg.zhao} has no train split, so --swda is required "
                f"(the default {DEFAULT_DATA / 'swda'} does not exist)"
            )
        train_source = "swda"
        log.info("reading SwDA export %s", cfg.swda)
        candidates = read_swda(
            cfg.swda, swda_stats, cfg.progress, cfg.tokenizer, cfg.segmentation, SWDA_TRAIN
        )
    log.info("%d %s training candidates", len(candidates), train_source)

    leaks = filter_leaks(
        candidates,
        evals,
        n=cfg.ngram,
        threshold=cfg.leak_threshold,
        min_shared=cfg.leak_min_shared,
        progress=cfg.progress,
    )
    train = leaks.kept
    for split, dialogs in (("train", train), *evals.items()):
        if not dialogs:
            source = cfg.swda if split == "train" and train_source == "swda" else cfg.zhao
            raise CorpusError(
                f"{source}: the {split} split has no dialogs with an utterance"
                + (
                    " left after removing the leaked ones"
                    if split == "train" and candidates
                    else ""
                )
            )
    log.info(
        "excluded %d leaked conversations (%s); best kept score %.3f, lowest excluded %s",
        len(leaks.excluded),
        leaks.excluded_per_split,
        leaks.max_kept.score if leaks.max_kept else 0.0,
        f"{min(m.score for m in leaks.excluded):.3f}" if leaks.excluded else "-",
    )

    vocab = Vocabulary.build((u.tokens for d in train for u in d.utterances), cfg.max_words)
    splits = {"train": train, **evals}
    normalization = vocabulary_stats(train, evals, vocab)
    normalization["mean_utt_len"] = {s: split_counts(d)["mean_utt_len"] for s, d in splits.items()}
    segmented: dict[str, dict] = {}  # split_counts of each split under the segmentation rules
    segmentation: dict[str, object] = {"rule": cfg.segmentation, "splits": segmented}
    if train_source == "swda":
        assert cfg.swda is not None, "the SwDA training candidates were read from it"
        normalization["without_normalization"] = unnormalized_baseline(
            cfg.swda, {d.id for d in train}, evals, cfg.max_words
        )
        segmentation["joined_segments"] = swda_stats.joined_segments
        train_ids = {d.id for d in train}
        for rule in SEGMENTATIONS:  # the same training conversations under each rule
            kept = train
            if rule != cfg.segmentation:
                again = read_swda(cfg.swda, None, False, cfg.tokenizer, rule, SWDA_TRAIN)
                kept = [d for d in again if d.id in train_ids]
            segmented[f"train ({rule})"] = split_counts(kept)
    for split, dialogs in evals.items():
        segmented[split] = split_counts(dialogs)

    split_stats = {
        s: {"source": train_source if s == "train" else "zhao", **split_counts(d)}
        for s, d in splits.items()
    }
    log.info("writing %s", out)
    # Written into a staging directory beside out, then moved into place: a prepare that fails
    # while writing (a full disk) leaves no half-made corpus.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for split, dialogs in splits.items():
            write_jsonl(dialogs, staging / f"{split}.jsonl")
        vocab.save(staging / "vocab.json")
        config_dict = dataclasses.asdict(cfg)
        (staging / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")

        manifest = {
            "format_version": MANIFEST_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "inputs": {"zhao": cfg.zhao, "swda": cfg.swda, "train_source": train_source},
            "tokenizer": cfg.tokenizer,
            "segmentation": segmentation,
            "config": config_dict,
            "splits": split_stats,
            "dropped_empty_utterances": {
                "zhao": zhao_stats.dropped_empty_utterances,
                "swda": swda_stats.dropped_empty_utterances,
                "total": zhao_stats.dropped_empty_utterances + swda_stats.dropped_empty_utterances,
                "note": "utterances empty after normalization (e.g. 'Uh.'); the SwDA count covers "
                "all conversations read, including the ones excluded as leaks",
            },
            "dropped_empty_dialogs": zhao_stats.dropped_empty_dialogs
            + swda_stats.dropped_empty_dialogs,
            "leakage": leaks.summary(),
            "normalization": normalization,
            "files": {
                name: {"sha256": _sha256(staging / name)}
                for name in [f"{s}.jsonl" for s in SPLITS] + ["vocab.json"]
            },
        }
        manifest["run_time_seconds"] = round(time.perf_counter() - t0, 2)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info(
        "done in %.1fs: %s",
        manifest["run_time_seconds"],
        ", ".join(
            f"{s} {c['dialogs']} dialogs/{c['examples']} examples" for s, c in split_stats.items()
        ),
    )
    return manifest


# --------------------------------------------------------------------------- loading


def load_prepared(directory: str | Path) -> PreparedCorpus:
    """Read a directory written by :func:`prepare`.

    Raises :class:`CorpusError` naming the file when one is missing, is not valid, does not match
    the checksum recorded in ``manifest.json`` or holds a different number of dialogs.
    """
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    kind = file_kind(directory)
    if kind not in ("a directory", "missing"):
        raise CorpusError(f"{directory}: {kind}, not a prepared corpus directory")
    if file_kind(manifest_path) == "missing":
        raise CorpusError(
            f"{manifest_path}: missing (not a prepared corpus, or prepare did not finish)"
        )
    try:
        manifest = json.loads(read_bytes(manifest_path).decode("utf-8"))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
            raise ValueError("no 'splits' section")
    except OSError as e:
        raise CorpusError(f"{manifest_path}: cannot read: {os_error_reason(e)}") from e
    except ValueError as e:
        raise CorpusError(f"{manifest_path}: corrupt manifest: {e}") from e
    files = manifest.get("files", {})

    def check(path: Path) -> None:
        if not path.is_file():
            kind = file_kind(path)
            raise CorpusError(
                f"{path}: " + ("missing" if kind == "missing" else f"{kind}, not a file")
            )
        expected = files.get(path.name, {}).get("sha256")
        try:
            actual = None if expected is None else _sha256(path)
        except OSError as e:
            raise CorpusError(f"{path}: cannot read: {os_error_reason(e)}") from e
        if expected is not None and actual != expected:
            raise CorpusError(
                f"{path}: checksum differs from {manifest_path} (file changed or corrupt)"
            )

    vocab_path = directory / "vocab.json"
    check(vocab_path)
    try:
        vocab = Vocabulary.load(vocab_path)
    except ValueError as e:
        raise CorpusError(str(e)) from e
    loaded = {}
    for split in SPLITS:
        path = directory / f"{split}.jsonl"
        check(path)
        dialogs = read_zhao_jsonl(path, tokenizer=PRETOKENIZED)
        want = manifest["splits"].get(split, {}).get("dialogs")
        if want is not None and want != len(dialogs):
            raise CorpusError(f"{path}: {len(dialogs)} dialogs, {manifest_path} says {want}")
        loaded[split] = dialogs
    return PreparedCorpus(loaded["train"], loaded["valid"], loaded["test"], vocab, manifest)


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(
        PrepareConfig,
        argv,
        prog="python -m training.prepare",
        description="Prepare Switchboard (Zhao valid/test + SwDA train minus leaked "
        "conversations) for training.",
    )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = PrepareConfig(**args.values)
    try:
        manifest = prepare(config)
    except CorpusError as e:
        log.error("%s", e)
        return 2
    print(json.dumps({"out": manifest["config"]["out"], "splits": manifest["splits"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
