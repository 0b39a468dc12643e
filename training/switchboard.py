"""Train a CVAE / CVAE+BOW / BN-CVAE on a prepared Switchboard corpus.

    python -m training.prepare --out runs/data/switchboard
    python -m training.switchboard --variant bn-cvae --preset cpu --out runs/bn-cvae

The run directory gets the resolved ``config.json``, ``metrics.jsonl`` (train and validation
records), ``curves.png``, the best checkpoint in ``best/`` (by validation -ELBO), the final one
in ``last/`` (with ``--kl-settle-window``, also the best from before the KL settled in
``best-before-kl-settled/``), and ``training_state.pt`` (weights, optimizer, step, data
position and RNG state) from which ``--resume`` continues exactly where the run was, even after
SIGKILL. Ctrl-C or SIGTERM stops a run after its current step with its state saved; a second
one stops it at once.

Several processes: ``torchrun --nproc_per_node N -m training.switchboard ...`` trains with
DistributedDataParallel (gloo on CPU, nccl on GPUs); each batch's segments are split between
the processes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import torch
import torch.distributed as dist
from tqdm import tqdm

from model.checkpoint import CheckpointError, load_pretrained, save_pretrained
from model.cli import CommandLine, ConfigValueError, check, parse_args, read_config_file
from model.config import PRESETS, VARIANTS, ModelConfig
from model.cvae import DialogCVAE, LikelihoodTotals, resolve_device
from model.files import (
    append_line,
    atomic_write_bytes,
    atomic_write_text,
    os_error_line,
    read_bytes,
    remove_temporaries,
)
from training.backend import (
    PRECISIONS,
    SWITCH_CHOICES,
    autocast,
    make_adam,
    onednn_fp32_matmul,
    resolve_batched_gru,
    resolve_onednn,
)
from training.batching import Prefetcher, SegmentBatches, eval_batches
from training.corpus import CorpusError
from training.curves import plot_curves
from training.prepare import load_prepared
from training.sync_bn import synchronize_batch_norm

log = logging.getLogger("training")

STATE_FILE = "training_state.pt"
METRICS_FILE = "metrics.jsonl"
# What a run directory holds; a kill while one was being written leaves a ".<name>.*" temporary,
# which the next start of the run removes.
BEST_BEFORE_KL_SETTLED = "best-before-kl-settled"
RUN_FILES = ("best", BEST_BEFORE_KL_SETTLED, "last", STATE_FILE, METRICS_FILE, "config.json",
             "summary.json", "curves.png")  # fmt: skip
# Flags that may differ when a run is resumed: they do not change what is computed, only where
# (epochs, max_steps: to extend a run), how fast it runs, and when it stops (the stopping rule
# is replayed over the run's validations: Run.replay_stopping). onednn_matmul and batched_gru
# change only float32 rounding: the kernels differ, the arithmetic does not.
RESUMABLE_CHANGES = ("resume", "threads", "device", "epochs", "max_steps", "patience",
                     "kl_settle_window", "kl_settle_tolerance", "onednn_matmul",
                     "batched_gru")  # fmt: skip
# Model options that shape only the training objective: a run started from a checkpoint
# (--init-from) may set them anew; every other model field must be the checkpoint's.
TRAINING_ONLY = (
    "dropout",
    "unlikelihood_weight",
    "sequence_unlikelihood_weight",
    "context_contrast_weight",
    "prior_kl_weight",
    "bow_weight",
)

# A valid KL that moves by less than this (nats per example) has settled whatever its relative
# change: near zero the relative change of a KL is noise.
KL_SETTLED_NATS = 0.01


class RunError(ValueError):
    """A run cannot start or resume (bad state file, mismatched settings, empty data)."""


class Interrupted(Exception):
    """Training stopped by Ctrl-C or SIGTERM after saving its state; ``exit_code`` is 128 +
    the signal's number, as a shell reports a process killed by it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def nothing_to_resume(out: Path) -> RunError:
    """The error of ``--resume`` on a directory without a training state: it never starts the
    run afresh (that would overwrite the run's config.json)."""
    if (out / "config.json").is_file():
        why = "the run stopped before its first save; start it again without --resume"
    elif out.is_dir():
        why = "not a training run directory"
    else:
        why = "no such directory"
    return RunError(f"{out}: nothing to resume, no {STATE_FILE} ({why})")


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
    seed: int = field(default=0, metadata=_help("random seed", ge=0))
    # A batch is batch_segments runs of segment_size consecutive responses, each from a random
    # dialog: 8 x 8 = 64 examples from ~8 dialogs, so batch normalization sees many
    # conversations while each utterance is still encoded once per batch (measured with
    # benchmarks/train_throughput.py: 2.3x the per-window path at the paper dims; 4 x 16 was 2.5x
    # with 4 dialogs, 16 x 4 2.0x, 32 x 2 1.6x).
    segment_size: int = field(
        default=8, metadata=_help("consecutive responses of one dialog in a batch", ge=1)
    )
    batch_segments: int = field(default=8, metadata=_help("segments (dialogs) per batch", ge=1))
    lr: float = field(default=1e-3, metadata=_help("Adam learning rate", gt=0))
    grad_clip: float = field(default=5.0, metadata=_help("gradient norm clipping", gt=0))
    kl_anneal_steps: int = field(
        default=5000,
        metadata=_help("the KL weight rises linearly from 0 to 1 over these steps", ge=0),
    )
    # bn-cvae: anneal the extra KL(p(z|c) || N(0,I)) term with the same weight (the paper is
    # silent; the default was chosen by a measured short run of each, docs/results.md).
    anneal_prior_kl: bool = field(
        default=False,
        metadata=_help("bn-cvae: anneal KL(p(z|c) || N(0,I)) with the same weight"),
    )
    epochs: int = field(
        default=4,
        metadata=_help("the most epochs a run trains; validation may stop it earlier", ge=1),
    )
    max_steps: int = field(
        default=0, metadata=_help("stop after this many steps (0: all epochs)", ge=0)
    )
    eval_every: int = field(
        default=1000, metadata=_help("validate (and keep the best checkpoint) every N steps", ge=1)
    )
    save_every: int = field(
        default=250, metadata=_help("save the training state (for --resume)", ge=1)
    )
    # Counted once the KL annealing is over.
    patience: int = field(
        default=6,
        metadata=_help("stop after this many validations in a row without a better -ELBO", ge=1),
    )
    # A model whose KL is still moving (the CVAE's falls for long after the annealing) is not
    # yet the model it converges to: with a window, patience counts only the validations from
    # the first one at which the valid KL has settled (kl_settled) on.
    kl_settle_window: int = field(
        default=0,
        metadata=_help(
            "patience counts only once the valid KL has settled over this many validations "
            "(0: from the end of the KL annealing)",
            ge=0,
        ),
    )
    kl_settle_tolerance: float = field(
        default=0.05,
        metadata=_help(
            "the valid KL has settled when its range over the window is at most this fraction "
            f"of its mean (or at most {KL_SETTLED_NATS} nats)",
            ge=0,
        ),
    )
    valid_dialogs: int = field(
        default=0, metadata=_help("validate on the first N valid dialogs (0: all)", ge=0)
    )
    log_every: int = field(default=50, metadata=_help("log training metrics every N steps", ge=1))
    threads: int = field(
        default=0,
        metadata=_help(
            "torch threads (0: torch's default); runs with the same seed, data, options and "
            "thread count give bit-identical weights, resumed or not",
            ge=0,
        ),
    )
    device: str = field(
        default="auto",
        metadata=_help("auto: the GPU when present", choices=("auto", "cpu", "cuda")),
    )
    precision: str = field(
        default="fp32",
        metadata=_help(
            "fp32, or bf16-autocast: the forward pass in bfloat16 where torch.autocast allows "
            "(weights, optimizer and loss sums stay float32; changes the numbers, opt-in)",
            choices=PRECISIONS,
        ),
    )
    onednn_matmul: str = field(
        default="auto",
        metadata=_help(
            "CPU float32 matmuls through oneDNN; auto: when a start-up check finds it "
            "float32-exact and faster on this CPU (logged; the run's config keeps the answer)",
            choices=SWITCH_CHOICES,
        ),
    )
    batched_gru: str = field(
        default="auto",
        metadata=_help(
            "train the GRUs with model/packed_gru.py (input projections and weight gradients "
            "in one product per batch, not per time step); auto: on a CPU in fp32 (the run's "
            "config keeps the answer)",
            choices=SWITCH_CHOICES,
        ),
    )
    sync_bn: bool = field(
        default=False,
        metadata=_help(
            "several processes: batch-norm statistics over the whole batch, not each share"
        ),
    )
    resume: bool = field(
        default=False,
        metadata=_help("continue the run in --out with its own settings (config.json)"),
    )
    # A fine-tune that should leave the latent space alone (e.g. the sequence-level
    # unlikelihood against greedy loops) trains the decoder only, so the KL stays the model's.
    train_only: str = field(
        default="all",
        metadata=_help(
            "which weights train: all, or the decoder alone (the rest frozen, in eval mode)",
            choices=("all", "decoder"),
        ),
    )
    init_from: str = field(
        default="",
        metadata=_help(
            "start from this checkpoint's weights (fine-tuning; a fresh optimizer): its "
            "vocabulary and model must be this run's, but for the training-only --model options"
        ),
    )

    def __post_init__(self):
        check(self)  # the ranges in each field's metadata (model/cli.py), from flags or a file


