"""The BN-CVAE's gamma modes (fixed: Zhu et al.'s; learned: DU-VAE's per-dimension gamma at a
fixed RMS) and DU-VAE's dropout on the posterior variance."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eval.latent import bn_kl_lower_bound
from model.batch import dialog_batch
from model.checkpoint import load_config, load_pretrained, save_pretrained
from model.config import ModelConfig
from model.cvae import VAR_FLOOR, DialogCVAE, RMSScaledBatchNorm, gaussian_kl
from model.vocab import Vocabulary
from tests.fixtures.fixed_gamma import fixture_path, kernel_family, reference_outputs
from training.switchboard import main as train_main

ROOT = Path(__file__).resolve().parents[1]
WORDS = [f"w{i}" for i in range(60)]


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.build([WORDS])


def dialogs(n: int = 6, seed: int = 0) -> list:
    rng = random.Random(seed)
    return [
        [
            (rng.choice("AB"), [rng.choice(WORDS) for _ in range(rng.randint(1, 10))])
            for _ in range(rng.randint(4, 16))
        ]
        for _ in range(n)
    ]


def make_model(vocab, **kw) -> DialogCVAE:
    torch.manual_seed(0)
    config = ModelConfig.preset("tiny", variant="bn-cvae", vocab_size=len(vocab), **kw)
    return DialogCVAE(config)


def train_steps(model, batch, steps: int, lr: float = 0.05) -> None:
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        torch.manual_seed(step)
        opt.zero_grad()
        model(batch).loss.backward()
        opt.step()


def rms(t: torch.Tensor) -> float:
    return float(t.detach().double().pow(2).mean().sqrt())


# --- fixed: today's model, bit for bit ------------------------------------------------------


def test_fixed_mode_reproduces_mains_outputs_bit_for_bit():
    """Every tensor of tests/fixtures/fixed_gamma.py (a training pass and its gradients, three
    Adam steps, an eval pass, greedy samples, the weights) equals what main's code wrote."""
    fixture = fixture_path()
    if not fixture.exists():  # pinned for AVX2, AVX512 and AVX512 with AMX (fixed_gamma.py)
        pytest.skip(f"no outputs pinned for {kernel_family()} kernels")
    pinned = load_file(str(fixture))
    now = reference_outputs()
    assert sorted(now) == sorted(pinned)
    differ = [k for k in pinned if not torch.equal(now[k], pinned[k])]
    assert not differ, differ


def test_defaults_are_the_papers_model():
    config = ModelConfig()
    assert config.bn_gamma_mode == "fixed" and config.posterior_var_dropout == 0.0


def test_bn_gamma_of_each_variant(vocab):
    for variant in ("cvae", "cvae-bow"):
        config = ModelConfig.preset("tiny", variant=variant, vocab_size=len(vocab))
        assert DialogCVAE(config).recognition.bn_gamma() is None
    assert torch.equal(
        make_model(vocab, bn_gamma=0.3).recognition.bn_gamma(), torch.full((8,), 0.3)
    )
    learned = make_model(vocab, bn_gamma=0.3, bn_gamma_mode="learned").recognition
    assert torch.equal(learned.bn_gamma(), learned.mu_bn.gamma())


# --- learned: gamma per dimension at RMS bn_gamma -----------------------------------------


def test_learned_gamma_keeps_its_rms_at_the_target_after_many_steps(vocab):
    model = make_model(vocab, bn_gamma=0.3, bn_gamma_mode="learned")
    bn = model.recognition.mu_bn
    assert isinstance(bn, RMSScaledBatchNorm)
    train_steps(model, dialog_batch(dialogs(), vocab), steps=120)
    gamma = model.recognition.bn_gamma().detach()
    assert rms(gamma) == pytest.approx(0.3, rel=1e-6, abs=0)
    # gamma did learn: the dimensions differ, and the free weight's own RMS has moved away
    assert float(gamma.std()) > 0.01
    assert abs(rms(bn.weight) - 0.3) > 1e-3


def test_learned_gamma_gets_gradient_and_fixed_gets_none(vocab):
    batch = dialog_batch(dialogs(), vocab)
    learned = make_model(vocab, bn_gamma=0.3, bn_gamma_mode="learned")
    fixed = make_model(vocab, bn_gamma=0.3)
    for model in (learned, fixed):
        model.train()
        model(batch).loss.backward()
    grad = learned.recognition.mu_bn.weight.grad
    assert learned.recognition.mu_bn.weight.requires_grad
    assert grad is not None and float(grad.abs().sum()) > 0
    # the gradient has no part along gamma itself: the rescaling makes the loss blind to it
    weight = learned.recognition.mu_bn.weight.detach()
    cosine = float((grad * weight).sum() / (grad.norm() * weight.norm()))
    assert abs(cosine) < 1e-5
    assert not fixed.recognition.mu_bn.weight.requires_grad
    assert fixed.recognition.mu_bn.weight.grad is None
    assert fixed.recognition.mu_bn.bias.grad is not None  # beta stays learnable in both
    assert learned.recognition.mu_bn.bias.grad is not None


