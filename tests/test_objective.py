"""The training objective, term by term, against a computation written out here.

The model (``tiny`` preset, fixed seed) runs on a hand-built batch of three dialogs; every term
of its output is recomputed independently: the Gaussians with ``torch.distributions``, the
decoder's likelihood and the bag-of-words loss with loops over the tokens, the batch
normalisation of Zhu et al.'s Eq. 5 from its formula. The encoders are not under test here
(tests/test_model.py compares their two paths), so their outputs are the reference's inputs.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from eval.latent import bn_kl_lower_bound
from eval.metrics import ResponseMetrics
from eval.switchboard import Gathered, model_metrics
from model.batch import dialog_batch
from model.cvae import CVAEOutput, DialogCVAE, LikelihoodTotals, ModelConfig
from model.vocab import Vocabulary
from training.switchboard import Run, TrainConfig, validate

DIALOGS = [
    [
        ("A", "do you have any pets".split()),
        ("B", "yes two dogs".split()),
        ("A", "what kind of dogs".split()),
    ],
    [
        ("A", "i like music".split()),
        ("B", "me too".split()),
        ("B", "mostly jazz and some rock".split()),
        ("A", "uh-huh".split()),
    ],
    [
        ("B", "it is raining again".split()),
        ("A", "yes".split()),
    ],
]
SEED = 1234
EXAMPLES = sum(len(d) for d in DIALOGS)  # every utterance is a response once


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.build([t for d in DIALOGS for _, t in d])


@pytest.fixture(scope="module")
def batch(vocab):
    return dialog_batch(DIALOGS, vocab)


def make_model(vocab, variant: str, **overrides) -> DialogCVAE:
    torch.manual_seed(0)
    config = ModelConfig.preset("tiny", variant=variant, vocab_size=len(vocab), **overrides)
    model = DialogCVAE(config)
    if model.recognition.mu_bn is not None:  # a learnt shift away from its initial 0
        with torch.no_grad():
            model.recognition.mu_bn.bias.copy_(torch.linspace(-0.8, 0.8, config.latent_dim))
    return model.train()


def reference_terms(model: DialogCVAE, batch, kl_weight: float, seed: int) -> dict:
    """Every term of the objective, recomputed from the formulas (one example at a time)."""
    cfg = model.config
    c = model.encode_context(batch)
    x = model.utt_encoder(
        batch.utterances[batch.response_index], batch.utt_lengths[batch.response_index]
    )
    raw = F.linear(torch.cat([c, x], dim=-1), model.recognition.proj.weight,
                   model.recognition.proj.bias)  # fmt: skip
    mu_q, logvar_q = raw[:, : cfg.latent_dim], raw[:, cfg.latent_dim :]
    if cfg.use_bn:
        # Eq. 5: mu_q = gamma * (mu - E[mu]) / sqrt(Var[mu] + eps) + beta over the batch, with the
        # constant gamma of the config (not the module's weight) and the learnt beta.
        bn = model.recognition.mu_bn
        mean, var = mu_q.mean(dim=0), mu_q.var(dim=0, unbiased=False)
        mu_q = cfg.bn_gamma * (mu_q - mean) / torch.sqrt(var + bn.eps) + bn.bias
    first, _, last = model.prior_net.mlp
    hidden = torch.tanh(F.linear(c, first.weight, first.bias))
    prior = F.linear(hidden, last.weight, last.bias)
    mu_p, logvar_p = prior[:, : cfg.latent_dim], prior[:, cfg.latent_dim :]

    q = Normal(mu_q, torch.exp(0.5 * logvar_q))
    p = Normal(mu_p, torch.exp(0.5 * logvar_p))
    standard = Normal(torch.zeros_like(mu_p), torch.ones_like(mu_p))
    kl = kl_divergence(q, p).sum(-1)
    prior_kl = kl_divergence(p, standard).sum(-1)
    # z ~ q(z|c,x), reparameterised with the standard-normal draws the model makes from ``seed``
    torch.manual_seed(seed)
    eps = torch.randn(mu_q.shape)
    z = mu_q + eps * q.stddev

    dec = model.decoder
    responses = batch.responses()
    lengths = batch.utt_lengths[batch.response_index]
    nll, bow, tokens = [], [], []
    for i in range(responses.shape[0]):
        ids = responses[i, : lengths[i]].tolist()  # <s> w1 .. wn </s>
        total = torch.zeros(())
        h = F.linear(torch.cat([c[i], z[i]]), dec.init_state.weight, dec.init_state.bias)
        for prev, target in zip(ids[:-1], ids[1:], strict=True):
            h = gru_step(dec.rnn, dec.embedding.weight[prev], h)
            log_p = torch.log_softmax(F.linear(h, dec.out.weight, dec.out.bias), dim=-1)
            total = total - log_p[target]
        nll.append(total)
        tokens.append(len(ids) - 1)
        if model.bow_head is not None:
            log_p = torch.log_softmax(model.bow_head(torch.cat([c[i], z[i]])), dim=-1)
            bow.append(-sum(log_p[t] for t in ids[1:]))
        else:
            bow.append(torch.zeros(()))
    nll_t, bow_t = torch.stack(nll), torch.stack(bow)
    loss = nll_t + kl_weight * kl
    if cfg.use_bow:
        loss = loss + cfg.bow_weight * bow_t
    if cfg.use_bn:
        loss = loss + cfg.prior_kl_weight * prior_kl
    return {
        "nll": nll_t,
        "kl": kl,
        "prior_kl": prior_kl,
        "bow": bow_t,
        "tokens": torch.tensor(tokens, dtype=torch.float32),
        "per_example": loss,
        "mu_q": mu_q,
    }


def gru_step(rnn: torch.nn.GRU, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """One step of PyTorch's GRU (its documented equations), written out."""
    w_ir, w_iz, w_in = rnn.weight_ih_l0.chunk(3)
    w_hr, w_hz, w_hn = rnn.weight_hh_l0.chunk(3)
    b_ir, b_iz, b_in = rnn.bias_ih_l0.chunk(3)
    b_hr, b_hz, b_hn = rnn.bias_hh_l0.chunk(3)
    r = torch.sigmoid(w_ir @ x + b_ir + w_hr @ h + b_hr)
    u = torch.sigmoid(w_iz @ x + b_iz + w_hz @ h + b_hz)
    n = torch.tanh(w_in @ x + b_in + r * (w_hn @ h + b_hn))
    return (1 - u) * n + u * h


