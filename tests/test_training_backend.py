"""The training loop's speed machinery: it must not change what is computed."""

from __future__ import annotations

import math
import os
import tempfile
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from model.batch import dialog_batch
from model.cvae import RecognitionNetwork
from tests.fixtures.fixed_gamma import kernel_family
from training.backend import (
    FP32_TOLERANCE,
    OneDNNProbe,
    autocast,
    make_adam,
    onednn_fp32_matmul,
    probe_onednn_matmul,
    resolve_onednn,
)
from training.batching import Prefetcher, SegmentBatches
from training.prepare import load_prepared
from training.switchboard import Progress, TrainingWindow
from training.sync_bn import SyncedBatchNorm1d, synchronize_batch_norm


def test_training_window_sums_equal_python_float_sums():
    # The window keeps its sums on the device; they must be the float64 sums the loop used to
    # add up with .item() after every step, bit for bit (a resumed run compares logs exactly).
    g = torch.Generator().manual_seed(0)
    steps = [torch.rand(5, generator=g) * 50 for _ in range(7)]
    window = TrainingWindow({"nll": 1.25, "kl": 0.5, "tokens": 3.0, "loss": 2.0, "examples": 1.0})
    expected = {"nll": 1.25, "kl": 0.5, "tokens": 3.0, "loss": 2.0, "examples": 1.0}
    for x in steps:
        out = SimpleNamespace(loss=x.mean(), nll=x, kl=x / 7, tokens=torch.full((5,), 9.0),
                              extras={})  # fmt: skip
        window.add(out, examples=5)
        for key, value in (("loss", x.mean()), ("nll", x.sum()), ("kl", (x / 7).sum()),
                           ("tokens", torch.tensor(45.0)), ("examples", 5.0)):  # fmt: skip
            expected[key] = expected[key] + float(value)
    assert window.sums() == expected
    entry = window.record(Progress(step=7), kl_weight=0.5, steps=7, elapsed=1.0)
    assert entry["train_kl"] == expected["kl"] / expected["examples"]
    assert entry["train_ppl"] == math.exp(expected["nll"] / expected["tokens"])
    assert window.sums() == {}


def test_prefetcher_keeps_order_stops_early_and_raises(synthetic_prepared):
    corpus = load_prepared(synthetic_prepared)
    sb = SegmentBatches([d.turns() for d in corpus.train], corpus.vocab, 4, 4, seed=3)
    direct = list(sb.epoch(0))
    with Prefetcher(sb.epoch(0), torch.device("cpu")) as it:
        fetched = list(it)
    assert len(fetched) == len(direct) > 2
    for a, b in zip(direct, fetched, strict=True):
        assert torch.equal(a.utterances, b.utterances)
        assert torch.equal(a.context_index, b.context_index)
    with Prefetcher(sb.epoch(0), torch.device("cpu")) as it:  # leaving early joins the thread
        next(it)

    def broken():
        yield direct[0]
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"), Prefetcher(broken(), "cpu") as it:
        list(it)


def test_a_moved_batch_keeps_its_lengths_on_the_host(synthetic_prepared):
    corpus = load_prepared(synthetic_prepared)
    batch = dialog_batch([corpus.train[0].turns()], corpus.vocab)
    moved = batch.to("meta")  # any non-CPU device: its tensors cannot be read back
    for name in ("utt_lengths", "context_lengths", "response_index"):
        assert moved.on_host(name) is getattr(batch, name)
        assert getattr(moved, name).device.type == "meta"
    assert batch.on_host("utt_lengths") is batch.utt_lengths  # on the CPU: the tensor itself


def test_fused_adam_takes_the_same_steps_as_the_for_each_kernel():
    torch.manual_seed(0)
    a, b = nn.Linear(30, 20), nn.Linear(30, 20)
    b.load_state_dict(a.state_dict())
    fused = make_adam(a.parameters(), 1e-3, torch.device("cpu"))
    plain = torch.optim.Adam(b.parameters(), lr=1e-3, foreach=False)
    assert fused.defaults["fused"] is True  # torch >= 2.4 runs it on the CPU
    for step in range(20):
        x = torch.randn(8, 30, generator=torch.Generator().manual_seed(step))
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=1e-6)


