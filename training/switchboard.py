"""Train a CVAE / CVAE+BOW / BN-CVAE on a prepared Switchboard corpus.

    python -m training.prepare --out runs/data/switchboard
    python -m training.switchboard --variant bn-cvae --preset cpu --out runs/bn-cvae

The run directory gets the resolved ``config.json``, ``metrics.jsonl`` (train and validation
records), ``curves.png``, the best checkpoint in ``best/`` (by validation -ELBO), the final one
in ``last/``, and ``training_state.pt`` (weights, optimizer, step, data position and RNG state)
from which ``--resume`` continues exactly where the run was, even after SIGKILL.

Several processes: ``torchrun --nproc_per_node N -m training.switchboard ...`` trains with
DistributedDataParallel (gloo on CPU, nccl on GPUs); each batch's segments are split between
the processes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from model.checkpoint import CheckpointError, save_pretrained
from model.cli import parse_args
from model.config import PRESETS, VARIANTS, ModelConfig
from model.cvae import DialogCVAE
from training.batching import SegmentBatches, eval_batches
from training.corpus import CorpusError
from training.curves import plot_curves
from training.prepare import load_prepared

log = logging.getLogger("training")

STATE_FILE = "training_state.pt"
# Flags that may differ when a run is resumed: they do not change what is computed, only where
# (epochs, max_steps: to extend a run) and how fast it runs.
RESUMABLE_CHANGES = ("resume", "threads", "device", "epochs", "max_steps")


class RunError(ValueError):
    """A run cannot start or resume (bad state file, mismatched settings, empty data)."""


def _help(text: str, **more) -> dict:
    return {"help": text, **more}


@dataclass
class TrainConfig:
    """Everything a training run depends on; each field is a ``--option`` of the CLI."""

    out: str = field(default="runs/bn-cvae", metadata=_help("run directory"))
    data: str = field(
        default="runs/data/switchboard",
        metadata=_help("a prepared corpus (python -m training.prepare)"),
    )
    variant: str = field(default="bn-cvae", metadata=_help("model variant", choices=VARIANTS))
    preset: str = field(
        default="cpu", metadata=_help("model dimensions (model/config.py)", choices=tuple(PRESETS))
    )
    seed: int = field(default=0, metadata=_help("random seed"))
    # A batch is batch_segments runs of segment_size consecutive responses, each from a random
    # dialog: 8 x 8 = 64 examples from ~8 dialogs, so batch normalization sees many
    # conversations while each utterance is still encoded once per batch (measured with
    # benchmarks/train_throughput.py: 2.3x the per-window path at the paper dims; 4 x 16 was 2.5x
    # with 4 dialogs, 16 x 4 2.0x, 32 x 2 1.6x).
    segment_size: int = field(
        default=8, metadata=_help("consecutive responses of one dialog in a batch")
    )
    batch_segments: int = field(default=8, metadata=_help("segments (dialogs) per batch"))
    lr: float = field(default=1e-3, metadata=_help("Adam learning rate"))
    grad_clip: float = field(default=5.0, metadata=_help("gradient norm clipping"))
    kl_anneal_steps: int = field(
        default=5000, metadata=_help("the KL weight rises linearly from 0 to 1 over these steps")
    )
    # bn-cvae: anneal the extra KL(p(z|c) || N(0,I)) term with the same weight (the paper is
    # silent; the default was chosen by a measured short run of each, docs/results.md).
    anneal_prior_kl: bool = field(
        default=False,
        metadata=_help("bn-cvae: anneal KL(p(z|c) || N(0,I)) with the same weight"),
    )
    epochs: int = field(
        default=4, metadata=_help("the most epochs a run trains; validation may stop it earlier")
    )
    max_steps: int = field(default=0, metadata=_help("stop after this many steps (0: all epochs)"))
    eval_every: int = field(
        default=1000, metadata=_help("validate (and keep the best checkpoint) every N steps")
    )
    save_every: int = field(default=250, metadata=_help("save the training state (for --resume)"))
    # Counted once the KL annealing is over.
    patience: int = field(
        default=6,
        metadata=_help("stop after this many validations in a row without a better -ELBO"),
    )
    valid_dialogs: int = field(
        default=0, metadata=_help("validate on the first N valid dialogs (0: all)")
    )
    log_every: int = field(default=50, metadata=_help("log training metrics every N steps"))
    threads: int = field(default=0, metadata=_help("torch threads (0: torch's default)"))
    device: str = field(
        default="auto",
        metadata=_help("auto: the GPU when present", choices=("auto", "cpu", "cuda")),
    )
    resume: bool = field(
        default=False,
        metadata=_help("continue the run in --out with its own settings (config.json)"),
    )


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def validate(model: DialogCVAE, batches, device, seed: int) -> dict:
    """Validation -ELBO with z ~ q(z|c,x), drawn from a fixed seed so the training RNG is untouched."""
    was_training = model.training
    model.eval()
    nll = kl = tokens = examples = prior_kl = 0.0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for batch in batches:
            out = model(batch.to(device))
            nll += out.nll.sum().item()
            kl += out.kl.sum().item()
            prior_kl += out.prior_kl.sum().item()
            tokens += out.tokens.sum().item()
            examples += batch.num_examples
    model.train(was_training)
    return {
        "valid_loss": (nll + kl) / examples,
        "valid_nll": nll / examples,
        "valid_kl": kl / examples,
        "valid_prior_kl": prior_kl / examples,
        "valid_ppl": math.exp(nll / tokens),
        "valid_elbo_ppl": math.exp((nll + kl) / tokens),
    }


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _read_metrics(path: Path, upto_step: int) -> list[dict]:
    """Records up to ``upto_step`` (a resumed run drops what it is about to redo)."""
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["step"] <= upto_step]


def train(cfg: TrainConfig, model_overrides: dict | None = None) -> Path:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(cfg.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    state_path = out / STATE_FILE
    if state_path.exists() and not cfg.resume:
        raise RunError(f"{out} already holds a run; pass --resume or choose another --out")

    corpus = load_prepared(cfg.data)
    vocab = corpus.vocab
    train_dialogs = [d.turns() for d in corpus.train]
    valid_dialogs = [d.turns() for d in corpus.valid]
    if cfg.valid_dialogs > 0:
        valid_dialogs = valid_dialogs[: cfg.valid_dialogs]
    for split, dialogs in (("train", train_dialogs), ("valid", valid_dialogs)):
        if not any(dialogs):
            raise RunError(f"{Path(cfg.data) / (split + '.jsonl')}: no {split} dialogs")
    mcfg = ModelConfig.preset(
        cfg.preset,
        variant=cfg.variant,
        vocab_size=len(vocab),
        tokenizer=corpus.tokenizer,
        **(model_overrides or {}),
    )
    torch.manual_seed(cfg.seed)
    model = DialogCVAE(mcfg).to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    batches = SegmentBatches(
        train_dialogs, vocab, cfg.segment_size, cfg.batch_segments,
        mcfg.max_context, mcfg.max_utt_len, seed=cfg.seed,
    )  # fmt: skip
    valid = list(eval_batches(valid_dialogs, vocab, 4, mcfg.max_context, mcfg.max_utt_len))

    progress = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best": math.inf, "bad_rounds": 0,
                "best_step": 0, "train_seconds": 0.0, "stopped_early": False}  # fmt: skip
    # The partly filled logging window: saved with the state so a resumed run logs the same.
    running: dict[str, float] = {}
    if cfg.resume and state_path.exists():
        state = load_training_state(state_path)
        if state["model_config"] != mcfg.to_dict():
            raise RunError(f"{state_path}: saved with a different model config; cannot resume")
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise RunError(f"{state_path}: does not fit this model: {e}") from e
        progress.update(state["progress"])
        running.update(state.get("running", {}))
        torch.set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        log.info("resumed from %s at step %d", state_path, progress["step"])
    else:
        torch.manual_seed(cfg.seed + rank)

    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
    metrics_path = out / "metrics.jsonl"
    history = _read_metrics(metrics_path, progress["step"])
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        resolved = {"train": dataclasses.asdict(cfg), "model": mcfg.to_dict(), "world_size": world}
        (out / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in history))
        log.info("model: %s, %.2fM parameters; %d train dialogs, %d segments, %d batches/epoch",
                 mcfg.variant, sum(p.numel() for p in model.parameters()) / 1e6,
                 len(train_dialogs), len(batches.segments), len(batches))  # fmt: skip

    def record(entry: dict) -> None:
        history.append(entry)
        if rank == 0:
            with metrics_path.open("a") as f:
                f.write(json.dumps(entry) + "\n")

    def save_state() -> None:
        rng = [torch.get_rng_state()]
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, torch.get_rng_state())
            rng = gathered
        if rank == 0:
            _atomic_torch_save(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "progress": dict(progress), "rng": rng, "model_config": mcfg.to_dict(),
                 "running": dict(running)},
                state_path,
            )  # fmt: skip

    def run_validation() -> bool:
        """Validate, keep the best checkpoint; True when early stopping should end the run."""
        stop = False
        if rank == 0:
            v = validate(model, valid, device, cfg.seed)
            record({"step": progress["step"], "split": "valid", **v})
            log.info("step %d valid: %s", progress["step"],
                     " ".join(f"{k}={x:.3f}" for k, x in v.items()))  # fmt: skip
            if v["valid_loss"] < progress["best"]:
                progress.update(best=v["valid_loss"], best_step=progress["step"], bad_rounds=0)
                meta = {"step": progress["step"], **v, "train_config": dataclasses.asdict(cfg)}
                save_pretrained(model, vocab, out / "best", metadata=meta)
            elif progress["step"] >= cfg.kl_anneal_steps:
                progress["bad_rounds"] += 1
            stop = progress["bad_rounds"] >= cfg.patience
            plot_curves(history, out / "curves.png", title=f"{mcfg.variant} ({cfg.preset})")
        if world > 1:
            flag = [stop, progress["best"], progress["bad_rounds"], progress["best_step"]]
            dist.broadcast_object_list(flag, src=0)
            stop, progress["best"], progress["bad_rounds"], progress["best_step"] = flag
        return stop

    total = cfg.max_steps or cfg.epochs * len(batches)
    bar = tqdm(total=total, initial=progress["step"], disable=rank != 0, desc=mcfg.variant)
    ddp.train()
    started = time.perf_counter()
    done = progress["stopped_early"] or progress["step"] >= total
    while not done and progress["epoch"] < cfg.epochs:
        for batch in batches.epoch(progress["epoch"], progress["batch_in_epoch"], rank, world):
            kl_weight = min(1.0, progress["step"] / max(1, cfg.kl_anneal_steps))
            prior_kl_weight = mcfg.prior_kl_weight * (kl_weight if cfg.anneal_prior_kl else 1.0)
            o = ddp(batch.to(device), kl_weight=kl_weight, prior_kl_weight=prior_kl_weight)
            optimizer.zero_grad(set_to_none=True)
            o.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            progress["step"] += 1
            progress["batch_in_epoch"] += 1
            bar.update(1)
            for k, v in (("loss", o.loss.item()), ("nll", o.nll.sum().item()),
                         ("kl", o.kl.sum().item()), ("tokens", o.tokens.sum().item()),
                         ("examples", float(batch.num_examples))):  # fmt: skip
                running[k] = running.get(k, 0.0) + v
            step = progress["step"]
            if step % cfg.log_every == 0:
                n = running["examples"]
                entry = {"step": step, "split": "train", "epoch": progress["epoch"],
                         "kl_weight": kl_weight, "train_loss": (running["nll"] + running["kl"]) / n,
                         "train_objective": running["loss"] / cfg.log_every,
                         "train_kl": running["kl"] / n,
                         "train_ppl": math.exp(running["nll"] / running["tokens"]),
                         "elapsed_s": progress["train_seconds"] + time.perf_counter() - started}  # fmt: skip
                record(entry)
                bar.set_postfix(loss=f"{entry['train_loss']:.2f}", kl=f"{entry['train_kl']:.2f}",
                                ppl=f"{entry['train_ppl']:.1f}")  # fmt: skip
                running.clear()
            if step % cfg.eval_every == 0 and run_validation():
                progress["stopped_early"] = True
                log.info("early stopping at step %d (best step %d)", step, progress["best_step"])
            if step % cfg.save_every == 0 or progress["stopped_early"] or step >= total:
                progress["train_seconds"] += time.perf_counter() - started
                started = time.perf_counter()
                save_state()
            if progress["stopped_early"] or step >= total:
                done = True
                break
        else:
            progress["epoch"] += 1
            progress["batch_in_epoch"] = 0
    bar.close()

    if progress["step"] % cfg.eval_every != 0:
        run_validation()
    progress["train_seconds"] += time.perf_counter() - started
    save_state()
    if rank == 0:
        meta = {"step": progress["step"], "train_config": dataclasses.asdict(cfg)}
        save_pretrained(model, vocab, out / "last", metadata=meta)
        if progress["stopped_early"]:
            reason = f"patience: {cfg.patience} validations without improvement"
        elif cfg.max_steps and progress["step"] >= cfg.max_steps:
            reason = f"max_steps {cfg.max_steps}"
        else:
            reason = f"max epochs {cfg.epochs}"
        summary = {
            **progress, "stop_reason": reason, "variant": mcfg.variant, "preset": cfg.preset,
            "examples_per_second": progress["step"] * batches.examples_per_batch()
            / max(progress["train_seconds"], 1e-9),
        }  # fmt: skip
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info("done: %d steps in %.0f s; best valid loss %.3f at step %d", progress["step"],
                 progress["train_seconds"], progress["best"], progress["best_step"])  # fmt: skip
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return out


def load_training_state(path: Path) -> dict:
    """``training_state.pt``, or a :class:`RunError` naming it (truncated, empty, foreign)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types on a corrupt file
        raise RunError(f"{path}: cannot read the training state ({type(e).__name__}: {e})") from e
    keys = ("model", "optimizer", "progress", "rng", "model_config")
    if not isinstance(state, dict) or any(k not in state for k in keys):
        raise RunError(f"{path}: not a training state of this project (expected keys {keys})")
    return state


