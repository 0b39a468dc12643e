"""The hierarchical dialog CVAE and its BN-CVAE variant.

Zhao, Zhao & Eskenazi (ACL 2017), "Learning Discourse-level Diversity for Neural Dialog Models
using Conditional Variational Autoencoders" (CVAE, CVAE + bag-of-words loss), and Zhu et al.
(ACL 2020), "A Batch Normalized Inference Network Keeps the KL Vanishing Away" (BN-CVAE).

    c  = ContextEncoder(UtteranceEncoder(u_1..u_k), floor flags)     the dialog context
    x  = UtteranceEncoder(response)
    q(z|c,x) = N(mu_q, diag(sigma_q^2))  RecognitionNetwork           (BN on mu_q for bn-cvae)
    p(z|c)   = N(mu_p, diag(sigma_p^2))  PriorNetwork
    p(x|c,z)                              Decoder (GRU, initial state from [c; z])

Loss per example (minimised):
    cvae:      -log p(x|c,z) + w_kl * KL(q(z|c,x) || p(z|c))
    cvae-bow:  the same + the bag-of-words loss -sum_t log p_bow(x_t|c,z)
    bn-cvae:   the same as cvae + KL(p(z|c) || N(0, I))      (Eq. 11-12)
               with bn_gamma_mode learned: a gamma per latent dimension at RMS bn_gamma, and with
               posterior_var_dropout > 0 dropout on q's variance (DU-VAE, Shen et al. 2021)
    any, with unlikelihood_weight > 0 (not in the papers): + w_ul * token-level unlikelihood
    any, with sequence_unlikelihood_weight > 0 (not in the papers, training only):
               + w_seq * sequence-level unlikelihood on the model's own greedy responses
    any, with context_contrast_weight > 0 (not in the papers, training only):
               + w_cc * softplus(-gap), gap the per-token log-likelihood of x under its own c
               minus under another example's c, with the same z (DialogCVAE.context_gap)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from model.batch import DialogBatch, context_batch
from model.config import ModelConfig
from model.decoding import (
    PLAIN,
    DecodingOptions,
    block_repeated_ngrams,
    keep_top_k,
    keep_top_p,
    penalize_repetitions,
    repeated_ngram_mask,
    run_mask,
)
from model.packed_gru import GRU
from model.vocab import SPECIALS, Vocabulary


def gaussian_kl(mu_q, logvar_q, mu_p=None, logvar_p=None) -> torch.Tensor:
    """KL(N(mu_q, diag e^logvar_q) || N(mu_p, diag e^logvar_p)) summed over the last dimension;
    p is the standard normal when ``mu_p`` is None. (The training objective and eval/latent.py.)"""
    if mu_p is None:
        return 0.5 * torch.sum(mu_q.pow(2) + logvar_q.exp() - logvar_q - 1.0, dim=-1)
    return 0.5 * torch.sum(
        logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) / logvar_p.exp() - 1.0,
        dim=-1,
    )


class UtteranceEncoder(nn.Module):
    """A bidirectional GRU; an utterance is the concatenation of both final states."""

    def __init__(self, embedding: nn.Embedding, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.embedding = embedding
        self.dropout = nn.Dropout(dropout)
        self.rnn = GRU(embedding.embedding_dim, hidden, batch_first=True, bidirectional=True)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(
            self.dropout(self.embedding(tokens)),
            lengths.cpu(),
            batch_first=True,
            enforce_sorted=False,
        )
        _, h = self.rnn(packed)  # [2, N, H]
        return torch.cat([h[0], h[1]], dim=-1)


class ContextEncoder(nn.Module):
    """A GRU over the utterance vectors of the context, each with its floor flag."""

    def __init__(self, utt_dim: int, hidden: int):
        super().__init__()
        self.rnn = GRU(utt_dim + 1, hidden, batch_first=True)

    def forward(self, utt_vecs, floor, lengths) -> torch.Tensor:
        inputs = torch.cat([utt_vecs, floor.unsqueeze(-1).to(utt_vecs.dtype)], dim=-1)
        packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.rnn(packed)
        return h[0]


# DU-VAE's floor on the posterior variance, delta_rate / (2 pi e) with their default delta_rate 1
# (SmilesDZgk/DU-VAE text.py's --delta_rate): a dimension's entropy 0.5 log(2 pi e var) stays
# >= 0, and a variance dropped to 0 by the dropout below stays finite.
VAR_FLOOR = 1.0 / (2.0 * math.pi * math.e)


class RMSScaledBatchNorm(nn.BatchNorm1d):
    """Batch normalization whose scale gamma_i is learned per dimension but used rescaled so that
    RMS(gamma) = ``rms``: DU-VAE's BN on the posterior mean (Shen et al. 2021).

    DU-VAE rescales the stored weight in place before each forward pass, outside autograd
    (SmilesDZgk/DU-VAE, modules/encoders/enc_lstm.py:106-110: ``ss = mean(w^2)^0.5; w.data =
    w.data * gamma / ss``). Here the rescaling is part of the forward pass instead: ``weight``
    is the free parameter and :meth:`gamma` = rms * weight / RMS(weight) is what the
    normalization uses, so the gradient reaching ``weight`` is the one orthogonal to the
    rescaling (the part DU-VAE's next rescale would undo anyway), the forward pass changes no
    parameter (inference mode, DDP) and RMS(gamma) = rms holds at every step, not only after
    the next forward pass. The state-dict keys are nn.BatchNorm1d's, so checkpoints keep their
    layout.
    """

    def __init__(self, features: int, rms: float):
        super().__init__(features)
        self.rms = rms
        self.weight.data.fill_(rms)  # DU-VAE's initialisation (enc_lstm.py:79)

    def gamma(self) -> torch.Tensor:
        """The per-dimension scale used: ``weight`` rescaled to RMS ``rms``."""
        return self.weight * (self.rms / self.weight.pow(2).mean().sqrt())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nn.BatchNorm1d.forward with gamma(), for the case built here: running statistics
        # tracked, exponential averages with the default momentum 0.1
        tracked, momentum = self.num_batches_tracked, self.momentum
        assert tracked is not None and momentum is not None
        if self.training:
            tracked.add_(1)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.gamma(), self.bias,
            self.training, momentum, self.eps,
        )  # fmt: skip


class RecognitionNetwork(nn.Module):
    """q(z|c,x). For bn-cvae, Eq. 5: mu_q = BN(mu_q) with the scale gamma frozen (``fixed``) or
    learned per dimension at RMS bn_gamma (``learned``), the shift beta learnt. With
    ``var_dropout`` > 0, DU-VAE's dropout on the posterior variance."""

    def __init__(
        self,
        cond_dim: int,
        resp_dim: int,
        latent: int,
        bn_gamma: float | None,
        gamma_mode: str = "fixed",
        var_dropout: float = 0.0,
    ):
        super().__init__()
        self.proj = nn.Linear(cond_dim + resp_dim, 2 * latent)
        self.var_dropout = var_dropout
        self.mu_bn: nn.BatchNorm1d | None = None
        if bn_gamma is not None and gamma_mode == "learned":
            self.mu_bn = RMSScaledBatchNorm(latent, bn_gamma)
        elif bn_gamma is not None:
            self.mu_bn = nn.BatchNorm1d(latent)
            self.mu_bn.weight.data.fill_(bn_gamma)
            self.mu_bn.weight.requires_grad_(False)  # gamma is a constant, not a parameter

    def bn_gamma(self) -> torch.Tensor | None:
        """The per-dimension BN scale gamma_i on the posterior mean (None without BN)."""
        if isinstance(self.mu_bn, RMSScaledBatchNorm):
            return self.mu_bn.gamma()
        return None if self.mu_bn is None else self.mu_bn.weight

    def forward(self, c, x, full_kl: bool = True):
        """(mu, logvar) of q(z|c,x); ``full_kl``: the KL weight has reached 1 (DU-VAE drops the
        posterior variance, and floors it, only then)."""
        mu, logvar = self.proj(torch.cat([c, x], dim=-1)).chunk(2, dim=-1)
        if self.mu_bn is not None:
            # Eq. 5: BN on the posterior mean (gamma fixed, or learned at a fixed RMS)
            mu = self.mu_bn(mu)
        if self.var_dropout > 0 and full_kl:
            # DU-VAE's dropout on the posterior variance (SmilesDZgk/DU-VAE,
            # modules/encoders/encoder.py:58-61): the variance sigma^2, not its log, is dropped
            # (kept entries scaled by 1/(1-p)), in training only and once the KL weight is 1;
            # then floored (enc_lstm.py:116-117, applied there whenever the KL weight is 1, so
            # at evaluation too).
            var = F.dropout(logvar.exp(), self.var_dropout, self.training)
            logvar = torch.log(var + VAR_FLOOR)
        return mu, logvar


class PriorNetwork(nn.Module):
    """p(z|c): a one-hidden-layer MLP, as in Zhao et al."""

    def __init__(self, cond_dim: int, latent: int):
        super().__init__()
        hidden = max(2 * latent, 100)
        self.mlp = nn.Sequential(
            nn.Linear(cond_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent)
        )

    def forward(self, c):
        mu, logvar = self.mlp(c).chunk(2, dim=-1)
        return mu, logvar


def looping_tokens(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[R, T] the tokens that make a response loop, as the evaluation's degenerate rate defines
    a loop (eval/metrics.py's is_degenerate: a 3-gram three times, or a token three times in a
    row): every token of a 3-gram's third and later occurrences, and the third and later tokens
    of a run. A row has one iff it is degenerate.

    Welleck et al.'s candidates (every n-gram seen once before) would also penalise the normal
    repeats of conversation: "i ' m" is three tokens, and said twice in many a response.
    """
    return repeated_ngram_mask(tokens, lengths, 3, occurrence=3) | run_mask(tokens, lengths, 3)


def packed_order(t: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """[E, T] -> the entries of each row's first ``steps`` positions, in the order of a packed
    sequence of those lengths (the order of :meth:`Decoder.token_nll`'s tokens)."""
    return pack_padded_sequence(t, steps.cpu(), batch_first=True, enforce_sorted=False).data


class Decoder(nn.Module):
    """A GRU language model over the response whose initial state is a projection of [c; z]."""

    def __init__(
        self,
        embedding: nn.Embedding,
        cond_dim: int,
        latent: int,
        hidden: int,
        vocab: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.embedding = embedding
        self.dropout = nn.Dropout(dropout)
        self.init_state = nn.Linear(cond_dim + latent, hidden)
        self.rnn = GRU(embedding.embedding_dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def initial_state(self, c, z):
        return self.init_state(torch.cat([c, z], dim=-1)).unsqueeze(0)

    def token_nll(
        self, h0, responses, lengths, unlikelihood: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """-log p(x_t | x_<t, c, z) for every real target token, its unlikelihood loss (when
        asked; else None) and the example each token belongs to.

        Works on the packed sequence so that padded positions are never projected onto the
        vocabulary (the vocabulary projection is most of the decoder's cost).
        """
        steps = (lengths - 1).cpu()  # inputs <s> w1..wn, targets w1..wn </s>
        inputs = pack_padded_sequence(
            self.dropout(self.embedding(responses[:, :-1])),
            steps,
            batch_first=True,
            enforce_sorted=False,
        )
        out, _ = self.rnn(inputs, h0)

        def packed(t: torch.Tensor) -> torch.Tensor:
            return packed_order(t, steps)

        targets = responses[:, 1:]
        e, t = targets.shape
        owner = packed(torch.arange(e, device=targets.device).unsqueeze(1).expand(-1, t))
        logits = self.logits(self.dropout(out.data))
        if not unlikelihood:
            return F.cross_entropy(logits, packed(targets), reduction="none"), None, owner
        log_p = F.log_softmax(logits, dim=-1)
        nll = -log_p.gather(1, packed(targets).unsqueeze(1)).squeeze(1)
        # Welleck et al. (2020), token-level unlikelihood: at step t the negative candidates are
        # the distinct earlier tokens of the response other than x_t, and each costs
        # -log(1 - p(c | x_<t)). It lowers the probability of repeating what was already said,
        # which greedy decoding otherwise turns into loops ("the the the ...").
        earlier = torch.ones(t, t, dtype=torch.bool, device=targets.device).tril(-1)  # s < t
        same = targets.unsqueeze(2) == targets.unsqueeze(1)  # [E, t, s]: x_t == x_s
        first = ~(same & earlier).any(dim=2)  # x_s's first occurrence in the response
        candidate = earlier & ~same & (first & (targets != 0)).unsqueeze(1)  # [E, t, s]
        time = packed(torch.arange(t, device=targets.device).expand(e, -1))
        ids = targets[owner]  # [N, s]: each packed token's response
        p = log_p.gather(1, ids).exp()  # p(x_s | x_<t) for every s
        loss = -torch.log((1 - p).clamp_min(1e-5)) * candidate[owner, time]
        return nll, loss.sum(dim=1), owner

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The vocabulary projection, always returned in float32.

        ``out`` may be held in a lower precision for inference (see
        :meth:`DialogCVAE.set_decode_dtype`); softmax and log-probabilities stay float32.
        """
        return self.out(hidden.to(self.out.weight.dtype)).float()

    def step(self, token: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One GRU step on the embedded ``token``: state h [B, H] -> the next state.

        (float32 throughout: in bfloat16 these small products are no faster, measured.)
        """
        # the one layer's weight_ih, weight_hh, bias_ih, bias_hh: gru_cell's order
        w_ih, w_hh, b_ih, b_hh = self.rnn.all_weights[0]
        return torch.gru_cell(self.embedding(token), h, w_ih, w_hh, b_ih, b_hh)


@dataclass
class CVAEOutput:
    loss: torch.Tensor  # scalar: mean over examples of the variant's objective
    nll: torch.Tensor  # [E] -log p(x|c,z), summed over tokens incl. </s>
    tokens: torch.Tensor  # [E] target tokens per response
    kl: torch.Tensor  # [E] KL(q(z|c,x) || p(z|c))
    prior_kl: torch.Tensor  # [E] KL(p(z|c) || N(0,I))
    bow: torch.Tensor  # [E] bag-of-words loss (zeros unless cvae-bow)
    unlikelihood: torch.Tensor  # [E] token-level unlikelihood loss (zeros unless its weight > 0)
    # [E] sequence-level unlikelihood loss (zeros unless its weight > 0 and in training)
    sequence_unlikelihood: torch.Tensor
    extras: dict = field(default_factory=dict)


@dataclass
class LikelihoodTotals:
    """:class:`CVAEOutput` summed over examples (in float64), and the perplexities they give:
    the validation of training and the evaluation's ``ppl``/``elbo_ppl``/``kl`` both use it."""

    nll: float = 0.0
    kl: float = 0.0
    prior_kl: float = 0.0
    tokens: float = 0.0
    examples: int = 0

    def add(self, out: CVAEOutput) -> None:
        self.nll += float(out.nll.double().sum())
        self.kl += float(out.kl.double().sum())
        self.prior_kl += float(out.prior_kl.double().sum())
        self.tokens += float(out.tokens.double().sum())
        self.examples += out.nll.shape[0]

    @property
    def ppl(self) -> float:
        """Reconstruction perplexity, z ~ q(z|c,x): exp(sum NLL / sum tokens)."""
        return math.exp(self.nll / self.tokens)

    @property
    def elbo_ppl(self) -> float:
        """exp(-ELBO per token): an upper bound on the model's true perplexity."""
        return math.exp((self.nll + self.kl) / self.tokens)


@dataclass
class SampledResponses:
    token_ids: torch.Tensor  # [E, N, T] words then </s> (unless cut at max_length), 0-padded
    lengths: torch.Tensor  # [E, N] words, excluding </s>
    log_probs: torch.Tensor  # [E, N] sum of the chosen tokens' log-probabilities


class DialogCVAE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = cfg = config
        self._frozen: list[nn.Module] = []  # kept in eval mode (freeze_all_but_decoder)
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=0)
        self.utt_encoder = UtteranceEncoder(self.embedding, cfg.utt_hidden, cfg.dropout)
        self.ctx_encoder = ContextEncoder(2 * cfg.utt_hidden, cfg.ctx_hidden)
        self.recognition = RecognitionNetwork(
            cfg.cond_dim,
            2 * cfg.utt_hidden,
            cfg.latent_dim,
            cfg.bn_gamma if cfg.use_bn else None,
            cfg.bn_gamma_mode,
            cfg.posterior_var_dropout,
        )
        self.prior_net = PriorNetwork(cfg.cond_dim, cfg.latent_dim)
        self.decoder = Decoder(
            self.embedding,
            cfg.cond_dim,
            cfg.latent_dim,
            cfg.dec_hidden,
            cfg.vocab_size,
            cfg.dropout,
        )
        self.bow_head = None
        if cfg.use_bow:
            self.bow_head = nn.Sequential(
                nn.Linear(cfg.cond_dim + cfg.latent_dim, cfg.bow_hidden),
                nn.Tanh(),
                nn.Linear(cfg.bow_hidden, cfg.vocab_size),
            )

    def freeze_all_but_decoder(self) -> DialogCVAE:
        """Train only the decoder's own layers (its initial-state projection, GRU and vocabulary
        projection): a fine-tune that keeps the model's posterior, prior and KL as they were.

        The shared word embedding is frozen with the encoders, the prior, the recognition network
        and the bag-of-words head (cvae-bow). The frozen modules also stay in eval mode through
        :meth:`train`, so that the recognition network's batch-norm running statistics (and any
        dropout) are the checkpoint's.
        """
        self.requires_grad_(False)
        decoder = self.decoder
        for layer in (decoder.init_state, decoder.rnn, decoder.out):
            layer.requires_grad_(True)
        self._frozen = [m for name, m in self.named_children() if name != "decoder"]
        return self.train(self.training)

    def train(self, mode: bool = True) -> DialogCVAE:
        super().train(mode)
        for module in self._frozen:  # frozen modules never switch to training behaviour
            module.eval()
        return self

    def use_batched_gru(self, enabled: bool = True) -> DialogCVAE:
        """Train the three GRUs with :func:`model.packed_gru.packed_gru` (on the CPU in
        float32; the same GRU, summed in another order): a training speed-up that inference
        never uses."""
        for module in self.modules():
            if isinstance(module, GRU):
                module.batched = enabled
        return self

    def set_decode_dtype(self, dtype: torch.dtype) -> DialogCVAE:
        """Hold the decoder's vocabulary projection in ``dtype``: an inference-only speed-up.

        That projection (dec_hidden x vocab_size) is ~75% of the decoding time on a CPU (measured
        with torch.profiler, cpu preset). In bfloat16 on a CPU with native bf16 instructions it
        runs 2.5x (5 rows) to 5x (80 rows) faster; everything else stays float32 and the logits
        are converted back before the softmax (``Decoder.logits``). Train in float32.
        """
        self.decoder.out.to(dtype)
        return self

    # --- encoders -------------------------------------------------------------------------

    def encode_utterances(self, batch: DialogBatch) -> torch.Tensor:
        """Every distinct utterance of the batch, encoded once: [U, 2 * utt_hidden]."""
        return self.utt_encoder(batch.utterances, batch.on_host("utt_lengths"))

    def _context_from(self, utt_vecs: torch.Tensor, batch: DialogBatch) -> torch.Tensor:
        # Gather each example's window from the shared encodings (padding rows point at row 0
        # and are masked out by the packed context GRU).
        windows = utt_vecs[batch.context_index.clamp(min=0)]  # [E, W, D]
        return self.ctx_encoder(windows, batch.context_floor, batch.on_host("context_lengths"))

    def encode_context(self, batch: DialogBatch, utt_vecs: torch.Tensor | None = None):
        if utt_vecs is None:
            utt_vecs = self.encode_utterances(batch)
        return self._context_from(utt_vecs, batch)

    def encode_empty_context(self) -> torch.Tensor:
        """The encoding [1, C] of an empty conversation: the begin-of-dialog marker alone, as
        context_batch builds it for a conversation with no turns (no word is looked up, so a
        vocabulary of the special tokens serves)."""
        batch = context_batch([[]], Vocabulary(list(SPECIALS)))
        return self.encode_context(batch.to(next(self.parameters()).device))

    def posterior(self, batch: DialogBatch, c=None, utt_vecs=None):
        if utt_vecs is None:
            utt_vecs = self.encode_utterances(batch)
        if c is None:
            c = self._context_from(utt_vecs, batch)
        return self.recognition(c, utt_vecs[batch.response_index])

    def _encode_per_window(self, batch: DialogBatch):
        """Reference path: re-encode each window's utterances and each response separately.

        This is what a straightforward implementation does (every utterance is encoded once per
        window it appears in, up to max_context + 1 times). Kept to check the fast path against.
        """
        mask = batch.context_index >= 0
        rows = batch.context_index[mask]
        flat = self.utt_encoder(batch.utterances[rows], batch.utt_lengths[rows])
        windows = flat.new_zeros(*batch.context_index.shape, flat.shape[-1])
        windows[mask] = flat
        c = self.ctx_encoder(windows, batch.context_floor, batch.context_lengths)
        r = batch.response_index
        x = self.utt_encoder(batch.utterances[r], batch.utt_lengths[r])
        return c, x

    # --- training objective ---------------------------------------------------------------

    def forward(
        self,
        batch: DialogBatch,
        kl_weight: float = 1.0,
        per_window: bool = False,
        prior_kl_weight: float | None = None,
    ):
        """The variant's loss; ``prior_kl_weight`` overrides ``config.prior_kl_weight`` (bn-cvae),
        e.g. to anneal the extra term along with the KL (the paper does not say)."""
        cfg = self.config
        if prior_kl_weight is None:
            prior_kl_weight = cfg.prior_kl_weight
        if batch.response_index is None:
            raise ValueError("forward needs a batch with responses; use sample_responses")
        if per_window:
            c, x = self._encode_per_window(batch)
        else:
            utt_vecs = self.encode_utterances(batch)
            c = self._context_from(utt_vecs, batch)
            x = utt_vecs[batch.response_index]

        mu_q, logvar_q = self.recognition(c, x, full_kl=kl_weight >= 1.0)
        mu_p, logvar_p = self.prior_net(c)
        # Reparameterisation: z ~ q(z|c,x)
        z = mu_q + torch.randn_like(mu_q) * torch.exp(0.5 * logvar_q)

        responses = batch.responses()
        lengths = batch.utt_lengths[batch.response_index]
        h0 = self.decoder.initial_state(c, z)
        host_lengths = batch.on_host("utt_lengths")[batch.on_host("response_index")]
        token_nll, token_ul, owner = self.decoder.token_nll(
            h0, responses, host_lengths, unlikelihood=cfg.unlikelihood_weight > 0
        )
        n = responses.shape[0]
        nll = token_nll.new_zeros(n).index_add_(0, owner, token_nll)
        unlikelihood = torch.zeros_like(nll)
        if token_ul is not None:
            unlikelihood.index_add_(0, owner, token_ul)
        tokens = (lengths - 1).to(nll.dtype)

        kl = gaussian_kl(mu_q, logvar_q, mu_p, logvar_p)
        prior_kl = gaussian_kl(mu_p, logvar_p)  # Eq. 12: KL(p(z|c) || N(0, I))
        bow = torch.zeros_like(nll)
        if self.bow_head is not None:
            # Zhao et al.'s bag-of-words loss: every response word predicted from [c; z] at once.
            log_p = F.log_softmax(self.bow_head(torch.cat([c, z], dim=-1)), dim=-1)
            targets = responses[:, 1:]
            bow = -(log_p.gather(1, targets) * (targets != 0)).sum(dim=1)

        per_example = nll + kl_weight * kl
        if cfg.use_bow:
            per_example = per_example + cfg.bow_weight * bow
        if cfg.use_bn:
            # Eq. 11: L' = L - KL(p(z|c) || N(0,I)); minimised here as -L'
            per_example = per_example + prior_kl_weight * prior_kl
        if token_ul is not None:  # not in the papers: an option against greedy loops
            per_example = per_example + cfg.unlikelihood_weight * unlikelihood
        sequence_ul, extras = torch.zeros_like(nll), {"mu_q": mu_q, "logvar_q": logvar_q}
        if cfg.sequence_unlikelihood_weight > 0 and self.training:  # not in the papers either
            sequence_ul, extras["repeating"] = self.sequence_unlikelihood(c, mu_p, logvar_p)
            per_example = per_example + cfg.sequence_unlikelihood_weight * sequence_ul
        if cfg.context_contrast_weight > 0 and self.training and n > 1:  # nor this
            gap = self.context_gap(c, z, responses, host_lengths, nll, tokens)
            per_example = per_example + cfg.context_contrast_weight * F.softplus(-gap)
            extras["context_gap"] = gap.detach()
        return CVAEOutput(
            loss=per_example.mean(),
            nll=nll,
            tokens=tokens,
            kl=kl,
            prior_kl=prior_kl,
            bow=bow,
            unlikelihood=unlikelihood,
            sequence_unlikelihood=sequence_ul,
            extras=extras,
        )

    def sequence_unlikelihood(self, c, mu_p, logvar_p) -> tuple[torch.Tensor, torch.Tensor]:
        """Welleck et al. (2020)'s sequence-level unlikelihood, on the responses this model
        would say: per example, -sum log(1 - p(x_t | x_<t, c, z)) over the looping tokens x_t of
        its greedy response (:func:`looping_tokens`), and whether there were any [E].

        The responses are decoded as the evaluation decodes them (z ~ p(z|c), greedy, up to
        max_utt_len words) without gradients; the loss is then taken with gradients through the
        decoder, the prior and the context. The token-level loss only sees the reference's
        prefixes; this one sees the model's own loops, which is where they arise.
        """
        cfg = self.config
        z = mu_p + torch.randn_like(mu_p) * torch.exp(0.5 * logvar_p)  # z ~ p(z|c)
        h0 = self.decoder.initial_state(c, z)
        with torch.no_grad():
            words, lengths, _ = self._decode(h0.squeeze(0), cfg.max_utt_len)
        targets = lengths + (lengths < cfg.max_utt_len).long()  # the words and </s> if said
        bos = torch.full_like(words[:, :1], Vocabulary.bos_id)
        responses = torch.cat([bos, words], dim=1)
        token_nll, _, owner = self.decoder.token_nll(h0, responses, targets + 1)
        looping = looping_tokens(words, targets)
        # -log(1 - p) from -log p, clamped as the token-level loss is
        loss = -torch.log((1 - torch.exp(-token_nll)).clamp_min(1e-5))
        loss = loss * packed_order(looping, targets)
        per_example = loss.new_zeros(c.shape[0]).index_add_(0, owner, loss)
        return per_example, looping.any(dim=1)

    def context_gap(self, c, z, responses, lengths, nll, tokens) -> torch.Tensor:
        """Per example, how much likelier its response is, per target token, under its own
        context than under another example's with the same z: (-log p(x|c',z) - ``nll``) /
        ``tokens``, c' the context half the batch away (the batch rolled by E // 2, so another
        segment of the batch's dialogs, not the next turn). The logistic loss softplus(-gap)
        asks the decoder to tell the two contexts apart given z: for a fixed z, the reply
        should follow the context."""
        n = nll.shape[0]
        other = torch.roll(torch.arange(n, device=c.device), n // 2)
        h0 = self.decoder.initial_state(c[other], z)
        token_nll, _, owner = self.decoder.token_nll(h0, responses, lengths)
        nll_other = token_nll.new_zeros(n).index_add_(0, owner, token_nll)
        return (nll_other - nll) / tokens

    # --- generation -----------------------------------------------------------------------

    @torch.inference_mode()
    def sample_responses(
        self,
        batch: DialogBatch,
        num_samples: int,
        max_length: int = 40,
        decoding: str = "greedy",
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        options: DecodingOptions = PLAIN,
        stop: Callable[[], bool] | None = None,
    ) -> SampledResponses:
        """Draw ``num_samples`` responses per context: z ~ p(z|c), then decode given z.

        ``noise`` ([E, N, latent_dim]) fixes the standard-normal draws of z (used by the
        evaluation, eval/switchboard.py, so that each example's z depends on the seed and its
        position, not on the batch it is decoded in). ``options``:
        n-gram blocking, repetition penalty, top-k/top-p sampling, ``<unk>`` or not
        (:mod:`model.decoding`); the default is the plain decoding of the evaluation protocol.
        ``log_probs`` are the model's, over the tokens it may say (so without ``<unk>`` when
        that is banned), before the penalties and top-k/top-p. ``stop``, checked before every
        step, ends the decoding early when it returns True (the responses are then cut short).
        """
        return self.sample_given_context(
            self.encode_context(batch),
            num_samples,
            max_length,
            decoding,
            temperature,
            generator,
            noise,
            options,
            stop,
        )

    @torch.inference_mode()
    def sample_given_context(
        self,
        c: torch.Tensor,
        num_samples: int,
        max_length: int = 40,
        decoding: str = "greedy",
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        options: DecodingOptions = PLAIN,
        stop: Callable[[], bool] | None = None,
    ) -> SampledResponses:
        """:meth:`sample_responses` for contexts already encoded (``c`` [E, C]), so that more
        responses can be drawn for some of them without encoding them again."""
        if decoding not in ("greedy", "sample"):
            raise ValueError("decoding must be 'greedy' or 'sample'")
        if num_samples < 1 or max_length < 1:
            raise ValueError("num_samples and max_length must be >= 1")
        if decoding == "sample" and not temperature >= 1e-3:
            # logits / T overflows to inf (then NaN probabilities) for vanishing T
            raise ValueError("temperature must be >= 0.001 (use greedy decoding for T -> 0)")
        e, n = c.shape[0], num_samples
        c = c.repeat_interleave(n, dim=0)  # [E*N, C]: every sample gets its own z
        mu, logvar = self.prior_net(c)
        if noise is None:
            noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + noise.reshape(mu.shape).to(mu) * torch.exp(0.5 * logvar)
        h = self.decoder.initial_state(c, z).squeeze(0)  # [E*N, H]
        h_empty = None
        if options.anti_lm_weight:  # the same z after an empty conversation
            empty = self.encode_empty_context().expand(c.shape[0], -1)
            h_empty = self.decoder.initial_state(empty, z).squeeze(0)

        out, lengths, log_probs = self._decode(
            h, max_length, decoding, temperature, generator, options, stop, h_empty
        )
        b = e * n
        width = int(out.ne(0).sum(1).max().item()) if b else 0
        return SampledResponses(
            token_ids=out[:, : max(width, 1)].reshape(e, n, -1),
            lengths=lengths.reshape(e, n),
            log_probs=log_probs.reshape(e, n),
        )

    @torch.inference_mode()
    def response_elbo(
        self, c: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """How well each response fits its context: (-log p(x|c,z) with z the mean of
        q(z|c,x), KL(q(z|c,x) || p(z|c)), and target tokens), each [B].

        ``c`` [B, C] the encoded contexts; ``words`` [B, T] the responses' words (0-padded,
        as :meth:`sample_responses` returns them: anything from ``lengths`` on is ignored) and
        ``lengths`` [B] their word counts. The response is scored as the training data is,
        ``<s> words </s>``. -(nll + kl) is the ELBO of log p(x|c) with z at the posterior mean
        (one deterministic point instead of a draw: no sampling noise in a ranking).
        """
        b = words.shape[0]
        width = int(lengths.max().item()) + 2 if b else 2
        responses = torch.zeros((b, width), dtype=torch.long, device=words.device)
        responses[:, 0] = Vocabulary.bos_id
        positions = torch.arange(width - 2, device=words.device)
        inside = positions < lengths.unsqueeze(1)
        responses[:, 1:-1] = torch.where(inside, words[:, : width - 2], 0)
        responses.scatter_(1, (lengths + 1).unsqueeze(1), Vocabulary.eos_id)
        utt_lengths = lengths + 2
        x = self.utt_encoder(responses, utt_lengths)
        mu_q, logvar_q = self.recognition(c, x)
        mu_p, logvar_p = self.prior_net(c)
        h0 = self.decoder.initial_state(c, mu_q)
        token_nll, _, owner = self.decoder.token_nll(h0, responses, utt_lengths)
        nll = token_nll.new_zeros(b).index_add_(0, owner, token_nll)
        kl = gaussian_kl(mu_q, logvar_q, mu_p, logvar_p)
        return nll, kl, (lengths + 1).to(nll.dtype)

    def _decode(
        self,
        h: torch.Tensor,
        max_length: int,
        decoding: str = "greedy",
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        options: DecodingOptions = PLAIN,
        stop: Callable[[], bool] | None = None,
        h_empty: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode from the initial states ``h`` [B, H]: the tokens [B, max_length] (words, then
        ``</s>`` unless cut at max_length, then 0), the lengths [B] (words, excluding ``</s>``)
        and the sum of the chosen tokens' log-probabilities [B]. ``h_empty`` [B, H], the same
        z's states after an empty conversation, is fed the same tokens for
        ``options.anti_lm_weight``. Call it without gradients."""
        b = h.shape[0]
        bos, eos = Vocabulary.bos_id, Vocabulary.eos_id
        out = torch.zeros((b, max_length), dtype=torch.long, device=h.device)
        log_probs = torch.zeros(b, device=h.device)
        lengths = torch.full((b,), max_length, dtype=torch.long, device=h.device)
        # Only rows still decoding are computed: most responses end long before max_length.
        rows = torch.arange(b, device=h.device)
        token = torch.full((b,), bos, dtype=torch.long, device=h.device)
        # <pad>, <s> and <d> are never a next word; <unk> is, as in training, unless the options
        # say otherwise.
        banned_ids = [Vocabulary.pad_id, bos, Vocabulary.bod_id]
        if not options.allow_unk:
            banned_ids.append(Vocabulary.unk_id)
        banned = torch.tensor(banned_ids, device=h.device)
        for t in range(max_length):
            if stop is not None and stop():
                break
            if h_empty is None:
                h = self.decoder.step(token, h)
                logits = self.decoder.logits(h)
            else:  # both contexts' rows in one step: one call's overhead
                both = self.decoder.step(torch.cat([token, token]), torch.cat([h, h_empty]))
                h, h_empty = both.chunk(2)
                logits, logits_empty = self.decoder.logits(both).chunk(2)
            logits[:, banned] = float("-inf")
            logp = F.log_softmax(logits, dim=-1)
            if h_empty is not None:  # MMI-antiLM: log p(y|c,z) - λ log p(y|empty,z)
                generic = F.log_softmax(logits_empty, dim=-1)
                generic[:, banned] = 0.0  # banned stays -inf (-inf minus -inf would be NaN)
                logits = logp - options.anti_lm_weight * generic
            if not options.is_plain:  # logits may change from here on, logp stays the model's
                _restrict(logits, out[rows, :t], options)
            if decoding == "greedy":
                # The plain argmax is logp's, as it always was (logits' can differ at float ties).
                token = (logp if options.is_plain else logits).argmax(dim=-1)
            else:
                scores = logits / temperature  # top-k/top-p of the tempered softmax, as in HF
                if options.top_k:
                    keep_top_k(scores, options.top_k)
                keep_top_p(scores, options.top_p)
                probs = F.softmax(scores, dim=-1)
                token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            log_probs[rows] += logp.gather(1, token.unsqueeze(1)).squeeze(1)
            out[rows, t] = token
            ended = token == eos
            lengths[rows[ended]] = t
            if ended.all():
                break
            keep = ~ended
            rows, token, h = rows[keep], token[keep], h[keep]
            if h_empty is not None:
                h_empty = h_empty[keep]
        return out, lengths, log_probs


def _restrict(logits: torch.Tensor, history: torch.Tensor, options: DecodingOptions) -> None:
    """``options``' penalties on the logits [R, V] of the rows still decoding, whose words so far
    are ``history`` [R, t]. In place."""
    if options.repetition_penalty != 1.0:
        penalize_repetitions(logits, history, options.repetition_penalty)
    if options.no_repeat_ngram_size:
        block_repeated_ngrams(logits, history, options.no_repeat_ngram_size)


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``name`` (one of DEVICES) as a device: ``auto`` is the GPU when torch sees one, else the
    CPU. ``cuda`` where torch sees no GPU is refused (ValueError), not left to fail later."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda, but torch sees no CUDA device; use auto or cpu")
    return torch.device(name)


DECODE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def decode_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """``name`` (a key of DECODE_DTYPES, or "auto": :func:`fast_decode_dtype`) as a dtype."""
    if name == "auto":
        return fast_decode_dtype(device)
    try:
        return DECODE_DTYPES[name]
    except KeyError:
        raise ValueError(f"decode dtype must be auto or one of {list(DECODE_DTYPES)}") from None


def cpu_supports(check: str) -> bool:
    """Whether torch's CPU capability check ``check`` (``"_is_amx_tile_supported"``, ...) says
    yes. The checks are private to torch.cpu: one missing in this torch release means no."""
    return bool(getattr(torch.cpu, check, lambda: False)())


def fast_decode_dtype(device: torch.device | str) -> torch.dtype:
    """The fastest dtype for the vocabulary projection on ``device`` (``set_decode_dtype``).

    bfloat16 where the hardware computes it natively (a CPU with AVX512-BF16 or AMX, a CUDA GPU
    with bf16 support); float16 on older GPUs; float32 elsewhere, where bf16 is only emulated
    and slower than float32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        if cpu_supports("_is_avx512_bf16_supported") or cpu_supports("_is_amx_tile_supported"):
            return torch.bfloat16
    return torch.float32


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