def close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("variant", ["cvae", "cvae-bow", "bn-cvae"])
def test_every_term_of_the_objective_equals_the_written_out_computation(vocab, batch, variant):
    model = make_model(vocab, variant)
    torch.manual_seed(SEED)
    out = model(batch, kl_weight=0.3)
    with torch.no_grad():
        ref = reference_terms(model, batch, kl_weight=0.3, seed=SEED)
    assert out.nll.shape == (EXAMPLES,)
    for name in ("nll", "kl", "prior_kl", "bow", "tokens"):
        close(getattr(out, name).detach(), ref[name])
    close(out.loss.detach(), ref["per_example"].mean())
    # the tokens are the words and </s> of each response
    assert out.tokens.tolist() == [len(t) + 1 for d in DIALOGS for _, t in d]
    if variant == "cvae-bow":
        assert (out.bow > 0).all()
    else:
        assert out.bow.tolist() == [0.0] * EXAMPLES


def test_weights_of_the_terms(vocab, batch):
    """bow_weight, prior_kl_weight (and its per-call override) scale their terms."""
    bow = make_model(vocab, "cvae-bow", bow_weight=2.5)
    torch.manual_seed(SEED)
    o = bow(batch, kl_weight=0.5)
    close(o.loss.detach(), (o.nll + 0.5 * o.kl + 2.5 * o.bow).mean().detach())
    bn = make_model(vocab, "bn-cvae", prior_kl_weight=0.7)
    torch.manual_seed(SEED)
    o = bn(batch, kl_weight=0.5)
    close(o.loss.detach(), (o.nll + 0.5 * o.kl + 0.7 * o.prior_kl).mean().detach())
    torch.manual_seed(SEED)
    o = bn(batch, kl_weight=0.5, prior_kl_weight=0.2)
    close(o.loss.detach(), (o.nll + 0.5 * o.kl + 0.2 * o.prior_kl).mean().detach())