def kl_settled(valid_kls: list[float], window: int, tolerance: float) -> bool:
    """Whether the last ``window`` + 1 validation KLs (the last ``window`` changes) vary by at
    most ``tolerance`` times their mean, or by at most KL_SETTLED_NATS; always True for
    ``window`` 0, never before there are that many validations."""
    if window <= 0:
        return True
    if len(valid_kls) < window + 1:
        return False
    last = valid_kls[-(window + 1) :]
    spread = max(last) - min(last)
    return spread <= KL_SETTLED_NATS or spread <= tolerance * abs(sum(last) / len(last))


def stopping_update(progress: Progress, cfg: TrainConfig, valid_loss: float,
                    valid_kls: list[float]) -> bool:  # fmt: skip
    """One validation's effect on when the run stops: its -ELBO ``valid_loss`` and the valid
    KLs so far (its own last) update ``progress``'s best, bad_rounds, kl_settled_step and
    best_step_before_kl_settled; True when it is the new best (to keep in best/)."""
    settled = progress.step >= cfg.kl_anneal_steps and kl_settled(
        valid_kls, cfg.kl_settle_window, cfg.kl_settle_tolerance
    )
    if cfg.kl_settle_window and settled and not progress.kl_settled_step:
        # The model the run converges to is one whose KL has settled: the checkpoints from
        # before compete no more (Run.keep_best_before_kl_settled moves best/ aside).
        progress.best_step_before_kl_settled = progress.best_step
        progress.kl_settled_step, progress.best = progress.step, math.inf
        log.info("step %d: the valid KL has settled", progress.step)
    if valid_loss < progress.best:
        progress.best, progress.best_step, progress.bad_rounds = valid_loss, progress.step, 0
        return True
    # Once settled, every later validation counts, as for best/: a KL that then moves by a few
    # percent between validations (noise, at ~0.3 nats) must not keep the run going to the cap.
    if settled or progress.kl_settled_step:
        progress.bad_rounds += 1
    return False


