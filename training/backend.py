"""How a training step runs on this machine: the optimizer kernel, the fp32 matmul library and
the arithmetic precision. None of the defaults changes the maths beyond float32 rounding.

* Fused Adam: one kernel per step instead of a loop of small ones (``torch.optim.Adam(fused=True)``,
  on CPUs since torch 2.4, on CUDA). Same update rule; results differ from the for-each kernel
  only in the last bits of float32.
* oneDNN for fp32 matmuls (``torch.backends.mkldnn.matmul.fp32_precision``): on some CPUs
  oneDNN's float32 kernels are ~2x MKL's on the vocabulary projection's shapes. Torch exposes
  the switch as a *precision*: "bf16" lets oneDNN use bfloat16 arithmetic where the hardware has
  it (AMX), and run float32 kernels elsewhere. So the switch is only taken where a check at
  start-up (:func:`probe_onednn_matmul`) shows that the product stays float32-exact on this CPU,
  and the CPU runs torch's AVX-512 kernels (where oneDNN's float32 kernels were measured faster:
  docs/performance.md). The decision depends on the machine alone, not on a timing, so two runs
  with the same seed on one machine compute the same; it is logged and kept in the run's config,
  so a resumed run computes as it did.
* Batched GRU training (``model/packed_gru.py``): the GRUs' input projections and weight
  gradients in one matrix product per sequence batch instead of one per time step. The same
  GRU, summed in another order; on the CPU in float32 only (a GPU has cuDNN's kernels, and
  autocast keeps torch's).
* ``--precision bf16-autocast``: the forward pass under ``torch.autocast`` in bfloat16 (master
  weights, optimizer and loss reductions stay float32). Opt-in: it changes the numbers.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import cast

import torch
from torch.backends.mkldnn import MkldnnModule

log = logging.getLogger("training")

PRECISIONS = ("fp32", "bf16-autocast")
# A kernel switch (--onednn-matmul, --batched-gru): auto decides by the machine.
SWITCH_CHOICES = ("auto", "on", "off")

# The decoder's vocabulary projection at the paper preset: ~870 response tokens per batch
# (62 responses of ~14 tokens) onto 10,005 words from a 400-d state. It is the largest matmul
# of a step (28% of a bn-cvae step, benchmarks/train_throughput.py).
PROBE_SHAPE = (870, 400, 10005)
# float32 rounding of a 400-term dot product stays well below this relative error; bfloat16
# arithmetic (8 mantissa bits) is 1e-3 or more (2.7e-3 on an Intel Xeon with AMX).
FP32_TOLERANCE = 1e-5
# The CPU capabilities (torch.backends.cpu.get_cpu_capability()) on which oneDNN's float32
# matmuls were measured faster than MKL's (benchmarks/train_throughput.py, docs/performance.md).
ONEDNN_FASTER_ON = ("AVX512",)


@dataclass(frozen=True)
class OneDNNProbe:
    relative_error: float  # max |oneDNN - float64| / max |float64| on PROBE_SHAPE
    speedup: float | None  # MKL time / oneDNN time on PROBE_SHAPE (None: not timed)
    fp32_exact: bool
    capability: str  # torch's CPU capability: "AVX512", "AVX2", ...

    @property
    def use(self) -> bool:
        return self.fp32_exact and self.capability in ONEDNN_FASTER_ON


def fused_adam_supported(device: torch.device) -> bool:
    """Whether ``torch.optim.Adam(fused=True)`` runs on ``device`` with this torch."""
    probe = torch.zeros(1, device=device, requires_grad=True)
    try:
        opt = torch.optim.Adam([probe], fused=True)
        probe.grad = torch.zeros_like(probe)
        opt.step()
    except (RuntimeError, ValueError):
        return False
    return True


def make_adam(params, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam, fused where this torch supports it on ``device``."""
    params = list(params)
    if fused_adam_supported(device):
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr)