def test_onednn_probe_decides_by_exactness_and_cpu():
    probe = probe_onednn_matmul(shape=(64, 32, 128), repeats=3)
    assert probe.relative_error < 1e-2  # float32, or bf16 arithmetic (AMX: 2.7e-3 measured)
    assert probe.fp32_exact == (probe.relative_error < FP32_TOLERANCE)
    if kernel_family() == "AVX512_AMX":  # oneDNN computes "fp32" products in bf16 on AMX
        assert not probe.fp32_exact and not probe.use
    assert probe.speedup is not None and probe.speedup > 0
    assert probe.capability == torch.backends.cpu.get_cpu_capability()
    assert probe_onednn_matmul(shape=(64, 32, 128), repeats=0).speedup is None
    assert OneDNNProbe(1e-7, None, True, "AVX512").use
    assert not OneDNNProbe(4e-3, None, False, "AVX512").use  # AMX: real bfloat16 arithmetic
    assert not OneDNNProbe(1e-7, None, True, "AVX2").use  # not measured faster there
    assert resolve_onednn("on", torch.device("cpu")) is True
    assert resolve_onednn("off", torch.device("cpu")) is False
    with pytest.raises(ValueError, match="onednn_matmul"):
        resolve_onednn("fast", torch.device("cpu"))
    before = torch.backends.mkldnn.matmul.fp32_precision
    with onednn_fp32_matmul(True):
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
    assert torch.backends.mkldnn.matmul.fp32_precision == before


def test_bf16_autocast_runs_linear_layers_in_bfloat16():
    layer = nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with autocast("fp32", torch.device("cpu")):
        assert layer(x).dtype == torch.float32
    with autocast("bf16-autocast", torch.device("cpu")):
        assert layer(x).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        autocast("fp16", torch.device("cpu"))


def _posterior_bn(mode: str, features: int) -> nn.BatchNorm1d:
    """BN-CVAE's batch norm on the posterior mean, as model/cvae.py builds it for ``mode``."""
    net = RecognitionNetwork(4, 4, features, bn_gamma=0.3, gamma_mode=mode)
    assert net.mu_bn is not None
    if mode == "learned":  # per-dimension gammas that differ
        with torch.no_grad():
            net.mu_bn.weight.copy_(torch.linspace(0.1, 0.9, features))
    return net.mu_bn


def _synced_share(rank, world, init, mode, x, w, result):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    bn = synchronize_batch_norm(nn.Sequential(_posterior_bn(mode, x.shape[1])))[0]
    assert isinstance(bn, SyncedBatchNorm1d)
    share = x[rank::world].clone().requires_grad_(True)
    out = bn(share)
    (out * w[rank::world]).sum().backward()
    result[rank] = (out.detach(), share.grad, bn.bias.grad, bn.running_mean, bn.running_var,
                    bn.weight.grad)  # fmt: skip
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fixed", "learned"])
def test_synced_batch_norm_over_two_gloo_processes_equals_one_process(mode):
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(10, 6, generator=g) * 3 + 1, torch.randn(10, 6, generator=g)
    reference = _posterior_bn(mode, 6)
    whole = x.clone().requires_grad_(True)
    out = reference(whole)
    (out * w).sum().backward()

    with tempfile.TemporaryDirectory() as tmp:
        manager = mp.Manager()
        result = manager.dict()
        init = "file://" + os.path.join(tmp, "rendezvous")
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        mp.spawn(_synced_share, args=(2, init, mode, x, w, result), nprocs=2, join=True)
        shares = dict(result)
    for rank in (0, 1):
        y, grad, _, running_mean, running_var, _ = shares[rank]
        torch.testing.assert_close(y, out.detach()[rank::2], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, whole.grad[rank::2], rtol=1e-4, atol=1e-5)
        # each process holds the whole batch's statistics, as the one process does
        torch.testing.assert_close(running_mean, reference.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(running_var, reference.running_var, rtol=1e-5, atol=1e-6)
    # the bias gradient is each share's part; DDP adds them up across the processes
    torch.testing.assert_close(shares[0][2] + shares[1][2], reference.bias.grad)
    if mode == "fixed":  # the frozen gamma stays frozen
        assert shares[0][5] is None and shares[1][5] is None
    else:
        torch.testing.assert_close(shares[0][5] + shares[1][5], reference.weight.grad)
