"""N responses to a context that differ from each other, chosen for how well they fit it.

:func:`distinct_responses` draws latent samples z ~ p(z|c) until each context has N responses
that differ after detokenization, within a budget of draws, all contexts of a batch at once
(further draws only for the contexts still short of N, in one batched call per round). With a
reranking method it first oversamples K candidates, scores every distinct one for its fit to the
context and picks N of them by fit plus diversity (maximal marginal relevance).

The fit scores (:data:`RERANK_METHODS`; higher fits better):

* ``likelihood``: the decoder's log p(x|c,z) of the response given the z it was decoded from,
  per token (``</s>`` included): the length-normalised likelihood. Free: decoding computes it.
* ``posterior``: -KL(q(z|c,x) || p(z|c)), how much the recognition network, reading the
  response, agrees with the prior about z. A response the prior finds typical of this context
  scores high.
* ``mmi``: Li et al. (NAACL 2016)'s maximum mutual information, log p(x|c) - λ log p(x), with
  log p(x) the same model's given an empty context (the begin-of-dialog marker alone), both
  estimated by the ELBO at the posterior mean (:meth:`DialogCVAE.response_elbo`). λ = 0 ranks
  by the (ELBO) likelihood; λ = 1 by pointwise mutual information. Generic replies ("yeah",
  "uh-huh") are about as likely without the context as with it and fall behind.

Maximal marginal relevance (Carbonell & Goldstein, SIGIR 1998): pick, one at a time, the
candidate with the largest ``(1 - diversity) * fit - diversity * max similarity to the picked``,
with the fit min-max scaled to [0, 1] within the context and the similarity the Jaccard overlap
of the two responses' word sets. With ``short_reply_tokens`` S > 0, two replies of at most S
tokens count as alike (similarity 1) whatever their words: "yeah", "oh" and "okay" are one kind
of reply, an acknowledgement, and N responses that are N of them differ in words but not in
what they say. (Tokens, not words as shown: counted as one word, "uh-huh", three tokens, would
be held back too, which lost on the valid split; docs/decoding.md.)
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, fields
from typing import Literal, get_args

import torch

from model.batch import DialogBatch
from model.cvae import DialogCVAE, SampledResponses
from model.decoding import PLAIN, DecodingOptions
from model.vocab import Vocabulary

RerankMethod = Literal["none", "likelihood", "posterior", "mmi"]
RERANK_METHODS: tuple[RerankMethod, ...] = get_args(RerankMethod)
# Candidates per asked-for response when none are given: 2N (chosen on the valid split).
CANDIDATES_PER_RESPONSE = 2
# Draws per asked-for response when no budget is given: 4N, at least the candidates.
DRAWS_PER_RESPONSE = 4


@dataclass(frozen=True)
class RerankOptions:
    method: RerankMethod = "none"  # (__post_init__ checks it: a file or a flag gives any str)
    # K: responses drawn per context at first (0: CANDIDATES_PER_RESPONSE x N; none draws N)
    candidates: int = 0
    # draws per context at most, first ones included (0: DRAWS_PER_RESPONSE x N, at least K)
    max_draws: int = 0
    mmi_weight: float = 0.5  # λ of mmi
    diversity: float = 0.0  # weight of the similarity penalty of maximal marginal relevance
    # replies of at most this many tokens count as alike in that penalty (0: word overlap alone)
    short_reply_tokens: int = 0

    def __post_init__(self):
        if self.method not in RERANK_METHODS:
            raise ValueError(f"rerank must be one of {RERANK_METHODS}, got {self.method!r}")
        if self.candidates < 0 or self.max_draws < 0:
            raise ValueError("candidates and max_draws must be >= 0 (0: the default)")
        if self.short_reply_tokens < 0:
            raise ValueError("short_reply_tokens must be >= 0 (0: word overlap alone)")
        if not 0.0 <= self.diversity <= 1.0:
            raise ValueError("diversity must be in [0, 1]")
        if not 0.0 <= self.mmi_weight <= 1.0:
            raise ValueError("mmi_weight must be in [0, 1]")

    @classmethod
    def of(cls, settings) -> RerankOptions:
        """The options held by ``settings`` (a request, a CLI config): the method as
        ``rerank``, the others under their own names (as ``DecodingOptions.of``)."""
        return cls(
            **{
                f.name: getattr(settings, "rerank" if f.name == "method" else f.name)
                for f in fields(cls)
            }
        )

    def first_draws(self, n: int) -> int:
        """Draws per context at first: N without reranking (nothing to choose among)."""
        if self.method == "none":
            return n
        return max(n, self.candidates or CANDIDATES_PER_RESPONSE * n)

    def budget(self, n: int) -> int:
        return max(self.max_draws or DRAWS_PER_RESPONSE * n, self.first_draws(n))


NO_RERANKING = RerankOptions()
# The service's default, chosen on the valid split (docs/decoding.md).
RANKED = RerankOptions(method="mmi", mmi_weight=1.0, diversity=0.7, short_reply_tokens=1)


@dataclass
class Candidate:
    ids: list[int]  # the words' vocabulary ids (no </s>)
    length: int
    log_prob: float  # of the words and </s> given the z it was decoded from
    finished: bool  # ended with </s>
    draw: int  # which draw of its context it was (0-based)
    fit: float | None = None  # the reranking method's score, if any
    # what the fit is made of (:func:`score`), when a method needs it:
    elbo: float | None = None  # ELBO of log p(x|c)
    kl: float | None = None  # KL(q(z|c,x) || p(z|c))
    elbo_empty: float | None = None  # ELBO of log p(x) (an empty context)


@dataclass
class ContextResponses:
    responses: list[Candidate]  # N distinct ones, best first (fewer if the budget ran out)
    drawn: int  # latent samples drawn for this context
    distinct: int  # distinct responses among them
    pool: list[Candidate]  # all of them, in the order first drawn


# Noise for draws [start, start + count) of the contexts ``rows``: [len(rows), count, d].
NoiseSource = Callable[[Sequence[int], int, int], torch.Tensor]


def distinct_responses(
    model: DialogCVAE,
    batch: DialogBatch,
    num_responses: int,
    key: Callable[[list[int]], Hashable],
    rerank: RerankOptions = NO_RERANKING,
    *,
    max_length: int = 40,
    decoding: str = "greedy",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    noise: NoiseSource | None = None,
    options: DecodingOptions = PLAIN,
    stop: Callable[[], bool] | None = None,
) -> list[ContextResponses]:
    """``num_responses`` pairwise distinct responses per context of ``batch`` (equal when
    ``key`` of their word ids is: e.g. the detokenized text), chosen by ``rerank``.

    ``noise`` fixes the standard-normal draws of z (the evaluation's, per example and draw);
    otherwise they come from ``generator``. The other arguments are
    :meth:`DialogCVAE.sample_responses`'s; when ``stop`` returns True no further draws are made
    (and the one under way is cut short).
    """
    n = num_responses
    first, budget = rerank.first_draws(n), rerank.budget(n)
    c = model.encode_context(batch)
    e = c.shape[0]
    pools: list[dict[Hashable, Candidate]] = [{} for _ in range(e)]
    drawn = [0] * e

    def draw(rows: list[int], count: int) -> None:
        fixed = noise(rows, drawn[rows[0]], count) if noise is not None else None
        out = model.sample_given_context(
            c[rows], count, max_length, decoding, temperature, generator, fixed, options, stop
        )
        _add(out, rows, pools, drawn, key)

    draw(list(range(e)), first)
    while True:
        # Contexts short of N distinct all have had the same draws (first, then each round).
        short = [i for i in range(e) if len(pools[i]) < n and drawn[i] < budget]
        if not short or (stop is not None and stop()):
            break
        missing = max(n - len(pools[i]) for i in short)
        # Twice what is missing: a context that repeated itself is likely to do so again.
        draw(short, min(budget - drawn[short[0]], max(2 * missing, 1)))

    if rerank.method != "none" and not (stop is not None and stop()):
        score(model, c, pools, rerank)
    return [
        ContextResponses(
            choose(list(pool.values()), n, rerank), drawn[i], len(pool), list(pool.values())
        )
        for i, pool in enumerate(pools)
    ]


def _add(out: SampledResponses, rows, pools, drawn, key) -> None:
    token_ids = out.token_ids.tolist()
    lengths = out.lengths.tolist()
    log_probs = out.log_probs.tolist()
    for j, i in enumerate(rows):
        for k, row in enumerate(token_ids[j]):
            ids = row[: lengths[j][k]]
            candidate = Candidate(
                ids=ids,
                length=len(ids),
                log_prob=log_probs[j][k],
                finished=Vocabulary.eos_id in row,
                draw=drawn[i] + k,
            )
            pools[i].setdefault(key(ids), candidate)
        drawn[i] += len(token_ids[j])


def score(model: DialogCVAE, c: torch.Tensor, pools, rerank: RerankOptions) -> None:
    """Set every candidate's ``fit`` for ``rerank`` (and what it is made of: ``elbo``, ``kl``,
    ``elbo_empty``), all candidates of all contexts in one batch."""
    flat = [(i, cand) for i, pool in enumerate(pools) for cand in pool.values()]
    if rerank.method in ("posterior", "mmi"):
        words, lengths = candidate_words([cand for _, cand in flat], c.device)
        contexts = c[torch.tensor([i for i, _ in flat], device=c.device)]
        if rerank.method == "mmi":
            # log p(x|c) and log p(x) in one pass: the candidates twice, under their contexts
            # and under the empty one (one call's overhead instead of two: a request's latency)
            empty = model.encode_empty_context().expand(len(flat), -1)
            contexts = torch.cat([contexts, empty])
            words, lengths = torch.cat([words, words]), torch.cat([lengths, lengths])
        nll, kl, _ = model.response_elbo(contexts, words, lengths)
        elbos = [-(n + k) for n, k in zip(nll.tolist(), kl.tolist(), strict=True)]
        kls = kl.tolist()
        for row, (_, cand) in enumerate(flat):
            cand.elbo, cand.kl = elbos[row], kls[row]
            if rerank.method == "mmi":
                cand.elbo_empty = elbos[len(flat) + row]
    for _, cand in flat:
        cand.fit = fit(cand, rerank)


def candidate_words(
    candidates: Sequence[Candidate], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidates' word ids [B, T] (0-padded) and word counts [B], as
    :meth:`DialogCVAE.response_elbo` takes them."""
    width = max([1, *(cand.length for cand in candidates)])
    words = torch.zeros((len(candidates), width), dtype=torch.long, device=device)
    for row, cand in enumerate(candidates):
        words[row, : cand.length] = torch.tensor(cand.ids, dtype=torch.long)
    lengths = torch.tensor([cand.length for cand in candidates], device=device)
    return words, lengths