@contextlib.contextmanager
def onednn_fp32_matmul(enabled: bool):
    """Route float32 matmuls through oneDNN inside the block (restores the setting after)."""
    # torch replaces the module by an MkldnnModule when imported; mypy sees the module's file,
    # whose declarations leave matmul out
    matmul = cast(MkldnnModule, torch.backends.mkldnn).matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = "bf16" if enabled else "none"
    try:
        yield
    finally:
        matmul.fp32_precision = before


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def probe_onednn_matmul(shape: tuple[int, int, int] = PROBE_SHAPE, repeats: int = 5) -> OneDNNProbe:
    """Check (and, with ``repeats`` > 0, time) a float32 product of ``shape`` through oneDNN.

    The error is measured against float64 on fixed inputs, so "fp32_exact" is decided by the
    hardware's arithmetic, not by chance; the speed is the median of interleaved repeats."""
    rows, inner, cols = shape
    g = torch.Generator().manual_seed(0)
    a = torch.randn(rows, inner, generator=g)
    w = torch.randn(cols, inner, generator=g) / inner**0.5
    reference = a.double() @ w.double().T
    with onednn_fp32_matmul(True):
        routed = torch.nn.functional.linear(a, w)
    error = ((routed.double() - reference).abs().max() / reference.abs().max()).item()
    capability = torch.backends.cpu.get_cpu_capability()
    if repeats <= 0:
        return OneDNNProbe(error, None, error < FP32_TOLERANCE, capability)
    mkl, onednn = [], []
    for _ in range(repeats):
        with onednn_fp32_matmul(False):
            mkl.append(_median_seconds(lambda: torch.nn.functional.linear(a, w), 1))
        with onednn_fp32_matmul(True):
            onednn.append(_median_seconds(lambda: torch.nn.functional.linear(a, w), 1))
    speedup = sorted(mkl)[repeats // 2] / sorted(onednn)[repeats // 2]
    return OneDNNProbe(error, speedup, error < FP32_TOLERANCE, capability)


def resolve_onednn(choice: str, device: torch.device) -> bool:
    """``auto``: oneDNN for fp32 matmuls when :func:`probe_onednn_matmul` finds it float32-exact
    on a CPU of ``ONEDNN_FASTER_ON`` (logged); ``on``/``off`` as given. Only CPUs have the choice."""
    if choice not in SWITCH_CHOICES:
        raise ValueError(f"onednn_matmul must be one of {SWITCH_CHOICES}, not {choice!r}")
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if choice != "auto":
        return choice == "on"
    probe = probe_onednn_matmul(repeats=0)
    log.info(
        "oneDNN fp32 matmuls: relative error %.1e on %s (float32-exact: %s), CPU capability %s "
        "-> %s", probe.relative_error, "x".join(map(str, PROBE_SHAPE)), probe.fp32_exact,
        probe.capability, "on" if probe.use else "off",
    )  # fmt: skip
    return probe.use


def resolve_batched_gru(choice: str, device: torch.device, precision: str) -> bool:
    """``auto``: batched GRU training on a CPU in float32 (where it runs at all); ``on``/``off``
    as given (``on`` elsewhere still computes with torch's GRU: model/packed_gru.py's GRU)."""
    if choice not in SWITCH_CHOICES:
        raise ValueError(f"batched_gru must be one of {SWITCH_CHOICES}, not {choice!r}")
    if choice != "auto":
        return choice == "on"
    return device.type == "cpu" and precision == "fp32"


def autocast(precision: str, device: torch.device):
    """The context a forward pass runs in for ``precision``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16-autocast":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")


def cpu_description() -> str:
    """The CPU's model name and the flags that decide the fast kernels (for benchmark logs)."""
    name = "unknown CPU"
    flags: set[str] = set()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown CPU":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    present = [f for f in wanted if f in flags]
    return f"{name} ({', '.join(present) or 'no AVX2'}; torch {torch.__version__})"