@torch.no_grad()
def validate(model: DialogCVAE, batches, device, seed: int) -> dict:
    """Validation -ELBO with z ~ q(z|c,x), drawn from a fixed seed so the training RNG is untouched."""
    was_training = model.training
    model.eval()
    totals = LikelihoodTotals()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for batch in batches:
            totals.add(model(batch.to(device)))
    model.train(was_training)
    n = totals.examples
    return {
        "valid_loss": (totals.nll + totals.kl) / n,
        "valid_nll": totals.nll / n,
        "valid_kl": totals.kl / n,
        "valid_prior_kl": totals.prior_kl / n,
        "valid_ppl": totals.ppl,
        "valid_elbo_ppl": totals.elbo_ppl,
    }


def _read_metrics(path: Path, upto_step: int) -> list[dict]:
    """Records up to ``upto_step`` (a resumed run drops what it is about to redo).

    A kill during an append can leave the last line cut off: it is dropped (the resumed run
    writes its record again). A bad line before the last is an error naming it."""
    if not path.exists():
        return []
    try:
        lines = read_bytes(path).decode("utf-8", errors="replace").splitlines()
    except OSError as e:
        raise RunError(os_error_line(e)) from e
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not a record with a step")
        except ValueError as e:
            if number < len(lines):
                raise RunError(f"{path}:{number}: not a metrics record ({e})") from e
            log.warning("%s:%d: dropped a torn last line (cut off while it was written): %.60r",
                        path, number, line)  # fmt: skip
            continue
        records.append(record)
    return [r for r in records if r["step"] <= upto_step]


