"""Would a trained response selector choose better than the model's own fits? (valid split)

A dual encoder in the manner of response selection (Lowe et al., SIGDIAL 2015; in-batch
negatives as in Henderson et al., ConveRT, 2020) on the checkpoint's own frozen encoders: the
context encoding c and the response's utterance encoding x each go through a small MLP, and
score(c, x) is the dot product. It is trained on every (context, response) pair of the prepared
training split, each batch's other responses as the negatives, and used as the fit of
:func:`model.reranking.choose` for the candidates that ``benchmarks/rerank_sweep.py`` draws
(alone, and added to the MMI fit). Prints recall@1 of 10 on valid (one true response among nine
random ones) and the sweep's table rows.

    python benchmarks/response_selector.py --limit 1000 --samples 5 --readable \\
        --max-candidates 10 --candidates 10 --cache draws.pkl   # the sweep's draws and options

A probe, not a service feature: on the valid split it did not choose better than MMI
(docs/decoding.md), so nothing ships with it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
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
from model.reranking import RerankOptions, fit  # noqa: E402
from model.vocab import Vocabulary  # noqa: E402
from training.batching import eval_batches  # noqa: E402
from training.prepare import load_prepared  # noqa: E402


class DualEncoder(nn.Module):
    """score(c, x) = f(c) · g(x), f and g one-hidden-layer MLPs."""

    def __init__(self, context_dim: int, response_dim: int, hidden: int = 512, out: int = 256):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(context_dim, hidden), nn.Tanh(), nn.Linear(hidden, out))
        self.g = nn.Sequential(nn.Linear(response_dim, hidden), nn.Tanh(), nn.Linear(hidden, out))


@torch.no_grad()
def encoded_pairs(model, vocab, dialogs) -> tuple[torch.Tensor, torch.Tensor]:
    """(c [E, C], x [E, X]) of every example of ``dialogs``, by the model's frozen encoders."""
    cs, xs = [], []
    cfg = model.config
    for batch in tqdm(
        eval_batches(dialogs, vocab, 4, cfg.max_context, cfg.max_utt_len), desc="encode"
    ):
        utt_vecs = model.encode_utterances(batch)
        cs.append(model.encode_context(batch, utt_vecs))
        xs.append(utt_vecs[batch.response_index])
    return torch.cat(cs), torch.cat(xs)


def recall_at_1(head: DualEncoder, c, x, negatives: int = 9, seed: int = 1) -> float:
    """Share of examples whose response outscores ``negatives`` random other responses."""
    with torch.no_grad():
        u, v = head.f(c), head.g(x)
        others = torch.randint(
            0, len(u), (len(u), negatives), generator=torch.Generator().manual_seed(seed)
        )
        true = (u * v).sum(1, keepdim=True)
        false = torch.einsum("md,mkd->mk", u, v[others])
        return (true > false).all(1).float().mean().item()


def train_head(train, valid, epochs: int, batch_size: int = 256, seed: int = 0) -> DualEncoder:
    torch.manual_seed(seed)
    (c, x), (vc, vx) = train, valid
    head = DualEncoder(c.shape[1], x.shape[1])
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    for epoch in range(epochs):
        order = torch.randperm(len(c))
        total = 0.0
        steps = len(c) // batch_size
        for i in range(steps):
            rows = order[i * batch_size : (i + 1) * batch_size]
            scores = head.f(c[rows]) @ head.g(x[rows]).T  # each row's other responses: negatives
            loss = F.cross_entropy(scores, torch.arange(len(rows)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        print(
            f"epoch {epoch + 1}: train loss {total / steps:.3f}, valid recall@1 of 10 "
            f"{recall_at_1(head, vc, vx):.3f}",
            flush=True,
        )
    return head


@torch.no_grad()
def selector_scores(model, head: DualEncoder, pools, contexts: torch.Tensor) -> dict[int, float]:
    """Every candidate's score for its own context, by ``id`` of the candidate."""
    scores = {}
    u = head.f(contexts)
    for i, pool in enumerate(tqdm(pools, desc="select")):
        ids = [[Vocabulary.bos_id, *c.ids, Vocabulary.eos_id] for c in pool]
        width = max(len(t) for t in ids)
        tokens = torch.tensor([t + [0] * (width - len(t)) for t in ids])
        x = model.utt_encoder(tokens, torch.tensor([len(t) for t in ids]))
        for cand, score in zip(pool, (head.g(x) @ u[i]).tolist(), strict=True):
            scores[id(cand)] = score
    return scores


def main(argv=None) -> int:
    parser = sweep_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--prepared", default="runs/data/switchboard")
    parser.add_argument("--weights", default="1,3,10", help="selector weights added to MMI's fit")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, vocab = load_pretrained(args.checkpoint)
    model.eval()
    corpus = load_prepared(args.prepared)
    train = encoded_pairs(model, vocab, [d.turns() for d in corpus.train])
    valid = encoded_pairs(model, vocab, [d.turns() for d in corpus.valid])
    head = train_head(train, valid, args.epochs)
    head.eval()

    encoded: list[torch.Tensor] = []
    references, pools, plain_rows = draw_valid(args, model, vocab, encoded)
    sel = selector_scores(model, head, pools, torch.cat(encoded))

    def selector(cand, options):
        return sel[id(cand)]

    def weighted(weight):
        return lambda cand, options: fit(cand, options) + weight * sel[id(cand)]

    scorer = EmbeddingScorer(load_embeddings(None))
    n = args.samples
    settings = []
    for k in (int(k) for k in args.candidates.split(",")):
        for div, short in ((0.0, 0), (0.7, 0), (0.7, 1)):
            mmi = RerankOptions("mmi", k, mmi_weight=1.0, diversity=div, short_reply_tokens=short)
            settings.append(("mmi", mmi, k, fit))
            # (method "likelihood" only so that choose() ranks: the fit is the selector's)
            alone = replace(mmi, method="likelihood")
            settings.append(("selector", alone, k, selector))
            for w in map(float, args.weights.split(",")):
                settings.append((f"mmi + {w:g} × selector", mmi, k, weighted(w)))
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
