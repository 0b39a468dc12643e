"""How ``DialogCVAE.sample_responses`` picks each next token, besides greedy/sample and T.

:class:`DecodingOptions` defaults to the plain decoding of the papers' evaluation protocol:
nothing is blocked or penalised, ``<unk>`` may be generated, sampling draws from the whole
softmax. :data:`READABLE` is what the service uses by default: greedy decoding of this model
repeats itself ("a a a a", "and and and") and sometimes says ``<unk>``.

Every function here works on the rows still decoding at one step, all at once:
``logits`` [R, V] (float32, modified in place) and ``history`` [R, t] the tokens each row has
generated so far (words only: a row leaves the loop when it generates ``</s>``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

MAX_REPETITION_PENALTY = 1000.0
# At weight 1 the score is the pointwise mutual information of each token alone, and greedy
# decoding picks rare words the empty context never says: word salad.
MAX_ANTI_LM_WEIGHT = 1.0


@dataclass(frozen=True)
class DecodingOptions:
    # Never generate a token that would repeat an n-gram already in the response (0: off).
    no_repeat_ngram_size: int = 0
    # Divide the positive logits of tokens already in the response by this, multiply the
    # negative ones (Keskar et al. 2019, CTRL); 1.0: off.
    repetition_penalty: float = 1.0
    # decoding="sample" only: draw from the k most likely tokens (0: all) ...
    top_k: int = 0
    # ... and from the fewest most likely tokens whose probability, at the sampling
    # temperature, adds up to top_p (Holtzman et al. 2020, nucleus sampling; 1.0: all).
    top_p: float = 1.0
    allow_unk: bool = True
    # MMI-antiLM (Li et al., NAACL 2016, Sec. 4.2): at every step, subtract this times the
    # log-probability that the same decoder, with the same z, gives the token after an empty
    # conversation, so that words which would follow any context lose to words that follow
    # this one. The penalties and top-k/top-p then act on that score. 0: off; near 1 the replies
    # fall apart (docs/decoding.md).
    anti_lm_weight: float = 0.0

    def __post_init__(self):
        if self.no_repeat_ngram_size < 0:
            raise ValueError("no_repeat_ngram_size must be >= 0")
        if not 1.0 <= self.repetition_penalty <= MAX_REPETITION_PENALTY:
            # Above that, float32 logits overflow: a logit of 0 times inf is NaN.
            raise ValueError(
                f"repetition_penalty must be in [1.0, {MAX_REPETITION_PENALTY:g}] (1.0: off)"
            )
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0 (0: off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if not 0.0 <= self.anti_lm_weight <= MAX_ANTI_LM_WEIGHT:
            raise ValueError(f"anti_lm_weight must be in [0, {MAX_ANTI_LM_WEIGHT:g}] (0: off)")

    @classmethod
    def of(cls, settings) -> DecodingOptions:
        """The options held by ``settings`` under the same names (a request, a CLI config)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})

    @property
    def is_plain(self) -> bool:
        return self == PLAIN


PLAIN = DecodingOptions()
# The service's default. Chosen on held-out conversations with the first shipped checkpoint
# (docs/decoding.md): trigram blocking ends the loops, the penalty keeps a word from coming
# straight back, and top_p cuts the long tail that makes sampled responses word salad.
READABLE = DecodingOptions(
    no_repeat_ngram_size=3, repetition_penalty=1.2, top_p=0.9, allow_unk=False
)


def penalize_repetitions(logits: torch.Tensor, history: torch.Tensor, penalty: float) -> None:
    """CTRL's repetition penalty on every token of ``history`` (each row its own)."""
    if history.shape[1] == 0:
        return
    seen = logits.gather(1, history)
    # A token seen twice gets the same value written twice: the penalty is applied once.
    logits.scatter_(1, history, torch.where(seen > 0, seen / penalty, seen * penalty))