class StopOnSignal:
    """While in effect, Ctrl-C (SIGINT) and SIGTERM ask the training loop to stop after its
    current step (it then saves the state); a second signal interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signal.signal needs it
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


@dataclass
class Progress:
    """Where a run is: saved in its training state, and the start of its ``summary.json``."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of this epoch already trained on (where to resume)
    best: float = math.inf  # the best validation -ELBO so far
    bad_rounds: int = 0  # validations in a row without a better one, after the KL annealing
    best_step: int = 0
    train_seconds: float = 0.0
    stopped_early: bool = False
    # With --kl-settle-window: the step of the first validation at which the valid KL had
    # settled (0: not yet); only the validations from there on compete for best/ and count
    # towards the patience. best_step_before_kl_settled: the step of the model then moved aside.
    kl_settled_step: int = 0
    best_step_before_kl_settled: int = 0


class TrainingWindow:
    """Sums over the steps since the last train record (one record every ``log_every`` steps).

    The sums stay on the training device (float64, added in the order the steps come, as
    Python floats would be) and are read once per record: a step never waits for the device.
    Saved with the training state, so that a resumed run logs what the uninterrupted one would.
    """

    def __init__(self, sums: dict[str, float] | None = None, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self._sums = {k: self._scalar(v) for k, v in (sums or {}).items()}

    def _scalar(self, value) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value.detach().to(self.device, torch.float64)
        return torch.tensor(float(value), dtype=torch.float64, device=self.device)

    def add(self, out, examples: int) -> None:
        values = {"loss": out.loss, "nll": out.nll.sum(), "kl": out.kl.sum(),
                  "tokens": out.tokens.sum(), "examples": examples}  # fmt: skip
        if "repeating" in out.extras:  # sequence-level unlikelihood: its loss, and how many
            values["sequence_ul"] = out.sequence_unlikelihood.sum()  # greedy responses
            values["repeating"] = out.extras["repeating"].sum()  # loop
        if "context_gap" in out.extras:  # context contrast: nats per token own over other
            values["context_gap"] = out.extras["context_gap"].sum()
        for key, value in values.items():
            value = self._scalar(value)
            self._sums[key] = value if key not in self._sums else self._sums[key] + value

    def sums(self) -> dict[str, float]:
        """The sums as floats (one read from the device)."""
        if not self._sums:
            return {}
        return dict(zip(self._sums, torch.stack(list(self._sums.values())).tolist(), strict=True))

    def record(self, progress: Progress, kl_weight: float, steps: int, elapsed: float) -> dict:
        """The train record of the last ``steps`` steps; the window starts again."""
        s = self.sums()
        n = s["examples"]
        entry = {
            "step": progress.step, "split": "train", "epoch": progress.epoch,
            "kl_weight": kl_weight, "train_loss": (s["nll"] + s["kl"]) / n,
            "train_objective": s["loss"] / steps, "train_kl": s["kl"] / n,
            "train_ppl": math.exp(s["nll"] / s["tokens"]), "elapsed_s": elapsed,
        }  # fmt: skip
        if "repeating" in s:
            entry["train_sequence_ul"] = s["sequence_ul"] / n
            entry["train_repeating"] = s["repeating"] / n  # share of greedy responses that loop
        if "context_gap" in s:
            entry["train_context_gap"] = s["context_gap"] / n
        self._sums.clear()
        return entry


class Run:
    """One training run, in the steps :func:`train` takes: set up (:meth:`__init__`),
    :meth:`resume`, :meth:`step` on each batch, :meth:`validate_and_checkpoint`,
    :meth:`save_state`, and :meth:`finish`."""

    def __init__(self, cfg: TrainConfig, model_overrides: dict | None = None):
        self.cfg = cfg
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        try:
            self.device = device = resolve_device(cfg.device)
        except ValueError as e:
            raise RunError(str(e)) from None
        if self.world > 1:
            if device.type == "cuda":
                self.device = device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        # Bit-identical runs (and resumes) for a given seed and thread count: with more than one
        # thread, some CPU kernels' defaults accumulate in a varying order (two 2-thread runs of
        # the cpu preset differed by 0.006 in a weight after 30 steps; with this, not at all).
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Resolved once, and written into config.json as on/off, so a resumed run keeps it.
        cfg.onednn_matmul = "on" if resolve_onednn(cfg.onednn_matmul, device) else "off"
        batched = resolve_batched_gru(cfg.batched_gru, device, cfg.precision)
        cfg.batched_gru = "on" if batched else "off"
        log.info("batched GRU training (model/packed_gru.py): %s", cfg.batched_gru)
        self.out = Path(cfg.out)
        self.state_path = self.out / STATE_FILE
        if self.state_path.exists() and not cfg.resume:
            raise RunError(f"{self.out} already holds a run; pass --resume or choose another --out")
        if cfg.resume and not self.state_path.exists():
            raise nothing_to_resume(self.out)

        corpus = load_prepared(cfg.data)
        self.vocab = vocab = corpus.vocab
        train_dialogs = [d.turns() for d in corpus.train]
        valid_dialogs = [d.turns() for d in corpus.valid]
        if cfg.valid_dialogs > 0:
            valid_dialogs = valid_dialogs[: cfg.valid_dialogs]
        for split, dialogs in (("train", train_dialogs), ("valid", valid_dialogs)):
            if not any(dialogs):
                raise RunError(f"{Path(cfg.data) / (split + '.jsonl')}: no {split} dialogs")
        self.model_config = mcfg = ModelConfig.preset(
            cfg.preset,
            variant=cfg.variant,
            vocab_size=len(vocab),
            tokenizer=corpus.tokenizer,
            **(model_overrides or {}),
        )
        torch.manual_seed(cfg.seed)
        self.model = DialogCVAE(mcfg).to(device).use_batched_gru(cfg.batched_gru == "on")
        if cfg.train_only == "decoder":
            self.model.freeze_all_but_decoder()
        if cfg.sync_bn and self.world > 1:
            synchronize_batch_norm(self.model)
        self.optimizer = make_adam(
            (p for p in self.model.parameters() if p.requires_grad), cfg.lr, device
        )
        self.batches = SegmentBatches(
            train_dialogs, vocab, cfg.segment_size, cfg.batch_segments,
            mcfg.max_context, mcfg.max_utt_len, seed=cfg.seed,
        )  # fmt: skip
        self.valid = list(eval_batches(valid_dialogs, vocab, 4, mcfg.max_context, mcfg.max_utt_len))
        self.num_train_dialogs = len(train_dialogs)
        self.progress = Progress()
        self.window = TrainingWindow(device=device)
        self.history: list[dict] = []
        self.metrics_path = self.out / METRICS_FILE
        self._clock_started = time.perf_counter()

    def load_weights(self, checkpoint: Path) -> None:
        """The weights of ``checkpoint`` (``--init-from``), whose vocabulary and model fields
        (but ``TRAINING_ONLY``) must be this run's."""
        try:
            model, vocab = load_pretrained(checkpoint)
        except CheckpointError as e:
            raise RunError(str(e)) from None
        if vocab.words != self.vocab.words:
            raise RunError(f"{checkpoint / 'vocab.json'}: not the vocabulary of {self.cfg.data}")
        ours, theirs = self.model_config.to_dict(), model.config.to_dict()
        differ = [f"{k} {theirs[k]!r} (this run: {ours[k]!r})" for k in ours
                  if k not in TRAINING_ONLY and ours[k] != theirs[k]]  # fmt: skip
        if differ:
            raise RunError(f"{checkpoint / 'config.json'}: another model: " + ", ".join(differ)
                           + "; give the checkpoint's --variant, --preset and --model options")  # fmt: skip
        self.model.load_state_dict(model.state_dict())
        log.info("weights from %s", checkpoint)

    def resume(self) -> None:
        """Continue from the training state if there is one (``--resume``), else seed this
        process; then write the run's config and the metrics kept so far."""
        cfg, mcfg = self.cfg, self.model_config
        if self.rank == 0 and self.out.is_dir():
            remove_temporaries(self.out, RUN_FILES)
        if cfg.resume:
            state = load_training_state(self.state_path)
            # (through from_dict: a field added since the state was saved takes its default,
            # which is the behaviour the run had)
            try:
                saved = ModelConfig.from_dict(state["model_config"])
            except (TypeError, ValueError) as e:
                raise RunError(f"{self.state_path}: bad model config: {e}") from e
            if saved != mcfg:
                raise RunError(
                    f"{self.state_path}: saved with a different model config; cannot resume"
                )
            try:
                self.model.load_state_dict(state["model"])
                self.optimizer.load_state_dict(state["optimizer"])
            except (RuntimeError, ValueError, KeyError) as e:
                raise RunError(f"{self.state_path}: does not fit this model: {e}") from e
            self.progress = Progress(**state["progress"])
            self.window = TrainingWindow(state.get("running"), device=self.device)
            rng = state["rng"]
            torch.set_rng_state(rng[self.rank] if self.rank < len(rng) else rng[0])
            log.info("resumed from %s at step %d", self.state_path, self.progress.step)
        else:
            # A fresh run (a resumed one has its weights from the state, and needs no
            # --init-from checkpoint any more).
            if cfg.init_from:
                self.load_weights(Path(cfg.init_from))
            torch.manual_seed(cfg.seed + self.rank)

        self.ddp: torch.nn.Module = self.model  # what a step calls: DDP's wrapper across processes
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model)
        self.history = _read_metrics(self.metrics_path, self.progress.step)
        if cfg.resume:
            self.replay_stopping()
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            resolved = {"train": dataclasses.asdict(cfg), "model": mcfg.to_dict(),
                        "world_size": self.world}  # fmt: skip
            atomic_write_text(self.out / "config.json", json.dumps(resolved, indent=2) + "\n")
            atomic_write_text(
                self.metrics_path, "".join(json.dumps(r) + "\n" for r in self.history)
            )
            log.info("model: %s, %.2fM parameters; %d train dialogs, %d segments, %d batches/epoch",
                     mcfg.variant, sum(p.numel() for p in self.model.parameters()) / 1e6,
                     self.num_train_dialogs, len(self.batches.segments), len(self.batches))  # fmt: skip

    def record(self, entry: dict) -> None:
        self.history.append(entry)
        if self.rank == 0:
            append_line(self.metrics_path, json.dumps(entry))

    def start_clock(self) -> None:
        self._clock_started = time.perf_counter()

    def train_seconds(self) -> float:
        """The run's training time so far: what earlier sessions banked, and this one's."""
        return self.progress.train_seconds + time.perf_counter() - self._clock_started

    def kl_weight(self) -> float:
        """The KL annealing: from 0 up to 1 over the first kl_anneal_steps steps."""
        return min(1.0, self.progress.step / max(1, self.cfg.kl_anneal_steps))

    def step(self, batch) -> dict | None:
        """One optimizer step on ``batch``; every log_every steps, the train record it logs."""
        cfg, progress = self.cfg, self.progress
        kl_weight = self.kl_weight()
        prior_kl_weight = self.model_config.prior_kl_weight * (
            kl_weight if cfg.anneal_prior_kl else 1.0
        )
        with autocast(cfg.precision, self.device):
            out = self.ddp(
                batch.to(self.device), kl_weight=kl_weight, prior_kl_weight=prior_kl_weight
            )
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        progress.step += 1
        progress.batch_in_epoch += 1
        self.window.add(out, batch.num_examples)
        if progress.step % cfg.log_every:
            return None
        entry = self.window.record(progress, kl_weight, cfg.log_every, self.train_seconds())
        self.record(entry)
        return entry

    def validate_and_checkpoint(self) -> bool:
        """Validate, keep the best checkpoint in ``best/``; True when patience runs out."""
        cfg, progress = self.cfg, self.progress
        stop = False
        if self.rank == 0:
            v = validate(self.model, self.valid, self.device, cfg.seed)
            self.record({"step": progress.step, "split": "valid", **v})
            log.info("step %d valid: %s", progress.step,
                     " ".join(f"{k}={x:.3f}" for k, x in v.items()))  # fmt: skip
            settled_before = progress.kl_settled_step
            is_best = stopping_update(progress, cfg, v["valid_loss"], self.valid_kls())
            if progress.kl_settled_step and not settled_before:
                self.keep_best_before_kl_settled()
            if is_best:
                meta = {"step": progress.step, **v, "train_config": dataclasses.asdict(cfg)}
                save_pretrained(self.model, self.vocab, self.out / "best", metadata=meta)
            stop = progress.bad_rounds >= cfg.patience
            title = f"{self.model_config.variant} ({cfg.preset})"
            marks = {
                "best/": progress.best_step,
                "KL settled": progress.kl_settled_step,
                BEST_BEFORE_KL_SETTLED + "/": progress.best_step_before_kl_settled,
            }
            plot_curves(self.history, self.out / "curves.png", title=title, marks=marks)
        if self.world > 1:
            # (Any: broadcast_object_list replaces the items with rank 0's objects)
            shared: list[Any] = [stop, progress.best, progress.bad_rounds, progress.best_step,
                                 progress.kl_settled_step,
                                 progress.best_step_before_kl_settled]  # fmt: skip
            dist.broadcast_object_list(shared, src=0)
            stop, progress.best, progress.bad_rounds, progress.best_step = shared[:4]
            progress.kl_settled_step, progress.best_step_before_kl_settled = shared[4:]
        return stop

    def keep_best_before_kl_settled(self) -> None:
        """Move best/ (the best by -ELBO alone, what plain early stopping keeps) aside when the
        KL has just settled, so the model the rule passed over can be evaluated beside the one
        it keeps (the next best/)."""
        best, aside = self.out / "best", self.out / BEST_BEFORE_KL_SETTLED
        # Already aside: this validation is replayed by a run resumed from before it, and
        # best/ may hold what it kept then (the same settled model, training being exact).
        if best.exists() and not aside.exists():
            best.rename(aside)

    def valid_kls(self) -> list[float]:
        return [r["valid_kl"] for r in self.history if r.get("split") == "valid"]

    def replay_stopping(self) -> None:
        """On --resume: the stopping state under this run's stopping flags (which may differ
        from the ones it ran with), by replaying :func:`stopping_update` over its validations.
        A run that patience stopped goes on when the new rule would not have stopped it (a CVAE
        whose KL had not settled). Refused when the rule would keep another checkpoint than the
        best/ on disk."""
        cfg, progress = self.cfg, self.progress
        replay, kls = Progress(), []
        for r in self.history:
            if r.get("split") == "valid":
                kls.append(r["valid_kl"])
                replay.step = r["step"]
                stopping_update(replay, cfg, r["valid_loss"], kls)
        if replay.best_step != progress.best_step:
            raise RunError(
                f"{self.out}: under these stopping flags best/ would be step {replay.best_step}, "
                f"but it holds step {progress.best_step}; resume with the run's own flags"
            )
        stop = replay.bad_rounds >= cfg.patience
        if progress.stopped_early and not stop:
            log.info("step %d: the stopping flags given no longer stop the run; it goes on",
                     progress.step)  # fmt: skip
        progress.best, progress.bad_rounds = replay.best, replay.bad_rounds
        progress.kl_settled_step, progress.stopped_early = replay.kl_settled_step, stop
        progress.best_step_before_kl_settled = replay.best_step_before_kl_settled

    def save_state(self) -> None:
        """``training_state.pt``: what :meth:`resume` needs to go on exactly from here (with
        this session's time so far added to ``progress.train_seconds``)."""
        self.progress.train_seconds = self.train_seconds()
        self.start_clock()
        rng = [torch.get_rng_state()]
        if self.world > 1:
            gathered: list[Any] = [None] * self.world  # all_gather_object puts each rank's in
            dist.all_gather_object(gathered, torch.get_rng_state())
            rng = gathered
        if self.rank == 0:
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "progress": dataclasses.asdict(self.progress),
                "rng": rng,
                "model_config": self.model_config.to_dict(),
                "running": self.window.sums(),
            }
            # Serialized in memory first: torch.save into a file on a full disk fails with an
            # error that does not say so ("unexpected pos"); a plain write says ENOSPC.
            buffer = io.BytesIO()
            torch.save(state, buffer)
            atomic_write_bytes(self.state_path, buffer.getbuffer())

    def stop_requested(self, stop: StopOnSignal) -> bool:
        """Whether a signal asked the run to stop (in any of its processes)."""
        asked = stop.signum is not None
        if self.world > 1:
            flag = torch.tensor([stop.signum or 0])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop.signum = int(flag.item()) or None
            asked = stop.signum is not None
        return asked

    def finish(self) -> None:
        """The last checkpoint in ``last/`` and ``summary.json``."""
        cfg, progress = self.cfg, self.progress
        if self.rank == 0:
            meta = {"step": progress.step, "train_config": dataclasses.asdict(cfg)}
            save_pretrained(self.model, self.vocab, self.out / "last", metadata=meta)
            if progress.stopped_early:
                reason = f"patience: {cfg.patience} validations without improvement"
                if cfg.kl_settle_window:
                    reason += f" once the valid KL had settled ({cfg.kl_settle_window} validations)"
            elif cfg.max_steps and progress.step >= cfg.max_steps:
                reason = f"max_steps {cfg.max_steps}"
            else:
                reason = f"max epochs {cfg.epochs}"
            examples = progress.step * self.batches.examples_per_batch()
            summary = {
                **dataclasses.asdict(progress), "stop_reason": reason,
                "variant": self.model_config.variant, "preset": cfg.preset,
                "examples_per_second": examples / max(progress.train_seconds, 1e-9),
            }  # fmt: skip
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
            log.info("done: %d steps in %.0f s; best valid loss %.3f at step %d", progress.step,
                     progress.train_seconds, progress.best, progress.best_step)  # fmt: skip
        if self.world > 1:
            dist.barrier()
            dist.destroy_process_group()