@pytest.mark.parametrize("variant", ["cvae", "bn-cvae"])
def test_training_z_is_drawn_from_the_posterior(vocab, batch, variant):
    """The reconstruction term's gradient reaches the recognition network (z ~ q(z|c,x)) and
    not the prior network (which would be z ~ p(z|c))."""
    model = make_model(vocab, variant)
    torch.manual_seed(SEED)
    out = model(batch, kl_weight=1.0)
    recognition = [model.recognition.proj.weight, model.recognition.proj.bias]
    if model.recognition.mu_bn is not None:
        recognition.append(model.recognition.mu_bn.bias)
    prior = list(model.prior_net.parameters())
    grads = torch.autograd.grad(out.nll.sum(), recognition + prior, allow_unused=True)
    for g in grads[: len(recognition)]:
        assert g is not None and g.abs().sum() > 0
    for g in grads[len(recognition) :]:
        assert g is None or torch.count_nonzero(g) == 0


def test_eq5_fixed_gamma_batch_norm_on_the_posterior_mean(vocab, batch):
    """Eq. 5: in training the posterior means are normalised over the batch to scale gamma
    (a constant that gets no gradient) and shift beta; in evaluation the running statistics
    are used instead."""
    model = make_model(vocab, "bn-cvae", bn_gamma=0.3)
    bn = model.recognition.mu_bn
    assert bn.weight.requires_grad is False
    assert bn.weight.tolist() == pytest.approx([0.3] * model.config.latent_dim)
    torch.manual_seed(SEED)
    out = model(batch)
    with torch.no_grad():
        ref = reference_terms(model, batch, kl_weight=1.0, seed=SEED)
    close(out.extras["mu_q"].detach(), ref["mu_q"])
    mu = out.extras["mu_q"].detach()
    close(mu.mean(0), bn.bias.detach())
    # the batch's biased std is gamma * sqrt(var / (var + eps)) of the unnormalised means
    raw_var = raw_means(model, batch).var(0, unbiased=False)
    close(mu.std(0, unbiased=False), 0.3 * torch.sqrt(raw_var / (raw_var + bn.eps)))

    model.eval()  # running statistics: the same input no longer gets the batch's moments
    with torch.no_grad():
        mu_eval, _ = model.posterior(batch)
        raw = raw_means(model, batch)
        expected = 0.3 * (raw - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) + bn.bias
    close(mu_eval, expected)


@torch.no_grad()
def raw_means(model: DialogCVAE, batch) -> torch.Tensor:
    """The recognition network's posterior means before the batch normalisation."""
    c = model.encode_context(batch)
    r = batch.response_index
    x = model.utt_encoder(batch.utterances[r], batch.utt_lengths[r])
    return model.recognition.proj(torch.cat([c, x], -1))[:, : model.config.latent_dim]


