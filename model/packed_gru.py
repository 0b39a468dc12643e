"""A one-layer GRU over a packed sequence, computed the way a CPU trains it fastest.

``torch.nn.GRU`` on a CPU runs a packed sequence one time step at a time, forward and
backward: per step it multiplies the step's inputs by W_ih, and in the backward pass it
computes that step's share of every weight gradient and adds it to the running sum (in a
paper-size training step: ~1,100 small matrix products and as many additions). Only the
recurrence needs to go step by step. :func:`packed_gru` does the rest once per sequence batch:

* the input projection x W_ih^T + b_ih of all time steps in one matrix product;
* the gradients of W_ih, W_hh, the biases and the inputs in one product each, from the gate
  gradients of all steps;
* what the backward pass needs of the gates, for all steps at once before its loop, so that a
  step costs one product with W_hh and three element-wise operations.

The arithmetic is the GRU of ``torch.nn.GRU``'s documentation (r, z, n gates, b_hn inside the
reset product); results differ from torch's only in float32 rounding (sums taken in another
order). Training uses it on the CPU in float32 (``training/backend.py``); inference, evaluation
and bf16 autocast keep ``torch.nn.GRU``, whose numbers the tests pin.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence


class _PackedGRUDirection(torch.autograd.Function):
    """One direction of a one-layer GRU over packed data x [N, I] (time-major, ``batch_sizes``
    rows at each step, the longest sequences first): (outputs [N, H], last states [B, H])."""

    @staticmethod
    def forward(ctx, x, batch_sizes: list[int], h0, w_ih, w_hh, b_ih, b_hh, reverse: bool):
        hidden = w_hh.shape[1]
        rows = x.shape[0]
        gi = torch.addmm(b_ih, x, w_ih.t())  # every step's input projection at once
        gi_rz, gi_n = gi[:, : 2 * hidden], gi[:, 2 * hidden :]
        gh = x.new_empty(rows, 3 * hidden)  # h W_hh^T + b_hh of every step
        rz = x.new_empty(rows, 2 * hidden)  # the reset and update gates
        n = x.new_empty(rows, hidden)  # the candidate state
        out = x.new_empty(rows, hidden)
        h_prev = x.new_empty(rows, hidden)  # each step's incoming state
        offsets = _offsets(batch_sizes)
        # h holds every sequence's state; a step updates the first b rows (those still running),
        # so a finished sequence keeps its last state, and (in reverse) one not yet started h0.
        h = h0.clone()
        w_hh_t = w_hh.t()
        for t in _steps(len(batch_sizes), reverse):
            b, start = batch_sizes[t], offsets[t]
            end = start + b
            state = h[:b]
            h_prev[start:end] = state
            g = torch.addmm(b_hh, state, w_hh_t, out=gh[start:end])
            torch.sigmoid(gi_rz[start:end] + g[:, : 2 * hidden], out=rz[start:end])
            r, z = rz[start:end, :hidden], rz[start:end, hidden:]
            candidate = torch.tanh(
                torch.addcmul(gi_n[start:end], r, g[:, 2 * hidden :]), out=n[start:end]
            )
            # h' = (1 - z) n + z h
            torch.lerp(candidate, state, z, out=out[start:end])
            state.copy_(out[start:end])
        ctx.save_for_backward(x, w_ih, w_hh, h_prev, gh, rz, n)
        ctx.batch_sizes, ctx.offsets, ctx.reverse = batch_sizes, offsets, reverse
        return out, h

    @staticmethod
    def backward(ctx, d_out, d_last):
        x, w_ih, w_hh, h_prev, gh, rz, n = ctx.saved_tensors
        batch_sizes, offsets = ctx.batch_sizes, ctx.offsets
        hidden = w_hh.shape[1]
        rows = x.shape[0]
        r, z = rz[:, :hidden], rz[:, hidden:]
        # With d = dL/dh' at a step, the gradients of the pre-activations are d times these
        # (they depend on the forward pass alone, so all steps are done at once):
        d_n_pre = (1 - z) * (1 - n * n)  # of the candidate's, i_n + r (h W_hn + b_hn)
        per_d = torch.cat(
            [
                d_n_pre * gh[:, 2 * hidden :] * r * (1 - r),  # of r's pre-activation
                (h_prev - n) * z * (1 - z),  # of z's
                d_n_pre * r,  # of h W_hn + b_hn
            ],
            dim=1,
        )
        d = x.new_empty(rows, hidden)
        d_gh = x.new_empty(rows, 3 * hidden)
        d_state = d_last.clone()
        for t in _steps(len(batch_sizes), not ctx.reverse):
            b, start = batch_sizes[t], offsets[t]
            end = start + b
            d_t = torch.add(d_state[:b], d_out[start:end], out=d[start:end])
            g = d_gh[start:end]
            torch.mul(
                per_d[start:end].view(b, 3, hidden), d_t.unsqueeze(1), out=g.view(b, 3, hidden)
            )
            # dL/dh = d z + d_gh W_hh
            torch.addmm(d_t * z[start:end], g, w_hh, out=d_state[:b])
        d_gi = torch.cat([d_gh[:, : 2 * hidden], d * d_n_pre], dim=1)
        return (
            d_gi @ w_ih,
            None,
            d_state,
            d_gi.t() @ x,
            d_gh.t() @ h_prev,
            d_gi.sum(0),
            d_gh.sum(0),
            None,
        )


def _offsets(batch_sizes: list[int]) -> list[int]:
    offsets = [0]
    for b in batch_sizes:
        offsets.append(offsets[-1] + b)
    return offsets


def _steps(count: int, reverse: bool) -> range:
    return range(count - 1, -1, -1) if reverse else range(count)


def packed_gru(
    rnn: nn.GRU, packed: PackedSequence, h0: torch.Tensor | None = None
) -> tuple[PackedSequence, torch.Tensor]:
    """``rnn(packed, h0)`` for a one-layer GRU (uni- or bidirectional, batch_first or not: a
    packed sequence is the same either way), with ``rnn``'s weights: (outputs, h_n [D, B, H]),
    h0 and h_n in the batch's own order as ``torch.nn.GRU`` has them."""
    if rnn.num_layers != 1 or not rnn.bias:
        raise ValueError("packed_gru runs one-layer GRUs with biases")
    batch_sizes = packed.batch_sizes.tolist()
    batch, hidden = batch_sizes[0], rnn.hidden_size
    order, unorder = packed.sorted_indices, packed.unsorted_indices
    outputs, last = [], []
    for direction, suffix in enumerate(("", "_reverse")[: 2 if rnn.bidirectional else 1]):
        weights = [
            getattr(rnn, f"{name}_l0{suffix}")
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ]
        if h0 is None:
            start = packed.data.new_zeros(batch, hidden)
        else:
            start = h0[direction] if order is None else h0[direction][order]
        out, h = _PackedGRUDirection.apply(
            packed.data, batch_sizes, start, *weights, direction == 1
        )
        outputs.append(out)
        last.append(h)
    data = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
    h_n = torch.stack(last)
    if unorder is not None:
        h_n = h_n[:, unorder]
    return PackedSequence(data, packed.batch_sizes, order, unorder), h_n


class GRU(nn.GRU):
    """``torch.nn.GRU`` (same parameters, same state_dict) that trains a packed sequence with
    :func:`packed_gru` when ``batched`` is set: with gradients on, in float32 (or float64) on
    the CPU, outside autocast. Everything else (no gradients, a GPU, autocast, unpacked input) is
    ``torch.nn.GRU``'s own computation."""

    batched = False

    def forward(self, input, hx=None):  # noqa: A002 (torch's name)
        if (
            self.batched
            and isinstance(input, PackedSequence)
            and torch.is_grad_enabled()
            and input.data.device.type == "cpu"
            and input.data.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu")
        ):
            return packed_gru(self, input, hx)
        return super().forward(input, hx)