def train(cfg: TrainConfig, model_overrides: dict | None = None) -> Path:
    """Train until patience, max_steps or max epochs; returns the run directory."""
    run = Run(cfg, model_overrides)
    run.resume()
    progress = run.progress
    total = cfg.max_steps or cfg.epochs * len(run.batches)
    bar = tqdm(total=total, initial=progress.step, disable=run.rank != 0, desc=cfg.variant)
    run.ddp.train()
    run.start_clock()
    done = progress.stopped_early or progress.step >= total
    with StopOnSignal() as stop, onednn_fp32_matmul(cfg.onednn_matmul == "on"):
        try:
            while not done and progress.epoch < cfg.epochs:
                done = _train_epoch(run, total, bar, stop)
        finally:
            bar.close()

    if progress.step % cfg.eval_every != 0:
        run.validate_and_checkpoint()
    run.save_state()
    run.finish()
    return run.out


def _train_epoch(run: Run, total: int, bar: tqdm, stop: StopOnSignal) -> bool:
    """The rest of the current epoch; True when the run is done (or raises Interrupted)."""
    cfg, progress = run.cfg, run.progress
    batches = run.batches.epoch(progress.epoch, progress.batch_in_epoch, run.rank, run.world)
    with Prefetcher(batches, run.device) as epoch:  # the next batches built on a thread
        for batch in epoch:
            entry = run.step(batch)
            bar.update(1)
            if entry is not None:
                bar.set_postfix(loss=f"{entry['train_loss']:.2f}", kl=f"{entry['train_kl']:.2f}",
                                ppl=f"{entry['train_ppl']:.1f}")  # fmt: skip
            step = progress.step
            if step % cfg.eval_every == 0 and run.validate_and_checkpoint():
                progress.stopped_early = True
                log.info("early stopping at step %d (best step %d)", step, progress.best_step)
            if step % cfg.save_every == 0 or progress.stopped_early or step >= total:
                run.save_state()
            if progress.stopped_early or step >= total:
                return True
            if run.stop_requested(stop):
                assert stop.signum is not None, "stop_requested: a signal's number is set"
                run.save_state()
                name = signal.Signals(stop.signum).name
                raise Interrupted(
                    f"{name}: stopped at step {step} with the training state saved in "
                    f"{run.state_path}; --resume --out {run.out} continues the run",
                    stop.signum,
                )
    progress.epoch += 1
    progress.batch_in_epoch = 0
    return False


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
    if not (out / STATE_FILE).exists():
        raise nothing_to_resume(out)
    if not path.exists():
        raise RunError(f"{path}: missing; nothing to resume in {out}")
    try:
        saved_train = read_config_file(path, TrainConfig, CONFIG_LAYOUT, **CONFIG_FILE_LAYOUT)
    except ConfigValueError as e:
        raise RunError(f"{e}; cannot resume") from None
    saved_model = saved_train.pop("model", {})
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