def test_eq6_lower_bound_on_the_expected_kl(vocab, batch):
    """Eq. 6: with BN on the means, E_x[KL(q(z|x) || N(0,I))] >= sum_i (gamma^2 + beta_i^2) / 2.
    The bound's value, and that the batch's expected KL is above it by exactly the variance
    terms (exp(logvar) - logvar - 1 >= 0) and BN's eps."""
    gamma = 0.4
    model = make_model(vocab, "bn-cvae", bn_gamma=gamma)
    beta = model.recognition.mu_bn.bias.detach()
    expected = sum(0.5 * (gamma**2 + b**2) for b in beta.tolist())
    assert bn_kl_lower_bound(gamma, beta) == pytest.approx(expected, rel=1e-12)
    assert bn_kl_lower_bound(0.5, torch.tensor([1.0, -1.0, 0.0])) == pytest.approx(
        (0.25 + 1) / 2 + (0.25 + 1) / 2 + 0.25 / 2, rel=1e-12
    )
    torch.manual_seed(SEED)
    with torch.no_grad():
        out = model(batch)
    mu, logvar = out.extras["mu_q"].double(), out.extras["logvar_q"].double()
    q = Normal(mu, torch.exp(0.5 * logvar))
    expected_kl = kl_divergence(q, Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)
    variance_terms = 0.5 * (logvar.exp() - logvar - 1).sum(-1).mean()
    mean_terms = 0.5 * mu.pow(2).mean(0).sum()
    assert float(expected_kl.mean()) == pytest.approx(float(mean_terms + variance_terms), rel=1e-9)
    # E_x[mu_i^2] = Var + mean^2 = gamma^2 var / (var + eps) + beta_i^2: the bound but for BN's eps
    raw_var = raw_means(model, batch).double().var(0, unbiased=False)
    eps = model.recognition.mu_bn.eps
    shrunk = 0.5 * (gamma**2 * raw_var / (raw_var + eps) + beta.double() ** 2).sum()
    assert float(mean_terms) == pytest.approx(float(shrunk), rel=1e-5)
    assert float(mean_terms) == pytest.approx(expected, rel=2e-3)
    assert float(expected_kl.mean()) >= expected * (1 - 1e-3)


def test_eval_reports_the_eq6_bound_of_the_model(vocab, batch):
    model = make_model(vocab, "bn-cvae", bn_gamma=0.4).eval()
    gathered = Gathered()
    with torch.no_grad():
        out = model(batch)
    gathered.totals.add(out)
    gathered.mus.append(out.extras["mu_q"].double())
    gathered.logvars.append(out.extras["logvar_q"].double())
    gathered.examples = EXAMPLES
    metrics = model_metrics(model, gathered, ResponseMetrics().result(), seed=0)
    beta = model.recognition.mu_bn.bias.detach().double()
    assert metrics["kl_lower_bound"] == pytest.approx(float(0.5 * (0.16 + beta**2).sum()))
    mu, logvar = gathered.mus[0], gathered.logvars[0]
    std_kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(-1).mean()
    assert metrics["kl_prior_standard"] == pytest.approx(float(std_kl), rel=1e-9)


# --- perplexities ---------------------------------------------------------------------------


def output(nll, kl, tokens, prior_kl=None) -> CVAEOutput:
    t = torch.tensor
    zeros = torch.zeros(len(nll))
    prior = zeros if prior_kl is None else t(prior_kl)
    return CVAEOutput(loss=t(0.0), nll=t(nll), tokens=t(tokens), kl=t(kl), prior_kl=prior,
                      bow=zeros, unlikelihood=zeros, sequence_unlikelihood=zeros)  # fmt: skip


def test_ppl_and_elbo_ppl_from_sums_over_tokens():
    totals = LikelihoodTotals()
    totals.add(output([2.0, 3.0], [0.5, 0.25], [4.0, 6.0], prior_kl=[8.0, 2.0]))
    totals.add(output([7.0], [1.0], [5.0], prior_kl=[0.5]))
    assert (totals.nll, totals.kl, totals.tokens, totals.examples) == (12.0, 1.75, 15.0, 3)
    assert totals.prior_kl == 10.5
    assert totals.ppl == pytest.approx(math.exp(12.0 / 15.0), rel=1e-12)
    assert totals.elbo_ppl == pytest.approx(math.exp((12.0 + 1.75) / 15.0), rel=1e-12)