def settings_for_resume(
    out: Path, train_overrides: dict, model_overrides: dict
) -> tuple[dict, dict]:
    """The settings of the run in ``out`` (its ``config.json``), with the flags given again.

    A flag given again must equal the run's value (but for ``RESUMABLE_CHANGES``); otherwise the
    resume is refused, naming every differing field.
    """
    path = out / "config.json"
    try:
        saved = json.loads(path.read_text())
        saved_train, saved_model = dict(saved["train"]), dict(saved["model"])
    except FileNotFoundError:
        raise RunError(f"{path}: missing; nothing to resume in {out}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunError(f"{path}: not a run config: {e}") from e
    differ = [
        f"--{k.replace('_', '-')} {v!r} (run: {saved_train.get(k)!r})"
        for k, v in train_overrides.items()
        if k not in RESUMABLE_CHANGES and k != "out" and saved_train.get(k) != v
    ]
    differ += [
        f"--model.{k.replace('_', '-')} {v!r} (run: {saved_model.get(k)!r})"
        for k, v in model_overrides.items()
        if saved_model.get(k) != v
    ]
    if differ:
        raise RunError(f"{path}: cannot resume with other settings: " + "; ".join(differ))
    train_settings = {**saved_train, **train_overrides, "out": str(out), "resume": True}
    # The preset and these overrides rebuild the run's ModelConfig (variant, vocabulary size
    # and tokenizer come from --variant and the corpus).
    model_settings = {
        k: v for k, v in saved_model.items() if k not in ("variant", "vocab_size", "tokenizer")
    }
    return train_settings, model_settings


def main(argv: list[str] | None = None) -> int:
    preset_dims = {
        k: "the --preset's: " + ", ".join(f"{name} {dims[k]}" for name, dims in PRESETS.items())
        for k in PRESETS["cpu"]
    }
    args = parse_args(
        TrainConfig,
        argv,
        prog="python -m training.switchboard",
        description=__doc__,
        nested={"model": (ModelConfig, "ModelConfig fields (model/config.py), over the --preset")},
        nested_defaults={"model": preset_dims},
    )
    model_overrides = args.given.pop("model", {})
    train_overrides = args.given
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    try:
        out = Path(train_overrides.get("out", TrainConfig.out))
        if train_overrides.get("resume") and (out / STATE_FILE).exists():
            train_overrides, model_overrides = settings_for_resume(
                out, train_overrides, model_overrides
            )
        train(TrainConfig(**train_overrides), model_overrides)
    except (RunError, CorpusError, CheckpointError) as e:
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