def test_learned_gamma_starts_as_the_fixed_model(vocab):
    """Initialised at bn_gamma in every dimension (DU-VAE's init), the learned model's first
    forward pass is the fixed model's."""
    batch = dialog_batch(dialogs(), vocab)
    learned = make_model(vocab, bn_gamma=0.3, bn_gamma_mode="learned").train()
    fixed = make_model(vocab, bn_gamma=0.3).train()
    torch.manual_seed(1)
    a = learned(batch)
    torch.manual_seed(1)
    b = fixed(batch)
    torch.testing.assert_close(a.extras["mu_q"], b.extras["mu_q"], rtol=1e-6, atol=1e-6)


def test_learned_gamma_keeps_running_statistics_as_batch_norm_does(vocab):
    """RMSScaledBatchNorm is nn.BatchNorm1d with gamma() as its scale: the same running mean
    and variance (momentum 0.1, unbiased variance), batches counted, and in eval mode the
    normalization by the running statistics."""
    torch.manual_seed(0)
    x = torch.randn(16, 8) * 3 + 1
    ours, reference = RMSScaledBatchNorm(8, 0.3), torch.nn.BatchNorm1d(8)
    with torch.no_grad():
        ours.weight.copy_(torch.linspace(0.1, 0.8, 8))
        reference.weight.copy_(ours.gamma())
    for _ in range(3):
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=1e-6)
    assert int(ours.num_batches_tracked) == int(reference.num_batches_tracked) == 3
    mean = x.mean(0)
    torch.testing.assert_close(ours.running_mean, mean * (1 - 0.9**3), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.running_var, reference.running_var, rtol=0, atol=0)
    ours.eval(), reference.eval()
    torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=1e-6)


def test_eq6_bound_from_the_learned_gamma(vocab):
    """Zhu et al. (2020) Eq. 6. KL(q(z|x) || N(0,I)) = 1/2 sum_i (mu_i^2 + sigma_i^2 - log
    sigma_i^2 - 1) >= 1/2 sum_i mu_i^2, since s - log s - 1 >= 0 for every s > 0. With BN on
    mu, mu_i has mean beta_i and (biased) variance gamma_i^2 over a batch, so E[mu_i^2] =
    gamma_i^2 + beta_i^2 and

        E[KL] >= 1/2 sum_i (gamma_i^2 + beta_i^2) = n/2 (RMS(gamma)^2 + mean_i beta_i^2).

    The learned gamma's RMS is the fixed model's gamma, so the bound is the fixed model's for
    the same beta. Under batch statistics the first inequality's right side is attained by
    1/2 sum_i E[mu_i^2]; at evaluation (running statistics) E[KL] stays at or above it."""
    model = make_model(vocab, bn_gamma=0.3, bn_gamma_mode="learned")
    train_batch = dialog_batch(dialogs(8), vocab)
    train_steps(model, train_batch, steps=150, lr=0.02)
    gamma, beta = model.recognition.bn_gamma(), model.recognition.mu_bn.bias
    n = model.config.latent_dim
    bound = bn_kl_lower_bound(gamma, beta)
    by_rms = n / 2 * (0.3**2 + float(beta.detach().double().pow(2).mean()))
    assert bound == pytest.approx(by_rms, rel=1e-6)
    assert bound > n / 2 * 0.3**2  # beta moved: the bound rose above the fixed part

    # batch statistics: 1/2 sum_i E[mu_i^2] is the bound (up to BN's eps)
    with torch.no_grad():
        mu, _ = model.train().posterior(train_batch)
    assert 0.5 * float(mu.double().pow(2).mean(0).sum()) == pytest.approx(bound, rel=1e-3)

    # evaluation: the expected KL over the data is above the bound
    model.eval()
    with torch.no_grad():
        posteriors = [model.posterior(dialog_batch(dialogs(8, seed), vocab)) for seed in range(3)]
    mus, logvars = (torch.cat([p[i] for p in posteriors]).double() for i in (0, 1))
    kl = float(gaussian_kl(mus, logvars).mean())
    assert kl >= bound


def test_learned_gamma_checkpoint_round_trip(vocab, tmp_path):
    model = make_model(vocab, bn_gamma=0.3, bn_gamma_mode="learned", posterior_var_dropout=0.2)
    batch = dialog_batch(dialogs(), vocab)
    train_steps(model, batch, steps=20)
    save_pretrained(model, vocab, tmp_path / "ck")
    config, _ = load_config(tmp_path / "ck")
    assert config.bn_gamma_mode == "learned" and config.posterior_var_dropout == 0.2
    loaded, _ = load_pretrained(tmp_path / "ck")
    assert isinstance(loaded.recognition.mu_bn, RMSScaledBatchNorm)
    assert torch.equal(loaded.recognition.bn_gamma(), model.recognition.bn_gamma())
    assert float(loaded.recognition.bn_gamma().detach().std()) > 0.01  # the learned values, not 0.3
    model.eval()
    torch.manual_seed(3)
    a = model(batch)
    torch.manual_seed(3)
    b = loaded(batch)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.extras["logvar_q"], b.extras["logvar_q"])