def test_evaluation_reports_elbo_ppl_with_its_kl(vocab, batch):
    model = make_model(vocab, "bn-cvae").eval()
    gathered = Gathered()
    torch.manual_seed(SEED)
    with torch.no_grad():
        out = model(batch)
    gathered.totals.add(out)
    gathered.mus.append(out.extras["mu_q"].double())
    gathered.logvars.append(out.extras["logvar_q"].double())
    gathered.examples = EXAMPLES
    metrics = model_metrics(model, gathered, ResponseMetrics().result(), seed=0)
    nll, kl, tokens = out.nll.double().sum(), out.kl.double().sum(), out.tokens.double().sum()
    assert kl > 0.1  # so that leaving it out shows
    assert metrics["ppl"] == pytest.approx(float(torch.exp(nll / tokens)), rel=1e-9)
    assert metrics["elbo_ppl"] == pytest.approx(float(torch.exp((nll + kl) / tokens)), rel=1e-9)
    assert metrics["kl"] == pytest.approx(float(kl / EXAMPLES), rel=1e-9)


def test_validation_reports_elbo_ppl_with_its_kl(vocab, batch):
    model = make_model(vocab, "bn-cvae")
    v = validate(model, [batch], torch.device("cpu"), seed=SEED)
    assert model.training  # validation leaves the mode as it was
    model.eval()
    torch.manual_seed(SEED)
    with torch.no_grad():
        out = model(batch)
    nll, kl, tokens = (float(t.double().sum()) for t in (out.nll, out.kl, out.tokens))
    assert v["valid_nll"] == pytest.approx(nll / EXAMPLES, rel=1e-9)
    assert v["valid_kl"] == pytest.approx(kl / EXAMPLES, rel=1e-9)
    assert v["valid_loss"] == pytest.approx((nll + kl) / EXAMPLES, rel=1e-9)
    assert v["valid_ppl"] == pytest.approx(math.exp(nll / tokens), rel=1e-9)
    assert v["valid_elbo_ppl"] == pytest.approx(math.exp((nll + kl) / tokens), rel=1e-9)


# --- KL annealing ---------------------------------------------------------------------------


@pytest.fixture
def run(synthetic_prepared, tmp_path):
    cfg = TrainConfig(data=str(synthetic_prepared), out=str(tmp_path / "run"), preset="tiny",
                      kl_anneal_steps=8, log_every=2, threads=1)  # fmt: skip
    r = Run(cfg)
    r.resume()
    return r


def test_the_kl_weight_rises_linearly_to_one_over_the_annealing_steps(run):
    weights = {}
    for step in (0, 1, 2, 4, 7, 8, 9, 100):
        run.progress.step = step
        weights[step] = run.kl_weight()
    assert weights == {0: 0.0, 1: 0.125, 2: 0.25, 4: 0.5, 7: 0.875, 8: 1.0, 9: 1.0, 100: 1.0}


@pytest.mark.parametrize("anneal_prior_kl", [False, True])
def test_each_training_step_uses_the_annealed_weight(run, anneal_prior_kl):
    """What the model is called with at steps 0..9, and what the train records log."""
    run.cfg.anneal_prior_kl = anneal_prior_kl
    calls = []
    model = run.ddp

    def recording(batch, kl_weight, prior_kl_weight):
        calls.append((kl_weight, prior_kl_weight))
        return model(batch, kl_weight=kl_weight, prior_kl_weight=prior_kl_weight)

    run.ddp = recording
    batches = iter(run.batches.epoch(0))
    entries = [run.step(next(batches)) for _ in range(10)]
    ramp = [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.0]
    assert [w for w, _ in calls] == ramp
    assert [p for _, p in calls] == (ramp if anneal_prior_kl else [1.0] * 10)
    logged = [e["kl_weight"] for e in entries if e is not None]
    assert logged == [0.125, 0.375, 0.625, 0.875, 1.0]  # the last step of each window of 2
