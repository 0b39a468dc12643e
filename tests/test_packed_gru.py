"""model/packed_gru.py computes torch's GRU: the same outputs, last states and gradients (in
float64, to rounding), and torch's own computation wherever it is not meant to run."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from model.batch import dialog_batch
from model.packed_gru import GRU, packed_gru
from tests.test_model import make_model, random_dialogs, vocab  # noqa: F401 (fixture)
from training.backend import resolve_batched_gru

# Lengths with a tie, a one-step sequence and the longest not first (so packing reorders).
LENGTHS = [4, 7, 1, 7, 3, 5]


def gru_and_input(bidirectional: bool, batch_first: bool, dtype=torch.float64):
    torch.manual_seed(0)
    rnn = GRU(5, 4, batch_first=batch_first, bidirectional=bidirectional).to(dtype)
    shape = (len(LENGTHS), max(LENGTHS), 5) if batch_first else (max(LENGTHS), len(LENGTHS), 5)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    h0 = torch.randn(2 if bidirectional else 1, len(LENGTHS), 4, dtype=dtype, requires_grad=True)
    return rnn, x, h0


def run(rnn, x, h0, batched: bool, enforce_sorted: bool = False):
    """Outputs, h_n and the gradients of a fixed random function of both."""
    lengths = torch.tensor(LENGTHS)
    if enforce_sorted:
        lengths = lengths.sort(descending=True).values
    packed = pack_padded_sequence(
        x, lengths, batch_first=rnn.batch_first, enforce_sorted=enforce_sorted
    )
    out, h_n = packed_gru(rnn, packed, h0) if batched else torch.nn.GRU.forward(rnn, packed, h0)
    g = torch.Generator().manual_seed(1)
    w_out = torch.randn(out.data.shape, generator=g, dtype=x.dtype)
    w_h = torch.randn(h_n.shape, generator=g, dtype=x.dtype)
    loss = (out.data * w_out).sum() + (h_n * w_h).sum()
    wrt = [x, h0, *rnn.parameters()]
    grads = torch.autograd.grad(loss, wrt)
    return [out.data.detach(), h_n.detach(), *grads]


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_outputs_and_every_gradient_equal_torch_gru(bidirectional, batch_first, enforce_sorted):
    rnn, x, h0 = gru_and_input(bidirectional, batch_first)
    ours = run(rnn, x, h0, batched=True, enforce_sorted=enforce_sorted)
    torch_s = run(rnn, x, h0, batched=False, enforce_sorted=enforce_sorted)
    names = ["output", "h_n", "d input", "d h0"] + [n for n, _ in rnn.named_parameters()]
    for name, a, b in zip(names, ours, torch_s, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)
        assert a.abs().max() > 0.01, name  # (a zero gradient would agree with anything)


def test_no_initial_state_is_zeros():
    rnn, x, h0 = gru_and_input(True, True)
    packed = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False)
    out, h_n = packed_gru(rnn, packed)
    zero_out, zero_h = packed_gru(rnn, packed, torch.zeros_like(h0))
    assert torch.equal(out.data, zero_out.data) and torch.equal(h_n, zero_h)


def test_gru_uses_the_batched_kernel_only_to_train_in_float32_on_the_cpu():
    rnn, x, h0 = gru_and_input(False, True, dtype=torch.float32)
    packed = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        native = torch.nn.GRU.forward(rnn, packed, h0)[1]
    rnn.batched = True
    with torch.no_grad():  # inference: torch's computation, bit for bit
        assert torch.equal(rnn(packed, h0)[1], native)

    def kernel() -> str:  # what computed the outputs (one direction: its node, unwrapped)
        return type(rnn(packed, h0)[0].data.grad_fn).__name__

    assert kernel() == "_PackedGRUDirectionBackward"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: torch's GRU
        assert "PackedGRU" not in kernel()
    rnn.batched = False
    assert "PackedGRU" not in kernel()


@pytest.mark.parametrize("variant", ["cvae", "cvae-bow", "bn-cvae"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_model_trains_to_the_same_loss_and_gradients(vocab, variant, dtype):  # noqa: F811
    model = make_model(vocab, variant).to(dtype)
    batch = dialog_batch(random_dialogs(4), vocab)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in trained], [p for _, p in trained]

    def loss_and_grads(batched):
        model.use_batched_gru(batched)
        torch.manual_seed(1)
        loss = model(batch, kl_weight=0.3).loss
        return [loss, *torch.autograd.grad(loss, params)]

    ours, torch_s = loss_and_grads(True), loss_and_grads(False)
    tolerance = (
        {"rtol": 0, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-6}
    )
    for name, a, b in zip(("loss", *names), ours, torch_s, strict=True):
        torch.testing.assert_close(a, b, **tolerance, msg=name)
    assert sum(name.endswith(("rnn.weight_hh_l0", "rnn.weight_ih_l0")) for name in names) == 6


def test_auto_batches_the_gru_on_a_cpu_in_float32_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_batched_gru("auto", cpu, "fp32") is True
    assert resolve_batched_gru("auto", cpu, "bf16-autocast") is False
    assert resolve_batched_gru("auto", cuda, "fp32") is False
    assert resolve_batched_gru("off", cpu, "fp32") is False
    assert resolve_batched_gru("on", cuda, "fp32") is True
    with pytest.raises(ValueError, match="batched_gru must be one of"):
        resolve_batched_gru("fast", cpu, "fp32")


def test_the_outputs_unpack_into_the_batch_order():
    rnn, x, h0 = gru_and_input(True, True)
    packed = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False)
    with torch.enable_grad():
        out = packed_gru(rnn, packed, h0)[0]
        ours = pad_packed_sequence(out, batch_first=True)
        torch_s = pad_packed_sequence(torch.nn.GRU.forward(rnn, packed, h0)[0], batch_first=True)
    torch.testing.assert_close(ours[0], torch_s[0], rtol=0, atol=1e-12)
    assert ours[1].tolist() == LENGTHS
    # (the order a further GRU permutes its initial state by)
    assert torch.equal(out.sorted_indices, packed.sorted_indices)


@pytest.mark.parametrize("settings", [{"num_layers": 2}, {"bias": False}])
def test_other_grus_are_refused(settings):
    rnn = torch.nn.GRU(5, 4, **settings)
    packed = pack_padded_sequence(torch.randn(3, 2, 5), torch.tensor([3, 2]))
    with pytest.raises(ValueError, match="packed_gru runs one-layer GRUs with biases"):
        packed_gru(rnn, packed)
