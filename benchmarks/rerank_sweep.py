"""Choose the reranking defaults on the VALID split: every method and weight on the same draws.

Draws ``--max-candidates`` responses per context once (the evaluation's z draws per example),
scores every distinct one by every fit (model/reranking.py), then for each setting chooses
``--samples`` of them (the first K draws only, for each K of ``--candidates``) and scores the
choice as ``python -m eval.switchboard`` does: Zhao BLEU-3 R, its margin over the shuffled-context
row, A-bow R, one-token share, distinct-2, and the share of contexts with all samples distinct.

    python benchmarks/rerank_sweep.py --limit 400          # prints a markdown table

With ``--oracle`` it adds, for each K, the ceiling of any fit of these candidates: the N that score
best on Zhao BLEU-3 against the reference itself (a fit that reads the answer, not a method).

Only the valid split: the defaults chosen from this table are then evaluated on test once.
"""

from __future__ import annotations

import argparse
import itertools
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from eval.baselines import score_baselines  # noqa: E402
from eval.config import EvalConfig  # noqa: E402
from eval.data import load_dialogs  # noqa: E402
from eval.embeddings import load_embeddings  # noqa: E402
from eval.metrics import (  # noqa: E402
    ZHAO_BLEU_WEIGHTS,
    EmbeddingScorer,
    ResponseMetrics,
    zhao_bleu,
)
from eval.responses import planned_batch, reranked_samples, words_of  # noqa: E402
from eval.switchboard import sample_batch  # noqa: E402
from model.checkpoint import load_pretrained  # noqa: E402
from model.decoding import READABLE  # noqa: E402
from model.reranking import Candidate, RerankOptions, choose, fit  # noqa: E402
from service.config import DEFAULT_CHECKPOINT  # noqa: E402
from training.batching import plan_batches  # noqa: E402


def draw_valid(args, model, vocab, encoded: list | None = None):
    """(references, pools, plain_rows) of the first ``args.limit`` valid examples: every
    distinct candidate of ``args.max_candidates`` draws, scored by every fit, and the plain
    samples; from ``args.cache`` when it holds the same draws. ``encoded``, when given,
    receives each batch's context encodings [E, C], in order (recomputed: they are not cached)."""
    config = EvalConfig(
        checkpoint=args.checkpoint,
        split="valid",
        samples=args.samples,
        seed=args.seed,
        rerank="mmi",
        candidates=args.max_candidates,
        max_draws=args.max_candidates,
    )
    if args.readable:
        config = replace(config, **asdict(READABLE))
    config = replace(config, anti_lm_weight=args.anti_lm_weight)
    dialogs, _, _ = load_dialogs(config, model.config.tokenizer)
    turns = [d.turns() for d in dialogs]
    batches = plan_batches([len(t) for t in turns], config.batch_dialogs, 256, args.limit)
    n = args.samples
    drawn_with = [args.checkpoint, args.limit, n, args.max_candidates]
    drawn_with += [args.seed, args.readable, args.anti_lm_weight]
    if args.cache is not None and args.cache.exists():
        with args.cache.open("rb") as f:
            cached_with, (references, pools, plain_rows) = pickle.load(f)
        if cached_with != drawn_with:
            raise SystemExit(f"{args.cache} holds draws made with {cached_with}, not {drawn_with}")
        if encoded is None:
            batches = []
    else:
        references, pools, plain_rows = [], [], []
    drawing = not references
    for spans in tqdm(batches, desc="draw and score" if drawing else "encode", unit="batch"):
        batch = planned_batch(
            turns, spans, vocab, model.config.max_context, model.config.max_utt_len
        )
        if encoded is not None:
            with torch.no_grad():
                encoded.append(model.encode_context(batch))
        if not drawing:
            continue
        position = len(references)
        _, chosen = reranked_samples(model, vocab, batch, config, position)
        pools += [r.pool for r in chosen]
        plain = sample_batch(model, batch, config, position)
        plain_rows += [[words_of(vocab, ids) for ids in row] for row in plain.token_ids.tolist()]
        references += [turns[i][t][1] for i, s, e in spans for t in range(s, e)]
    if args.cache is not None and drawing:
        with args.cache.open("wb") as f:
            pickle.dump((drawn_with, (references, pools, plain_rows)), f)

    return references, pools, plain_rows


