"""Evaluate a checkpoint on Switchboard the way Zhu et al. (2020, Table 4) / Zhao et al. (2017) do.

    python -m eval.switchboard --checkpoint runs/bn-cvae/best --out runs/bn-cvae/eval-test.json
    python -m eval.switchboard --checkpoint DIR --split valid --limit 500
    python -m eval.switchboard --checkpoint DIR --data my_dialogs.jsonl --glove glove.txt

Data: ``--split`` of the prepared corpus (``--prepared``, default ``runs/data/switchboard`` from
``python -m training.prepare --out runs/data/switchboard``); without a prepared corpus, Zhao's
``<split>.jsonl`` from ``../shared/data/switchboard/zhao`` (the same tokens). ``--data FILE``
evaluates any dialogs in Zhao's JSONL layout, normalized like the prepared splits.

What is measured and how (the examples and their contexts, the likelihood pass: ppl, elbo_ppl,
kl; the sampled responses and their BLEU, bag-of-words and distinct-n scores; the latent
diagnostics; the baseline rows; the seeds) is written once, in eval/protocol.py's PROTOCOL,
which every result JSON carries under "protocol"; docs/evaluation.md shows it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eval.baselines import score_baselines
from eval.config import EvalConfig, EvalError, default_out, recorded, repo_relative
from eval.data import load_dialogs, most_frequent_training_response, prepared_corpus
from eval.embeddings import DEFAULT_EMBEDDINGS, load_embeddings
from eval.latent import active_units, bn_kl_lower_bound, mutual_information
from eval.metrics import BLEU_SETTINGS, EmbeddingScorer, ResponseMetrics
from eval.paper import (
    CONTEXT_UTTERANCES,
    UTTERANCE_WORDS,
    PaperBowScorer,
    PaperResponseMetrics,
    is_scored,
    reference_tokens,
)
from eval.protocol import (
    METRIC_KEYS,
    PAPER_PROTOCOL,
    PROTOCOL,
    differences_markdown,
    paper_differences_markdown,
)
from eval.report import markdown_table
from eval.responses import context_dependence, planned_batch, reranked_samples
from eval.samples import SamplesFile, example_noise
from eval.significance import (
    BOOTSTRAP_RESAMPLES,
    baseline_column,
    contexts_path,
    paired_bootstrap,
    reference_metric,
    write_contexts,
)
from model.checkpoint import load_config, load_pretrained
from model.cli import parse_args
from model.cvae import LikelihoodTotals, decode_dtype, gaussian_kl, resolve_device
from model.files import atomic_write_text, os_error_line, repo_relative_paths
from model.vocab import SPECIALS
from training.batching import Segment, plan_batches

log = logging.getLogger("eval.switchboard")


@dataclass
class Gathered:
    """What the pass over the examples collects, in the evaluation order."""

    totals: LikelihoodTotals = field(default_factory=LikelihoodTotals)
    mus: list[torch.Tensor] = field(default_factory=list)  # posterior means, per batch
    logvars: list[torch.Tensor] = field(default_factory=list)
    references: list[list[str]] = field(default_factory=list)
    samples: list[list[list[str]]] = field(default_factory=list)
    examples: int = 0
    # Per example ("dialog:turn"), its likelihood terms and its sampled responses' scores: the
    # paired bootstrap over contexts of eval/significance.py reads them (X.contexts.json).
    # (a metric a context has no score for is None there)
    context_keys: list[str] = field(default_factory=list)
    per_context: dict[str, list[float | None]] = field(default_factory=dict)
    likelihood: dict[str, list[float]] = field(default_factory=dict)
    # with --rerank: the chosen samples, their scores per context, and per example (draws,
    # distinct responses found)
    reranked: list[list[list[str]]] = field(default_factory=list)
    reranked_scores: list[dict] = field(default_factory=list)
    draws: list[tuple[int, int]] = field(default_factory=list)

    def add_context(self, key: str, scores: dict) -> None:
        n = len(self.context_keys)
        self.context_keys.append(key)
        for name, value in scores.items():
            self.per_context.setdefault(name, [None] * n).append(value)
        for column in self.per_context.values():
            if len(column) == n:
                column.append(None)


# ------------------------------------------------------------------------------- evaluation
def evaluate(config: EvalConfig) -> dict:
    """Run the evaluation; returns the result dict written by ``--out``."""
    config.validate()
    assert config.samples is not None, "EvalConfig.__post_init__ fills in the protocol's"
    prepared_corpus.cache_clear()  # files may have changed since an earlier evaluation
    start_time = time.perf_counter()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    try:
        device = resolve_device(config.device)
    except ValueError as e:
        raise EvalError(f"--device: {e}") from None
    model, vocab = load_pretrained(config.checkpoint, device=device, verify=config.verify)
    model.set_decode_dtype(decode_dtype(config.decode_dtype, device))
    _, metadata = load_config(config.checkpoint)
    mcfg = model.config
    dialogs, source, resolved = load_dialogs(config, mcfg.tokenizer)
    resolved = dataclasses.replace(resolved, glove=config.glove or DEFAULT_EMBEDDINGS)
    turns = [d.turns() for d in dialogs]
    if not any(turns):
        raise EvalError(f"no utterances to evaluate in {source}")
    paper = config.protocol == "paper"
    batches = example_batches(turns, config, paper)
    # what the protocol scores without --limit
    unlimited = example_batches(turns, dataclasses.replace(config, limit=None), paper)
    available = sum(e - s for b in unlimited for _, s, e in b)
    total = sum(e - s for b in batches for _, s, e in b)
    if total == 0:
        raise EvalError(f"no response in {source} is scored by the {config.protocol} protocol")
    log.info(
        "%s: %d dialogs, %d examples; checkpoint %s (%s, latent %d)",
        source, len(dialogs), total, config.checkpoint, mcfg.variant, mcfg.latent_dim,
    )  # fmt: skip

    kv = load_embeddings(config.glove)
    scorer = EmbeddingScorer(kv, split_oov=config.split_oov)
    new_metrics: Callable[[], ResponseMetrics | PaperResponseMetrics]
    if paper:
        paper_scorer = PaperBowScorer(kv)
        new_metrics = lambda: PaperResponseMetrics(paper_scorer)  # noqa: E731
    else:
        new_metrics = lambda: ResponseMetrics(scorer)  # noqa: E731
    response_metrics = new_metrics()
    reranked_metrics = new_metrics() if config.rerank != "none" else None
    samples_path = config.samples_path()
    if samples_path is not None:
        resolved = dataclasses.replace(resolved, samples_out=str(samples_path))
    with SamplesFile(samples_path, config.samples_context, mcfg.max_context) as samples_file:
        gathered = run_examples(
            model,
            vocab,
            config,
            dialogs,
            turns,
            batches,
            total,
            response_metrics,
            samples_file,
            reranked_metrics,
        )

    metrics = model_metrics(model, gathered, response_metrics.result(), config.seed)
    frequent = most_frequent_training_response(config, mcfg.tokenizer)
    per_context: dict[str, dict[str, list]] = {"model": gathered.per_context}
    baselines = score_baselines(
        gathered.references,
        gathered.samples,
        frequent,
        new_metrics,
        config.samples,
        config.seed,
        per_context,
    )
    responses = {
        "all_distinct": distinct_share(gathered.samples, config.samples),
        "margins": margins(per_context, config.seed),
        "context_dependence": None,
    }
    if config.probe_contexts:
        log.info("context-dependence probe: %d contexts", config.probe_contexts)
        responses["context_dependence"] = context_dependence(
            model, vocab, turns, config, config.probe_contexts, config.probe_noises
        )
    if reranked_metrics is not None:
        responses["reranked"] = reranked_record(
            model, vocab, turns, config, gathered, reranked_metrics, frequent, new_metrics,
            per_context,
        )  # fmt: skip
    record = protocol_record(
        config, model, metadata, source, frequent, kv, scorer, gathered.references
    )
    result = {
        "checkpoint": repo_relative(config.checkpoint),
        "split": repo_relative(config.data) if config.data is not None else config.split,
        "examples": gathered.examples,
        "examples_available": available,
        "samples_per_context": config.samples,
        "seed": config.seed,
        "runtime_s": round(time.perf_counter() - start_time, 3),
        # A project result keeps its rules under "protocol" (as results always did); a paper
        # result says "paper" there and keeps them under "protocol_rules".
        "protocol": "paper" if paper else record,
        **({"protocol_rules": record} if paper else {}),
        **(
            {"bow_unscored_contexts": response_metrics.bow_unscored}
            if isinstance(response_metrics, PaperResponseMetrics)
            else {}
        ),
        "metrics": metrics,
        "baselines": baselines,
        "responses": responses,
        "config": recorded(resolved),
    }
    if config.out:
        out = Path(config.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
        log.info("wrote %s", out)
        # The random test responses' scores too: they do not depend on the model (a seeded draw
        # of references), and with them a margin over that row gets a bootstrap CI.
        random_responses = {
            baseline_column("random_responses", k): v
            for k, v in per_context.get("random_responses", {}).items()
            if reference_metric(k)
        }
        columns: dict[str, Sequence[float | None]] = {
            **gathered.likelihood,
            **gathered.per_context,
            **random_responses,
        }
        write_contexts(contexts_path(out), gathered.context_keys, columns)
        log.info("wrote %s", contexts_path(out))
    if samples_path is not None:
        log.info("wrote %s", samples_path)
    return result


def example_batches(turns: list, config: EvalConfig, paper: bool) -> list:
    """The batches of (dialog, first, end) response spans to evaluate: every response
    (project protocol) or the ones the paper's test routine scores (:func:`eval.paper.is_scored`:
    responses 1 .. n-2 of a dialog of n utterances)."""
    if not paper:
        return plan_batches(
            [len(t) for t in turns], config.batch_dialogs, config.max_batch_examples, config.limit
        )
    scored = [sum(is_scored(t, len(ts)) for t in range(len(ts))) for ts in turns]
    batches = plan_batches(scored, config.batch_dialogs, config.max_batch_examples, config.limit)
    return [[Segment(i, s + 1, e + 1) for i, s, e in b] for b in batches]


def run_examples(
    model,
    vocab,
    config,
    dialogs,
    turns,
    batches,
    total,
    response_metrics,
    samples_file,
    reranked_metrics=None,
) -> Gathered:
    """One pass over ``batches`` (``total`` examples): for each batch the likelihood pass
    (z ~ q(z|c,x) from torch's global RNG), then the sampled responses, scored into
    ``response_metrics`` and written to ``samples_file``; with ``reranked_metrics``, also the
    reranked responses (``--rerank``), scored into it."""
    gathered = Gathered()
    paper = config.protocol == "paper"
    # The paper's loader: a window of 9 utterances before the response, each cut to 38 words.
    max_context = CONTEXT_UTTERANCES if paper else model.config.max_context
    max_utt_len = UTTERANCE_WORDS if paper else model.config.max_utt_len
    device = next(model.parameters()).device
    with tqdm(total=total, unit="ex", desc="eval", disable=not config.progress) as bar:
        for spans in batches:
            batch = planned_batch(turns, spans, vocab, max_context, max_utt_len).to(device)
            likelihood_pass(model, batch, gathered)
            sampled = sample_batch(model, batch, config, gathered.examples)
            reranked, found = [], []
            if reranked_metrics is not None:
                reranked, found = reranked_samples(model, vocab, batch, config, gathered.examples)
                gathered.draws += [(r.drawn, r.distinct) for r in found]
            k = 0
            for i, s, end in spans:
                for t in range(s, end):
                    # vocab.decode: the words up to </s>; the paper's samples keep <unk>.
                    samples = [
                        [w for w in vocab.decode(ids.tolist()) if paper or w not in SPECIALS]
                        for ids in sampled.token_ids[k]
                    ]
                    _, reference = turns[i][t]
                    if paper:
                        reference = reference_tokens(reference, vocab.index)
                    gathered.references.append(reference)
                    gathered.samples.append(samples)
                    scores = response_metrics.add(samples, reference)
                    gathered.add_context(f"{dialogs[i].id}:{t}", scores)
                    if reranked_metrics is not None:
                        chosen = reranked[k]
                        gathered.reranked.append(chosen)
                        gathered.reranked_scores.append(reranked_metrics.add(chosen, reference))
                    position = gathered.examples + k
                    samples_file.write(dialogs[i].id, t, position, turns[i], samples, scores)
                    k += 1
            assert k == batch.num_examples, "dialog_batch returned an unexpected number of examples"
            gathered.examples += k
            bar.update(k)
    return gathered


def distinct_share(samples: list[list[list[str]]], n: int) -> float:
    """The share of contexts whose ``n`` samples are pairwise distinct."""
    return sum(len({tuple(s) for s in row}) == n for row in samples) / len(samples)


# Margins reported with a paired bootstrap CI: (metric, against which baseline row).
MARGINS = (("zhao_bleu3_r", "shuffled_context"), ("zhao_bleu3_r", "random_responses"))


def margins(per_context: dict, seed: int, row: str = "model") -> dict:
    """The margins of :data:`MARGINS` for ``row`` (per-context columns in ``per_context``), each
    with its 95% paired bootstrap CI over the contexts (eval/significance.py)."""
    out = {}
    for metric, other in MARGINS:
        if metric not in per_context.get(row, {}) or metric not in per_context.get(other, {}):
            continue
        a = {metric: np.asarray(per_context[row][metric], dtype=np.float64)}
        b = {metric: np.asarray(per_context[other][metric], dtype=np.float64)}
        mean, low, high = paired_bootstrap(metric, [a], [b], seed=seed)
        out[f"{metric} vs {other}"] = {
            "mean": mean,
            "ci95": [low, high],
            "resamples": BOOTSTRAP_RESAMPLES,
        }
    return out


def reranked_record(
    model, vocab, turns, config, gathered, reranked_metrics, frequent, new_metrics, per_context
) -> dict:
    """The reranked row: its options, metrics, shuffled-context baseline, margins with CIs,
    the draws it took and its context-dependence probe."""
    rows: dict[str, dict[str, list]] = {}
    baselines = score_baselines(
        gathered.references,
        gathered.reranked,
        frequent,
        new_metrics,
        config.samples,
        config.seed,
        rows,
    )
    scores = gathered.reranked_scores
    rows["reranked"] = {k: [r.get(k) for r in scores] for k in scores[0]}
    rows["random_responses"] = per_context["random_responses"]
    options = config.rerank_options()
    metrics = reranked_metrics.result()
    record = {
        "options": dataclasses.asdict(options),
        "candidates": options.first_draws(config.samples),
        "budget": options.budget(config.samples),
        "metrics": {k: metrics.get(k) for k in METRIC_KEYS},
        "shuffled_context": {k: baselines["shuffled_context"].get(k) for k in METRIC_KEYS},
        "margins": margins(rows, config.seed, row="reranked"),
        "mean_draws": sum(d for d, _ in gathered.draws) / len(gathered.draws),
        "all_distinct": sum(f >= config.samples for _, f in gathered.draws) / len(gathered.draws),
        "context_dependence": None,
    }
    if config.probe_contexts:
        record["context_dependence"] = context_dependence(
            model, vocab, turns, config, config.probe_contexts, config.probe_noises, options
        )
    return record


def likelihood_pass(model, batch, gathered: Gathered) -> None:
    """The model's forward pass in eval mode (KL weight 1) on ``batch``: its NLL/KL totals and
    the posterior's means and log-variances go into ``gathered``."""
    with torch.inference_mode():
        out = model(batch, kl_weight=1.0)
        extras = getattr(out, "extras", None) or {}
        if "mu_q" in extras and "logvar_q" in extras:
            mu_q, logvar_q = extras["mu_q"], extras["logvar_q"]
        else:  # not part of the API contract: recompute the posterior
            mu_q, logvar_q = model.posterior(batch)
    gathered.totals.add(out)
    for name in ("nll", "kl", "tokens"):
        gathered.likelihood.setdefault(name, []).extend(getattr(out, name).double().tolist())
    gathered.mus.append(mu_q.detach().double().cpu())
    gathered.logvars.append(logvar_q.detach().double().cpu())


def sample_batch(model, batch, config: EvalConfig, position: int):
    """``config.samples`` responses per example of ``batch`` (whose first example is example
    ``position``), each with its own z ~ p(z|c) from :func:`eval.samples.example_noise`."""
    assert config.samples is not None, "EvalConfig.__post_init__ fills in the protocol's"
    device = next(model.parameters()).device
    noise = torch.stack(
        [
            example_noise(config.seed, position + k, config.samples, model.config.latent_dim)
            for k in range(batch.num_examples)
        ]
    ).to(device)
    return model.sample_responses(
        batch,
        config.samples,
        max_length=config.max_length,
        decoding=config.decoding,
        temperature=config.temperature,
        generator=torch.Generator(device).manual_seed(config.seed + position),
        noise=noise,
        options=config.decoding_options(),
    )


def model_metrics(model, gathered: Gathered, text_metrics: dict, seed: int) -> dict:
    """The result's ``metrics`` (keys :data:`eval.protocol.METRIC_KEYS`): the likelihood
    totals, the sampled responses' ``text_metrics`` and the latent diagnostics."""
    mcfg = model.config
    mu, logvar = torch.cat(gathered.mus), torch.cat(gathered.logvars)
    metrics: dict = {
        "ppl": gathered.totals.ppl,
        "elbo_ppl": gathered.totals.elbo_ppl,
        "kl": gathered.totals.kl / gathered.examples,
        **text_metrics,
        "active_units": active_units(mu),
        "mutual_info": mutual_information(
            mu, logvar, generator=torch.Generator().manual_seed(seed)
        ),
        "kl_prior_standard": None,
        "kl_lower_bound": None,
    }
    bn = getattr(model.recognition, "mu_bn", None)
    if mcfg.use_bn and bn is not None:
        metrics["kl_prior_standard"] = float(gaussian_kl(mu, logvar).mean())
        metrics["kl_lower_bound"] = bn_kl_lower_bound(model.recognition.bn_gamma(), bn.bias)
    return {k: metrics.get(k) for k in METRIC_KEYS}


def protocol_record(
    config: EvalConfig, model, metadata, source, frequent, kv, scorer, references
) -> dict:
    """The result's ``protocol``: :data:`eval.protocol.PROTOCOL` and what this run used (data,
    decoding, word vectors and their coverage, BLEU settings, the model)."""
    mcfg = model.config
    paper = config.protocol == "paper"
    protocol: dict[str, object] = dict(PAPER_PROTOCOL if paper else PROTOCOL)
    protocol["data"] = source
    protocol["paper_differences"] = (
        paper_differences_markdown() if paper else differences_markdown()
    )
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
        "bn_gamma_mode": mcfg.bn_gamma_mode if mcfg.use_bn else None,
        "posterior_var_dropout": mcfg.posterior_var_dropout,
        "checkpoint_metadata": repo_relative_paths(metadata),
    }
    return protocol


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
    except OSError as e:  # writing the results: a full disk, no permission
        log.error("%s", os_error_line(e))
        return 1
    print(markdown_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
