"""Where the evaluated dialogs come from: ``--data``, a prepared corpus, or Zhao's release."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections import Counter
from pathlib import Path

from eval.config import DEFAULT_PREPARED, DEFAULT_ZHAO, EvalConfig, EvalError
from model.files import file_kind
from model.text import detokenize, tokenize

log = logging.getLogger(__name__)


def load_dialogs(config: EvalConfig, tokenizer: str) -> tuple[list, str, EvalConfig]:
    """The dialogs to evaluate as ``tokenizer``'s tokens, a description of where they came from
    and ``config`` with the data paths actually used filled in.

    A prepared corpus is used when its tokens are ``tokenizer``'s; otherwise (a checkpoint
    trained on another tokenizer) Zhao's raw ``<split>.jsonl`` is read and tokenized.
    """
    from training.corpus import read_swda, read_zhao_jsonl

    if config.data is not None:
        path = Path(config.data)
        if path.is_dir():  # SwDA conversations, segmented as the training text is
            return read_swda(path, tokenizer=tokenizer), f"SwDA directory {path.name}", config
        if not path.is_file():
            kind = file_kind(path)
            what = "no such file or directory" if kind == "missing" else f"{kind}, not a file"
            raise EvalError(f"--data {path}: {what} (a JSONL file or a SwDA directory)")
        return read_zhao_jsonl(path, tokenizer=tokenizer), f"file {path.name}", config
    prepared = config.prepared_dir()
    zhao = config.zhao_dir()
    if (prepared / "manifest.json").is_file() or config.prepared is not None:
        corpus = prepared_corpus(prepared)
        if corpus.tokenizer == tokenizer:
            used = dataclasses.replace(config, prepared=str(prepared))
            return getattr(corpus, config.split), f"prepared corpus ({config.split})", used
        if not config.zhao:
            zhao = Path(corpus.manifest.get("inputs", {}).get("zhao") or DEFAULT_ZHAO)
        log.info(
            "the prepared corpus %s holds %s tokens, the checkpoint reads %s: tokenizing %s",
            prepared, corpus.tokenizer, tokenizer, zhao,
        )  # fmt: skip
    path = zhao / f"{config.split}.jsonl"
    if path.is_file():
        used = dataclasses.replace(config, zhao=str(zhao))
        return read_zhao_jsonl(path, tokenizer=tokenizer), f"Zhao release ({config.split})", used
    raise EvalError(
        f"no evaluation data: neither a prepared corpus at {prepared} (python -m training.prepare "
        f"--out {DEFAULT_PREPARED}) nor {path}; or pass --data FILE"
    )


@functools.lru_cache(maxsize=2)
def prepared_corpus(directory: Path):
    """A prepared corpus, read (and checksummed) once per evaluation: the evaluated split and
    the frequent-response baseline both come from it."""
    from training.prepare import load_prepared

    return load_prepared(directory)


def most_frequent_training_response(config: EvalConfig, tokenizer: str) -> list[str] | None:
    """The most frequent response of the prepared training split, as ``tokenizer``'s tokens
    (None without a prepared corpus)."""
    prepared = config.prepared_dir()
    if not (prepared / "manifest.json").is_file():
        return None
    corpus = prepared_corpus(prepared)
    counts = Counter(tuple(u.tokens) for d in corpus.train for u in d.utterances)
    tokens = list(counts.most_common(1)[0][0])
    if corpus.tokenizer != tokenizer:
        tokens = tokenize(detokenize(tokens), tokenizer)
    return tokens