def fit(cand: Candidate, rerank: RerankOptions) -> float:
    """``cand``'s fit to its context by ``rerank.method`` (see the module docstring)."""
    if rerank.method == "likelihood":
        return cand.log_prob / (cand.length + 1)
    if rerank.method == "posterior":
        assert cand.kl is not None, "score() sets kl before a posterior fit"
        return -cand.kl
    if rerank.method == "mmi":  # Li et al.: log p(x|c) - λ log p(x), both as ELBOs
        assert cand.elbo is not None and cand.elbo_empty is not None, "score() sets them for mmi"
        return cand.elbo - rerank.mmi_weight * cand.elbo_empty
    raise ValueError(f"no fit for rerank {rerank.method!r}")


def choose(pool: list[Candidate], n: int, rerank: RerankOptions) -> list[Candidate]:
    """N of a context's distinct candidates: in the order drawn (no reranking), else by
    maximal marginal relevance."""
    fits = [cand.fit for cand in pool if cand.fit is not None]
    if rerank.method == "none" or len(fits) < len(pool):
        return pool[:n]  # (not scored: a call stopped early, whose answer nobody reads)
    lo, hi = min(fits), max(fits)
    scaled = [(f - lo) / (hi - lo) if hi > lo else 1.0 for f in fits]
    words = [set(cand.ids) for cand in pool]
    short = [0 < cand.length <= rerank.short_reply_tokens for cand in pool]
    chosen: list[int] = []
    closest = [0.0] * len(pool)  # each candidate's largest similarity to the chosen
    left = set(range(len(pool)))
    w = rerank.diversity
    while left and len(chosen) < n:
        best = max(left, key=lambda j: ((1 - w) * scaled[j] - w * closest[j], -j))
        chosen.append(best)
        left.discard(best)
        for j in left:
            alike = 1.0 if short[j] and short[best] else jaccard(words[j], words[best])
            closest[j] = max(closest[j], alike)
    return [pool[j] for j in chosen]


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b| (1 for two empty sets: two empty responses are the same)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0