def test_older_checkpoints_and_run_configs_load_as_fixed_gamma():
    """Written before these options existed: no bn_gamma_mode, no posterior_var_dropout."""
    shipped = ROOT / "checkpoints" / "bn-cvae-switchboard"
    raw = json.loads((shipped / "config.json").read_text())["model"]
    assert "bn_gamma_mode" not in raw and "posterior_var_dropout" not in raw
    model, _ = load_pretrained(shipped)
    assert model.config.bn_gamma_mode == "fixed" and model.config.posterior_var_dropout == 0
    bn = model.recognition.mu_bn
    assert type(bn) is torch.nn.BatchNorm1d and not bn.weight.requires_grad
    stored = torch.full_like(bn.weight, raw["bn_gamma"]).half().float()  # a float16 checkpoint
    assert torch.equal(model.recognition.bn_gamma(), stored)
    older = 0
    for path in sorted((ROOT / "results").glob("*.config.json")):
        raw = json.loads(path.read_text())["model"]
        if "bn_gamma_mode" in raw or "posterior_var_dropout" in raw:
            continue  # (a run recorded after the options existed: its own values)
        config = ModelConfig.from_dict(raw)
        assert config.bn_gamma_mode == "fixed" and config.posterior_var_dropout == 0, path
        older += 1
    assert older == 9  # the runs published before the options (no later run lacks them)


@pytest.mark.parametrize(
    "field, value",
    [("bn_gamma_mode", "adaptive"), ("posterior_var_dropout", 1.0),
     ("posterior_var_dropout", -0.1), ("posterior_var_dropout", "0.5")],
)  # fmt: skip
def test_bad_values_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{field: value})


# --- dropout on the posterior variance --------------------------------------------------------


def test_posterior_variance_dropout_as_du_vae_defines_it(vocab):
    """Training, KL weight 1: each variance is dropped to 0 (then floored: log VAR_FLOOR) or
    kept and scaled by 1/(1-p), plus the floor. Evaluation: floored, never dropped. While the
    KL is annealed (weight < 1): the plain posterior. The weights are the P=0 model's."""
    p = 0.5
    plain = make_model(vocab, bn_gamma=0.3)
    dropped = make_model(vocab, bn_gamma=0.3, posterior_var_dropout=p)
    batch = dialog_batch(dialogs(), vocab)
    for model in (plain, dropped):
        model.train()
    torch.manual_seed(5)
    base = plain(batch).extras["logvar_q"].detach()
    torch.manual_seed(5)
    out = dropped(batch, kl_weight=1.0).extras["logvar_q"].detach()
    kept = torch.log(base.exp() / (1 - p) + VAR_FLOOR)
    is_dropped = torch.isclose(out, torch.full_like(out, math.log(VAR_FLOOR)))
    is_kept = torch.isclose(out, kept)
    assert bool((is_dropped | is_kept).all())
    assert 0.35 < float(is_dropped.float().mean()) < 0.65

    torch.manual_seed(5)
    annealing = dropped(batch, kl_weight=0.5).extras["logvar_q"].detach()
    assert torch.equal(annealing, base)

    plain.eval()
    dropped.eval()
    torch.manual_seed(5)
    evaluated = dropped(batch).extras["logvar_q"]
    torch.manual_seed(5)
    expected = torch.log(plain(batch).extras["logvar_q"].exp() + VAR_FLOOR)
    torch.testing.assert_close(evaluated, expected, rtol=1e-6, atol=1e-6)
    # so does the posterior the evaluation and the reranking read (no KL weight given)
    _, logvar = dropped.posterior(batch)
    torch.testing.assert_close(logvar, expected, rtol=1e-6, atol=1e-6)


def test_training_cli_takes_both_options_and_resume_keeps_them(synthetic_prepared, tmp_path):
    run = tmp_path / "run"
    args = ["--data", str(synthetic_prepared), "--out", str(run), "--preset", "tiny",
            "--threads", "1", "--segment-size", "4", "--batch-segments", "4",
            "--kl-anneal-steps", "10", "--eval-every", "10", "--log-every", "5"]  # fmt: skip
    learned = ["--model.bn-gamma", "0.3", "--model.bn-gamma-mode", "learned",
               "--model.posterior-var-dropout", "0.3"]  # fmt: skip
    assert train_main([*args, *learned, "--max-steps", "20"]) == 0
    resolved = json.loads((run / "config.json").read_text())["model"]
    assert resolved["bn_gamma_mode"] == "learned" and resolved["posterior_var_dropout"] == 0.3
    assert train_main([*args, "--resume", "--max-steps", "30"]) == 0
    model, _ = load_pretrained(run / "last")
    assert model.config.bn_gamma_mode == "learned"
    assert rms(model.recognition.bn_gamma()) == pytest.approx(0.3, rel=1e-6)
    assert json.loads((run / "summary.json").read_text())["step"] == 30