def block_repeated_ngrams(logits: torch.Tensor, history: torch.Tensor, n: int) -> None:
    """-inf for every token that would complete an n-gram already in the row's ``history``."""
    t = history.shape[1]
    if t < n:  # no complete n-gram yet (for n = 1: t < 1)
        return
    ngrams = history.unfold(1, n, 1)  # [R, t - n + 1, n]
    prefix = history[:, t - n + 1 :]  # [R, n - 1]: what the next token would complete
    match = (ngrams[:, :, :-1] == prefix.unsqueeze(1)).all(dim=-1)  # [R, t - n + 1]
    blocked = torch.zeros(match.shape, dtype=logits.dtype, device=logits.device)
    logits.scatter_add_(1, ngrams[:, :, -1], blocked.masked_fill_(match, float("-inf")))


def repeated_ngram_mask(
    tokens: torch.Tensor, lengths: torch.Tensor, n: int, occurrence: int = 2
) -> torch.Tensor:
    """[R, T] True at every token of each n-gram's ``occurrence``-th and later occurrences in
    its row (``occurrence`` 2: the candidates of Welleck et al. 2020's sequence-level
    unlikelihood, every n-gram seen before). Each row's first ``lengths`` tokens count, the rest
    are padding and never True."""
    r, t = tokens.shape
    mask = torch.zeros((r, t), dtype=torch.bool, device=tokens.device)
    if t < n:
        return mask
    ngrams = tokens.unfold(1, n, 1)  # [R, S, n], S = t - n + 1 start positions
    s = ngrams.shape[1]
    same = (ngrams.unsqueeze(2) == ngrams.unsqueeze(1)).all(dim=-1)  # [R, S, S]
    earlier = torch.ones(s, s, dtype=torch.bool, device=tokens.device).tril(-1)
    start = torch.arange(s, device=tokens.device)
    inside = start.unsqueeze(0) + n <= lengths.unsqueeze(1)  # [R, S]: the n-gram is all real
    seen = (same & earlier & inside.unsqueeze(1)).sum(dim=2)  # earlier occurrences of each
    again = (seen >= occurrence - 1) & inside
    for k in range(n):  # an n-gram starting at i covers i .. i + n - 1
        mask[:, k : k + s] |= again
    return mask


def run_mask(tokens: torch.Tensor, lengths: torch.Tensor, run: int) -> torch.Tensor:
    """[R, T] True at every token that is the ``run``-th or later of a run of one token
    ("the the the": the third "the" for ``run`` 3); padding (past ``lengths``) never."""
    r, t = tokens.shape
    mask = torch.zeros((r, t), dtype=torch.bool, device=tokens.device)
    if t < run:
        return mask
    same = torch.ones((r, t - run + 1), dtype=torch.bool, device=tokens.device)
    for k in range(1, run):
        same &= tokens[:, k : t - run + 1 + k] == tokens[:, : t - run + 1]
    mask[:, run - 1 :] = same
    return mask & (torch.arange(t, device=tokens.device) < lengths.unsqueeze(1))


def keep_top_k(logits: torch.Tensor, k: int) -> None:
    """-inf for all but the ``k`` largest logits of each row (ties at the k-th kept)."""
    if k >= logits.shape[1]:
        return
    kth = logits.topk(k, dim=1).values[:, -1:]
    logits.masked_fill_(logits < kth, float("-inf"))


# keep_top_p looks for each row's nucleus among this many most likely tokens first, and sorts
# the whole vocabulary only when it reaches further (sorting 10k logits per row and step made
# nucleus sampling 3x slower; measured on the first shipped checkpoint, `cpu` preset).
NUCLEUS_CANDIDATES = 64


def keep_top_p(logits: torch.Tensor, p: float) -> None:
    """-inf for the tokens outside each row's nucleus: the most likely tokens, in order, until
    their probability adds up to ``p`` (the most likely token is always kept)."""
    if p >= 1.0:
        return
    probs = logits.softmax(dim=1)
    ranked, order = probs.topk(min(NUCLEUS_CANDIDATES, probs.shape[1]), dim=1)  # descending
    if (ranked.sum(dim=1) < p).any():
        ranked, order = probs.sort(dim=1, descending=True)
    inside = ranked.cumsum(dim=1) - ranked < p  # the mass before each token is short of p
    inside[:, 0] = True  # even when p is below float32's smallest number (p = 5e-324 is 0.0)
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, order, inside)
    logits.masked_fill_(~keep, float("-inf"))
