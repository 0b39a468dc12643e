"""The project on a CUDA GPU, in one command: for a machine with one (none was at hand where it
was written).

    python benchmarks/gpu_check.py [--checkpoint checkpoints/bn-cvae-switchboard]
                                   [--limit 500] [--steps 20] [--data runs/data/switchboard]

1. CUDA torch: torch's CUDA build sees a GPU (name, compute capability, bf16 support);
2. the service: ``python -m service --device cuda`` started, ``/respond`` called (the answer's
   device must be the GPU), its median latency over a few requests;
3. the evaluation: ``python -m eval.switchboard --limit 500 --device cuda`` on the checkpoint,
   its time and perplexities;
4. training throughput at the paper preset (BN-CVAE, the dialog-level path), float32 and bf16
   autocast, on the same real batches: median step time and examples/s.

It prints one table. On a machine without CUDA it exits with 1 and one line saying why.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.service_process import ServiceProcess, service_env  # noqa: E402
from benchmarks.train_throughput import load_corpus  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.cvae import DialogCVAE  # noqa: E402
from training.batching import SegmentBatches  # noqa: E402
from training.switchboard import TrainConfig  # noqa: E402

DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "bn-cvae-switchboard"
CONVERSATION = [
    {"speaker": "A", "text": "do you have any pets"},
    {"speaker": "B", "text": "yeah we have two dogs"},
    {"speaker": "A", "text": "what kind of dogs"},
]


def cuda_missing() -> str | None:
    """Why this machine cannot run the check, or None."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build (install the CUDA build from PyPI)"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device"
    return None


def cuda_row() -> tuple[str, str]:
    props = torch.cuda.get_device_properties(0)
    bf16 = "bf16 native" if torch.cuda.is_bf16_supported() else "no native bf16"
    return (
        "CUDA torch",
        f"torch {torch.__version__}, CUDA {torch.version.cuda}; {props.name} "
        f"(sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB, {bf16})",
    )


def service_row(checkpoint: Path, workdir: Path, requests: int = 20) -> tuple[str, str]:
    started = time.perf_counter()
    with ServiceProcess(checkpoint, workdir / "service.log", device="cuda") as server:
        server.wait_ready(timeout=300)
        ready = time.perf_counter() - started
        body = {"conversation": CONVERSATION, "num_samples": 5}
        latencies, answer = [], None
        for _ in range(requests):
            t = time.perf_counter()
            response = httpx.post(f"{server.url}/respond", json=body, timeout=60)
            latencies.append(time.perf_counter() - t)
            response.raise_for_status()
            answer = response.json()
    device = answer["model"]["device"]
    if not device.startswith("cuda"):
        raise RuntimeError(f"the service answered on {device}, not on the GPU")
    return (
        "service --device cuda",
        f"ready in {ready:.1f} s; /respond (5 samples) on {device}: median "
        f"{statistics.median(latencies) * 1e3:.1f} ms over {requests}; "
        f"e.g. {answer['responses'][0]['text']!r}",
    )


def eval_row(checkpoint: Path, workdir: Path, limit: int) -> tuple[str, str]:
    out = workdir / "eval.json"
    command = [
        *(sys.executable, "-m", "eval.switchboard", "--checkpoint", str(checkpoint)),
        *("--limit", str(limit), "--device", "cuda", "--out", str(out), "--no-progress"),
    ]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=service_env(), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"eval.switchboard failed: {result.stderr.strip()[-1000:]}")
    metrics = json.loads(out.read_text())
    m = metrics["metrics"]
    return (
        f"eval.switchboard --limit {limit} --device cuda",
        f"{metrics['examples']} examples in {seconds:.0f} s (whole command); ppl {m['ppl']:.2f}, "
        f"elbo_ppl {m['elbo_ppl']:.2f}, kl {m['kl']:.2f}",
    )


def training_rows(data: str, steps: int) -> list[tuple[str, str]]:
    corpus = load_corpus(data)
    cfg = TrainConfig()
    batches_of = SegmentBatches(
        [d.turns() for d in corpus.train], corpus.vocab, cfg.segment_size, cfg.batch_segments, 0
    )
    order, k = batches_of.order(0), cfg.batch_segments
    batches = [batches_of.batch(order[i * k : (i + 1) * k]).to("cuda") for i in range(steps + 3)]
    examples = statistics.mean(b.num_examples for b in batches)
    rows = []
    for name, dtype in (("float32", None), ("bf16 autocast", torch.bfloat16)):
        torch.manual_seed(0)
        config = ModelConfig.preset("paper", variant="bn-cvae", vocab_size=len(corpus.vocab))
        model = DialogCVAE(config).to("cuda").train()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3)
        times = []
        for i, batch in enumerate(batches):
            torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                out = model(batch, kl_weight=0.5)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            torch.cuda.synchronize()
            if i >= 3:  # warm-up: cuDNN's algorithm search, the allocator
                times.append(time.perf_counter() - t)
        step = statistics.median(times)
        rows.append(
            (
                f"training, paper preset, {name}",
                f"{step * 1e3:.1f} ms/step, {examples / step:.0f} examples/s (median of "
                f"{len(times)} steps of {examples:.0f} examples; loss {float(out.loss):.3f})",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--limit", type=int, default=500, help="examples evaluated")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per dtype")
    parser.add_argument("--data", default=str(ROOT / "runs/data/switchboard"))
    args = parser.parse_args(argv)

    why = cuda_missing()
    if why is not None:
        print(f"gpu_check: no CUDA: {why}", file=sys.stderr)
        return 1
    rows = [cuda_row()]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        workdir = Path(tmp)
        for name, check in (
            ("service --device cuda", lambda: [service_row(args.checkpoint, workdir)]),
            ("eval.switchboard", lambda: [eval_row(args.checkpoint, workdir, args.limit)]),
            ("training", lambda: training_rows(args.data, args.steps)),
        ):
            try:
                rows += check()
            except Exception as e:  # one failed check is a row of the table, not the end
                rows.append((name, f"FAILED: {type(e).__name__}: {str(e)[:300]}"))
    width = max(len(name) for name, _ in rows)
    print(f"| {'check':{width}} | result |")
    print(f"|{'-' * (width + 2)}|--------|")
    for name, result in rows:
        print(f"| {name:{width}} | {result} |")
    return 1 if any(result.startswith("FAILED") for _, result in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
