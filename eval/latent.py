"""Diagnostics of the latent variable (pure tensor functions, no model needed).

All take the posterior parameters ``mu``, ``logvar`` of shape ``[N, d]`` collected over a data
set (one row per example) and compute in float64.

* :func:`active_units` (Burda et al. 2016; He et al. 2019): a dimension is active if
  ``Cov_x(E_q(z|x)[z_d]) = Var_x(mu_d) > 0.01`` (unbiased variance over the examples, as in
  He et al.'s ``calc_au``).
* :func:`mutual_information` (Hoffman & Johnson 2016; Zhu et al. 2020 Eq. 13):
  ``I_q = E_x[KL(q(z|x)||p(z))] - KL(q(z)||p(z)) = E_x E_q(z|x)[log q(z|x)] - E_q(z)[log q(z)]``,
  estimated as in He et al. 2019 (``calc_mi``): the first term in closed form (negative entropy
  of a diagonal Gaussian), the second by drawing one ``z ~ q(z|x_i)`` per example and evaluating
  the aggregate posterior ``q(z) ≈ (1/N) Σ_j q(z|x_j)`` as the mixture over *all N examples
  given* (He et al. use the mixture over each mini-batch; the whole-set mixture has less
  bias). The estimate is at most ``log N``.
* :func:`bn_kl_lower_bound` (Zhu et al. 2020 Eq. 6): KL(q(z|x)||N(0, I)) = 1/2 Σ_i (μ_i² + σ_i²
  - log σ_i² - 1) >= 1/2 Σ_i μ_i² (s - log s - 1 >= 0), and with the posterior means
  batch-normalised to scales ``γ_i`` and shifts ``β_i``, E_x[μ_i²] = γ_i² + β_i², so
  ``E_x[KL(q(z|x)||N(0, I))] >= Σ_i (γ_i² + β_i²) / 2`` (``= n(RMS(γ)² + mean β²)/2``: one
  fixed γ, or learned γ_i held at RMS γ, give the same bound for the same β).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def posterior_mean_variance(mu: Tensor) -> Tensor:
    """``Var_x(E_q[z_d])`` per dimension (unbiased; 0 for a single example)."""
    mu = mu.detach().double()
    if mu.shape[0] < 2:
        return torch.zeros(mu.shape[1], dtype=torch.float64)
    return mu.var(dim=0, unbiased=True)


def active_units(mu: Tensor, threshold: float = 0.01) -> int:
    """Number of latent dimensions whose posterior mean varies over the data by > threshold."""
    return int((posterior_mean_variance(mu) > threshold).sum())


def mutual_information(
    mu: Tensor,
    logvar: Tensor,
    generator: torch.Generator | None = None,
    chunk_size: int = 1024,
) -> float:
    """Monte Carlo estimate of I_q(x; z) in nats (see the module docstring)."""
    mu = mu.detach().double()
    logvar = logvar.detach().double()
    if mu.shape != logvar.shape or mu.dim() != 2:
        raise ValueError(
            f"mu and logvar must both be [N, d], got {tuple(mu.shape)}, {tuple(logvar.shape)}"
        )
    n, d = mu.shape
    if n == 0:
        raise ValueError("mutual information needs at least one example")
    log2pi = math.log(2.0 * math.pi)
    # E_{q(z|x)} log q(z|x) = -d/2 log(2π) - 1/2 Σ (1 + logvar)
    neg_entropy = (-0.5 * d * log2pi - 0.5 * (1.0 + logvar).sum(-1)).mean()
    noise = torch.randn(mu.shape, generator=generator, dtype=torch.float64)
    z = mu + (0.5 * logvar).exp() * noise  # one sample per example
    inv_var = (-logvar).exp()  # [N, d]
    # log N(z; mu_j, var_j) = -1/2 Σ z²/v + Σ z mu/v - 1/2 Σ mu²/v - 1/2 (d log 2π + Σ logvar)
    const = -0.5 * (d * log2pi + logvar.sum(-1)) - 0.5 * (mu.pow(2) * inv_var).sum(-1)  # [N]
    mu_inv_var = mu * inv_var
    log_qz = []
    for start in range(0, n, chunk_size):
        zc = z[start : start + chunk_size]
        log_density = -0.5 * zc.pow(2) @ inv_var.T + zc @ mu_inv_var.T + const  # [M, N]
        log_qz.append(torch.logsumexp(log_density, dim=1) - math.log(n))
    return float(neg_entropy - torch.cat(log_qz).mean())


def bn_kl_lower_bound(gamma: float | Tensor, beta: Tensor) -> float:
    """Σ_i (γ_i² + β_i²) / 2: the lower bound of E_x[KL(q||N(0,I))] with BN on the means
    (Eq. 6); ``gamma`` one scale for every dimension, or one per dimension."""
    beta = beta.detach().double()
    if isinstance(gamma, Tensor):
        gamma = gamma.detach().double()
    return float(0.5 * (gamma**2 + beta.pow(2)).sum())
