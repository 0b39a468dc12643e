"""Would MMI choose better with log p(r) taken over real contexts? (valid split)

The service's MMI fit (model/reranking.py) is log p(r|c) - λ log p(r), with log p(r) the model's
ELBO of the response under an empty context (the begin-of-dialog marker alone). An empty context
is where a dialog starts, so "uh-huh" is unlikely there and a backchannel keeps a high PMI. Here
p(r) is instead estimated as the model's marginal over contexts, the mean of p(r|c') over
``--background`` other contexts c' of the same draws (chosen at random, never c itself):
log p(r) ≈ log mean exp ELBO(r|c'). The candidates, options and scores are
``benchmarks/rerank_sweep.py``'s; prints its table rows, the service's MMI beside this one.

    python benchmarks/marginal_mmi.py --limit 1000 --samples 5 --readable --max-candidates 10 \\
        --candidates 10 --cache draws.pkl   # the sweep's draws and options

A probe, not a service feature: on the valid split it did not choose better than the
empty-context MMI (docs/decoding.md), and the service would need a bank of contexts with each
checkpoint.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks.rerank_sweep import (  # noqa: E402
    TABLE_HEADER,
    draw_valid,
    human_line,
    setting_row,
    sweep_parser,
)
from eval.embeddings import load_embeddings  # noqa: E402
from eval.metrics import EmbeddingScorer  # noqa: E402
from model.checkpoint import load_pretrained  # noqa: E402
from model.reranking import RerankOptions, candidate_words, fit  # noqa: E402


def other_contexts(count: int, background: int, seed: int) -> torch.Tensor:
    """[count, background] indices: for each context i, ``background`` others, none i."""
    generator = torch.Generator().manual_seed(seed)
    picks = torch.stack([torch.randperm(count - 1, generator=generator)[:background]
                         for _ in range(count)])  # fmt: skip
    return picks + (picks >= torch.arange(count).unsqueeze(1)).long()  # skip over i itself


@torch.no_grad()
def marginal_log_likelihoods(
    model, pools, contexts: torch.Tensor, background: int, seed: int, batch_size: int = 512
) -> dict[int, float]:
    """Every candidate's log mean exp ELBO over ``background`` other contexts, by ``id``."""
    others = other_contexts(contexts.shape[0], background, seed)
    flat = [(i, cand) for i, pool in enumerate(pools) for cand in pool]
    marginal = {}
    for start in tqdm(range(0, len(flat), batch_size), desc="marginal", unit="batch"):
        chunk = flat[start : start + batch_size]
        words, lengths = candidate_words([cand for _, cand in chunk], contexts.device)
        rows = others[[i for i, _ in chunk]].reshape(-1)
        nll, kl, _ = model.response_elbo(
            contexts[rows],
            words.repeat_interleave(background, 0),
            lengths.repeat_interleave(background, 0),
        )
        elbo = -(nll + kl).view(len(chunk), background)
        log_mean = torch.logsumexp(elbo, 1) - math.log(background)
        for (_, cand), value in zip(chunk, log_mean.tolist(), strict=True):
            marginal[id(cand)] = value
    return marginal


def main(argv=None) -> int:
    parser = sweep_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--background", type=int, default=8, help="other contexts per context")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, vocab = load_pretrained(args.checkpoint)
    model.eval()
    encoded: list[torch.Tensor] = []
    references, pools, plain_rows = draw_valid(args, model, vocab, encoded)
    marginal = marginal_log_likelihoods(model, pools, torch.cat(encoded), args.background, 1)

    def marginal_mmi(cand, options):  # log p(r|c) - λ log mean_c' p(r|c'), both as ELBOs
        return cand.elbo - options.mmi_weight * marginal[id(cand)]

    scorer = EmbeddingScorer(load_embeddings(None))
    n = args.samples
    print(TABLE_HEADER)
    for k, lam, div, short in itertools.product(
        map(int, args.candidates.split(",")),
        map(float, args.mmi_weights.split(",")),
        map(float, args.diversities.split(",")),
        map(int, args.short_reply_tokens.split(",")),
    ):
        options = RerankOptions("mmi", k, mmi_weight=lam, diversity=div, short_reply_tokens=short)
        for name, fit_of in (("mmi, empty context", fit), ("mmi, other contexts", marginal_mmi)):
            row, base = setting_row(
                name, options, k, pools, plain_rows, references, vocab, scorer, n, args.seed,
                fit_of,
            )  # fmt: skip
            print(row, flush=True)
    print(f"\n{human_line(base, n)}; {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