def sweep_parser(description: str) -> argparse.ArgumentParser:
    """The options that say which draws are made (and cached) and which settings are tried."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--limit", type=int, default=400, help="first N valid examples")
    parser.add_argument("--samples", type=int, default=10, help="responses chosen per context")
    parser.add_argument("--max-candidates", type=int, default=40)
    parser.add_argument("--candidates", default="10,20,40", help="K values (comma-separated)")
    parser.add_argument("--mmi-weights", default="0.25,0.5,0.75,1.0")
    parser.add_argument("--diversities", default="0,0.3,0.6")
    parser.add_argument(
        "--short-reply-tokens",
        default="0",
        help="values of RerankOptions.short_reply_tokens for mmi (comma-separated)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--readable",
        action="store_true",
        help="decode as the service does (model.decoding.READABLE) instead of the plain protocol",
    )
    parser.add_argument(
        "--anti-lm-weight",
        type=float,
        default=0.0,
        help="draw the candidates (and the plain samples) with MMI-antiLM decoding at this "
        "weight (model.decoding.DecodingOptions.anti_lm_weight; 0: off)",
    )
    parser.add_argument(
        "--oracle",
        action="store_true",
        help="also the ceiling of any fit: rank by each candidate's Zhao BLEU-3 against the "
        "reference (reads the answer: not a method)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        help="keep the drawn and scored candidates in this file and reuse them when it exists "
        "(for the same checkpoint, --limit, --samples, --max-candidates, --seed, --readable "
        "and --anti-lm-weight)",
    )
    return parser


TABLE_HEADER = (
    "| rerank | K | λ | diversity | short alike | Zhao BLEU-3 R | − shuffled | A-bow R | one-token "
    "| distinct-2 | all distinct |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


# A candidate's fit under the options (model.reranking.fit, or a probe's own).
FitOf = Callable[[Candidate, RerankOptions], float]


def setting_row(
    name, options, k, pools, plain_rows, references, vocab, scorer, n, seed, fit_of: FitOf = fit
) -> tuple[str, dict]:
    """One table row: ``options`` (None: the plain samples) choosing ``n`` of the first ``k``
    draws of every pool, scored as the evaluation scores; the fits from ``fit_of(candidate,
    options)``. Returns the row and the baselines' scores."""
    chosen = []
    for pool, row in zip(pools, plain_rows, strict=True):
        if options is None:
            chosen.append(row)
            continue
        # the first K draws, and as the service does, further ones while short of N
        first = [c for c in pool if c.draw < k]
        first += [c for c in pool if c.draw >= k][: max(0, n - len(first))]
        if options.method != "none":
            first = [replace(c, fit=fit_of(c, options)) for c in first]
        chosen.append([words_of(vocab, c.ids) for c in choose(first, n, options)])
    metrics = ResponseMetrics(scorer)
    for samples, reference in zip(chosen, references, strict=True):
        metrics.add(samples, reference)
    m = metrics.result()
    base = score_baselines(references, chosen, None, lambda: ResponseMetrics(scorer), n, seed)
    shuffled = base["shuffled_context"]["zhao_bleu3_r"]
    distinct = sum(len({tuple(s) for s in row}) == n for row in chosen) / len(chosen)
    lam = f"{options.mmi_weight:g}" if options and options.method == "mmi" else "–"
    div = f"{options.diversity:g}" if options and options.method != "none" else "–"
    short = f"≤ {options.short_reply_tokens}" if options and options.short_reply_tokens else "–"
    row = (
        f"| {name} | {k or n} | {lam} | {div} | {short} | {m['zhao_bleu3_r']:.2f} | "
        f"{m['zhao_bleu3_r'] - shuffled:+.2f} | {m['a_bow_r']:.2f} | "
        f"{100 * m['one_token_rate']:.1f}% | {m['inter_distinct2']:.3f} | "
        f"{100 * distinct:.0f}% |"
    )
    return row, base


def oracle_fit(references, pools, vocab) -> FitOf:
    """A fit that reads the answer: each candidate's Zhao BLEU-3 against its context's reference,
    the measure the table reports. The N it ranks first bound what any fit of these candidates
    can reach on that measure (without a diversity weight)."""
    weights = ZHAO_BLEU_WEIGHTS["zhao_bleu3"]
    bleu = {
        id(cand): zhao_bleu(words_of(vocab, cand.ids), reference, weights)
        for reference, pool in zip(references, pools, strict=True)
        for cand in pool
    }
    return lambda cand, options: bleu[id(cand)]


def human_line(base: dict, n: int) -> str:
    human = base["random_responses"]
    return (
        f"random human responses ({n} per context): Zhao BLEU-3 R "
        f"{human['zhao_bleu3_r']:.2f}, one-token {100 * human['one_token_rate']:.1f}%"
    )


def main(argv=None) -> int:
    args = sweep_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    model, vocab = load_pretrained(args.checkpoint)
    model.eval()
    references, pools, plain_rows = draw_valid(args, model, vocab)

    scorer = EmbeddingScorer(load_embeddings(None))
    n = args.samples
    ks = [int(k) for k in args.candidates.split(",")]
    settings: list[tuple[str, RerankOptions | None, int, FitOf]] = [
        ("plain (first draws, duplicates kept)", None, 0, fit),
        ("none (distinct)", RerankOptions(), n, fit),
    ]
    for k in ks:
        settings.append(("likelihood", RerankOptions("likelihood", k), k, fit))
        settings.append(("posterior", RerankOptions("posterior", k), k, fit))
        for div, short in itertools.product(
            map(float, args.diversities.split(",")), map(int, args.short_reply_tokens.split(","))
        ):
            if div:  # (diversity 0 is the row above; alike only counts with a diversity weight)
                options = RerankOptions("likelihood", k, diversity=div, short_reply_tokens=short)
                settings.append(("likelihood", options, k, fit))
        for lam, div, short in itertools.product(
            map(float, args.mmi_weights.split(",")),
            map(float, args.diversities.split(",")),
            map(int, args.short_reply_tokens.split(",")),
        ):
            if short and not div:
                continue  # alike only counts with a diversity weight
            options = RerankOptions(
                "mmi", k, mmi_weight=lam, diversity=div, short_reply_tokens=short
            )
            settings.append(("mmi", options, k, fit))
    if args.oracle:
        ceiling = oracle_fit(references, pools, vocab)
        for k in ks:  # (method "likelihood" only so that choose() ranks: the fit is the oracle's)
            oracle = RerankOptions("likelihood", k)
            settings.append(("oracle: Zhao BLEU-3 with the reference", oracle, k, ceiling))
    print(
        f"valid, first {len(references)} examples, {n} responses per context, seed {args.seed}, "
        f"{'READABLE' if args.readable else 'plain'} greedy decoding, anti-LM weight "
        f"{args.anti_lm_weight:g}; {args.checkpoint}\n"
    )
    print(TABLE_HEADER)
    for name, options, k, fit_of in settings:
        row, base = setting_row(
            name, options, k, pools, plain_rows, references, vocab, scorer, n, args.seed, fit_of
        )
        print(row, flush=True)
    print(f"\n{human_line(base, n)}; {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
