"""Batch normalization over the whole batch when the batch is split between processes (DDP).

Under DistributedDataParallel each process sees only its share of a batch, so a plain
``BatchNorm1d`` normalizes BN-CVAE's posterior means (Eq. 5) with statistics that depend on the
number of processes, and its running statistics are those of rank 0's shares. With
``--sync-bn`` the statistics are those of the whole batch, as in single-process training.

``torch.nn.SyncBatchNorm`` only accepts GPU inputs (it raises "SyncBatchNorm expected input
tensor to be on GPU" on a CPU tensor), while this project trains on CPUs with gloo; so this
module all-reduces the batch's sums with ``torch.distributed.nn``'s autograd-aware
``all_reduce``, which works on every backend, and the gradients flow through the global
statistics as in single-process batch norm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn
from torch import nn


class SyncedBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` whose training statistics are the whole batch's, across processes.

    Its scale is the module's ``gamma()`` where it defines one (BN-CVAE's learned per-dimension
    gamma, model/cvae.py ``RMSScaledBatchNorm``), else ``weight``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        channels = x.shape[1]
        local = torch.cat([x.sum(0), (x * x).sum(0), x.new_full((1,), x.shape[0])])
        total = dist_nn.all_reduce(local)  # sums of every process's share (autograd-aware)
        n = total[-1]
        mean = total[:channels] / n
        var = total[channels : 2 * channels] / n - mean * mean  # biased, as BN normalizes
        if self.track_running_stats:
            with torch.no_grad():
                assert self.running_mean is not None and self.running_var is not None
                assert self.num_batches_tracked is not None  # (buffers of track_running_stats)
                momentum = 0.1 if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - momentum).add_(momentum * mean)
                # unbiased, as BatchNorm1d keeps it
                self.running_var.mul_(1 - momentum).add_(momentum * var * n / (n - 1))
                self.num_batches_tracked.add_(1)
        out = (x - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            gamma = getattr(self, "gamma", None)
            out = out * (gamma() if callable(gamma) else self.weight) + self.bias
        return out


def synchronize_batch_norm(module: nn.Module) -> nn.Module:
    """Make every ``BatchNorm1d`` of ``module`` (subclasses included) a synced one in place: the
    same object, parameters (a frozen gamma stays frozen), buffers and state-dict keys, with
    :class:`SyncedBatchNorm1d`'s forward pass in front of its own."""
    for child in module.modules():
        if isinstance(child, nn.BatchNorm1d) and not isinstance(child, SyncedBatchNorm1d):
            base = type(child)
            child.__class__ = type(f"Synced{base.__name__}", (SyncedBatchNorm1d, base), {})
    return module