class ConfigFileLayout(TypedDict):  # read_config_file's keywords
    section: str
    ignore: tuple[str, ...]


# A run's config.json, and a recipe (recipes/*.json): {"train": TrainConfig, "model": ModelConfig}.
CONFIG_LAYOUT = {"model": ModelConfig}
CONFIG_FILE_LAYOUT: ConfigFileLayout = {"section": "train", "ignore": ("world_size",)}


def resolved_settings(args: CommandLine) -> dict:
    """What ``--print-config`` prints: the run's settings in the layout of its ``config.json``
    (the model's with the preset applied; a file of it is a recipe)."""
    train = {k: v for k, v in args.values.items() if k != "model"}
    model = ModelConfig.preset(
        train["preset"], variant=train["variant"], **args.given.get("model", {})
    ).to_dict()
    for name in ("variant", "vocab_size", "tokenizer"):  # --variant's, and the corpus's
        model.pop(name)
    return {"train": train, "model": model}


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
        config_section=CONFIG_FILE_LAYOUT["section"],
        config_ignore=CONFIG_FILE_LAYOUT["ignore"],
        resolve=resolved_settings,
    )
    model_overrides = args.given.pop("model", {})
    train_overrides = args.given
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    try:
        out = Path(train_overrides.get("out", TrainConfig.out))
        if train_overrides.get("resume"):
            train_overrides, model_overrides = settings_for_resume(
                out, train_overrides, model_overrides
            )
        train(TrainConfig(**train_overrides), model_overrides)
    except (RunError, CorpusError, CheckpointError) as e:
        log.error("%s", e)
        return 2
    except OSError as e:  # a full disk, no permission: what the files already hold stays
        log.error("%s", os_error_line(e))
        return 1
    except Interrupted as e:
        log.error("%s", e)
        return e.exit_code
    except KeyboardInterrupt:
        log.error("interrupted; the last saved training state is kept (--resume continues it)")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
