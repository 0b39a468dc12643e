"""What the evaluation measures of the responses themselves, besides BLEU and bag-of-words:

* :func:`reranked_samples`: the responses chosen by a reranking method (model/reranking.py)
  for a batch of examples, from the same z draws as the plain samples and more;
* :func:`context_dependence`: does the context decide the reply, or the latent noise? The same
  fixed noises decode the replies of many contexts (greedy); few distinct replies per noise
  across contexts means the noise decides.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

from eval.samples import example_noise
from model.batch import dialog_batch
from model.reranking import RerankOptions, distinct_responses
from model.vocab import SPECIALS, Vocabulary
from training.batching import plan_batches


def planned_batch(turns, spans, vocab: Vocabulary, max_context: int, max_utt_len: int):
    """The examples of one planned batch (``spans``: (dialog, start, end) from ``plan_batches``)."""
    return dialog_batch(
        [turns[i] for i, _, _ in spans],
        vocab,
        max_context=max_context,
        max_utt_len=max_utt_len,
        spans=[(s, e) for _, s, e in spans],
    )


def words_of(vocab: Vocabulary, ids: Sequence[int]) -> list[str]:
    """A sample's tokens as the evaluation scores them: special tokens (<unk> too) removed."""
    return [w for w in vocab.decode(ids) if w not in SPECIALS]


def reranked_samples(model, vocab, batch, config, position: int):
    """``config.samples`` distinct responses per example of ``batch`` chosen by the reranking
    method, and per example what :func:`distinct_responses` found. The z of an example's draws are
    :func:`example_noise`'s for (seed, its position), so its first ``samples`` draws are those
    of the plain samples."""
    options = config.rerank_options()
    budget = options.budget(config.samples)
    d = model.config.latent_dim
    noises = [
        example_noise(config.seed, position + k, budget, d) for k in range(batch.num_examples)
    ]

    def noise(rows, start, count):
        return torch.stack([noises[r][start : start + count] for r in rows])

    chosen = distinct_responses(
        model,
        batch,
        config.samples,
        key=lambda ids: tuple(words_of(vocab, ids)),
        rerank=options,
        max_length=config.max_length,
        decoding=config.decoding,
        temperature=config.temperature,
        generator=torch.Generator().manual_seed(config.seed + position),
        noise=noise,
        options=config.decoding_options(),
    )
    return [[words_of(vocab, c.ids) for c in r.responses] for r in chosen], chosen


def context_dependence(
    model, vocab, turns, config, contexts: int, noises: int, rerank: RerankOptions | None = None
) -> dict:
    """The same ``noises`` standard-normal draws of z for each of the first ``contexts``
    examples, greedy decoding (``config``'s other decoding options): the mean number of
    distinct replies per noise across the contexts, the mean number of distinct replies per
    context across the noises, and the share of one-token replies.

    With ``rerank``, its K >= ``noises`` candidates per context come from K fixed noises and
    ``noises`` replies are chosen per context; "per noise" is then per rank (the best reply of
    every context, the second best, ...)."""
    d = model.config.latent_dim
    g = torch.Generator().manual_seed(config.seed + 7919)
    budget = rerank.budget(noises) if rerank else noises
    fixed = torch.randn(budget, d, generator=g)
    batches = plan_batches([len(t) for t in turns], config.batch_dialogs, 256, contexts)
    # per context, its `noises` replies (" "-joined; None where the reranked draws ran out)
    replies: list[list[str | None]] = []
    for spans in batches:
        batch = planned_batch(
            turns, spans, vocab, model.config.max_context, model.config.max_utt_len
        ).to(next(model.parameters()).device)
        e = batch.num_examples
        if rerank is None:
            out = model.sample_responses(
                batch,
                noises,
                max_length=config.max_length,
                noise=fixed[:noises].expand(e, -1, -1),
                options=config.decoding_options(),
            )
            replies += [[" ".join(words_of(vocab, ids)) for ids in row] for row in out.token_ids]
        else:
            chosen = distinct_responses(
                model,
                batch,
                noises,
                key=lambda ids: tuple(words_of(vocab, ids)),
                rerank=rerank,
                max_length=config.max_length,
                noise=lambda rows, start, count: fixed[start : start + count].expand(
                    len(rows), -1, -1
                ),
                options=config.decoding_options(),
            )
            for r in chosen:
                texts = [" ".join(words_of(vocab, c.ids)) for c in r.responses]
                replies.append(texts + [None] * (noises - len(texts)))
    per_noise = [len({row[j] for row in replies if row[j] is not None}) for j in range(noises)]
    per_context = [len({t for t in row if t is not None}) for row in replies]
    said = [t for row in replies for t in row if t is not None]
    return {
        "contexts": len(replies),
        "noises": noises,
        "rerank": rerank.method if rerank else "none",
        "distinct_per_noise": statistics.mean(per_noise),
        "distinct_per_context": statistics.mean(per_context),
        "one_token_rate": sum(len(t.split()) == 1 for t in said) / len(said) if said else 0.0,
    }
