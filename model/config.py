"""The model's configuration: :class:`ModelConfig`, its presets and variants.

The configuration/modeling split of Hugging Face's libraries: this module holds what a model is
(sizes, variant, tokenizer; saved in a checkpoint's ``config.json``) and imports no torch;
:mod:`model.cvae` builds the network from it. Each field's ``metadata["help"]`` is the help
text of its ``--model.<field>`` option of ``python -m training.switchboard`` (:mod:`model.cli`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from model.cli import check
from model.text import DEFAULT_TOKENIZER, TOKENIZERS

VARIANTS = ("cvae", "cvae-bow", "bn-cvae")
BN_GAMMA_MODES = ("fixed", "learned")

PRESETS: dict[str, dict] = {
    # The paper's (and Zhao et al.'s) dimensions.
    "paper": dict(embed_dim=200, utt_hidden=300, ctx_hidden=600, dec_hidden=400, latent_dim=200),
    # Chosen by measurement: ~440 training examples/s on 2 CPU cores, so a 4-epoch Switchboard
    # run (12k steps) takes ~25 min alone (up to ~65 when sharing the cores); the paper dims
    # train at ~210 examples/s (README).
    "cpu": dict(embed_dim=128, utt_hidden=128, ctx_hidden=256, dec_hidden=256, latent_dim=64),
    # For tests.
    "tiny": dict(embed_dim=16, utt_hidden=16, ctx_hidden=24, dec_hidden=24, latent_dim=8),
}


# The largest values a model may declare (a checkpoint's config.json is held to them at load):
# beyond them the model cannot be served. A request's tensors are [turns x max_utt_len] and the
# service reads max_context turns, so these bound what one request may cost; Switchboard needs
# 10 turns and 40 tokens, and the largest size the project uses is 10,005 (the vocabulary).
MAX_CONTEXT = 100
MAX_UTT_LEN = 500
MAX_SIZE = 1_000_000


def _help(text: str, **more) -> dict:
    return {"help": text, **more}


@dataclass
class ModelConfig:
    # variant, vocab_size and tokenizer are no --model.<field> options: the variant comes from
    # --variant, the vocabulary and its tokenizer from the prepared corpus.
    variant: str = field(
        default="bn-cvae", metadata=_help("model variant", choices=VARIANTS, cli=False)
    )
    vocab_size: int = field(
        default=10_005, metadata=_help("vocabulary size", cli=False, ge=1, le=MAX_SIZE)
    )
    embed_dim: int = field(default=200, metadata=_help("word embedding size", ge=1, le=MAX_SIZE))
    utt_hidden: int = field(
        default=300,
        metadata=_help("per direction of the bidirectional utterance GRU", ge=1, le=MAX_SIZE),
    )
    ctx_hidden: int = field(default=600, metadata=_help("context GRU size", ge=1, le=MAX_SIZE))
    dec_hidden: int = field(default=400, metadata=_help("decoder GRU size", ge=1, le=MAX_SIZE))
    latent_dim: int = field(
        default=200, metadata=_help("size of the latent variable z", ge=1, le=MAX_SIZE)
    )
    max_context: int = field(
        default=10, metadata=_help("context utterances seen per response", ge=1, le=MAX_CONTEXT)
    )
    max_utt_len: int = field(
        default=40, metadata=_help("words kept per utterance", ge=1, le=MAX_UTT_LEN)
    )
    bn_gamma: float = field(
        default=0.6,
        metadata=_help(
            "the BN scale on the posterior mean (bn-cvae): fixed, gamma itself; learned, the "
            "root mean square of the per-dimension gammas",
            gt=0,
        ),
    )
    # Zhu et al. (2020) share one frozen gamma (Eq. 5); learning one per dimension is their
    # future work (Appendix A.1), done as DU-VAE (Shen et al. 2021) does it: rescaled so that
    # RMS(gamma) = bn_gamma, which keeps the Eq. 6 bound on the expected KL (model/cvae.py).
    bn_gamma_mode: str = field(
        default="fixed",
        metadata=_help(
            "bn-cvae: one frozen gamma for every latent dimension (fixed: Zhu et al.'s), or a "
            "learned gamma per dimension rescaled to RMS bn_gamma (learned: DU-VAE's)",
            choices=BN_GAMMA_MODES,
        ),
    )
    # DU-VAE's dropout on the posterior variance (model/cvae.py, RecognitionNetwork).
    posterior_var_dropout: float = field(
        default=0.0,
        metadata=_help(
            "dropout rate on the posterior variance once the KL weight is 1, with DU-VAE's "
            "variance floor 1/(2 pi e) (0: off, the papers' model)",
            ge=0,
            lt=1,
        ),
    )
    prior_kl_weight: float = field(
        default=1.0, metadata=_help("weight of KL(p(z|c) || N(0,I)) (bn-cvae)", ge=0)
    )
    bow_weight: float = field(
        default=1.0, metadata=_help("weight of the bag-of-words loss (cvae-bow)", ge=0)
    )
    bow_hidden: int = field(
        default=400, metadata=_help("hidden size of the bag-of-words MLP", ge=1, le=MAX_SIZE)
    )
    # Dropout on the word embeddings (encoders' and decoder's inputs) and on the decoder's
    # outputs before the vocabulary projection; training only. 0 is Zhao et al.'s setting
    # (keep_prob 1.0), which overfits our half-size training set at the paper's dims.
    dropout: float = field(
        default=0.0,
        metadata=_help(
            "dropout on the word embeddings and the decoder's outputs, in training (0: Zhao's)",
            ge=0,
            lt=1,
        ),
    )
    # Welleck et al. (2020)'s token-level unlikelihood loss, added to every variant's: not in
    # Zhao's or Zhu's papers (0: theirs); it keeps greedy decoding out of loops.
    unlikelihood_weight: float = field(
        default=0.0,
        metadata=_help(
            "weight of the token-level unlikelihood loss on repeating earlier tokens of the "
            "response (0: the papers' objective)",
            ge=0,
        ),
    )
    # Welleck et al. (2020)'s sequence-level unlikelihood, on the model's own greedy responses
    # (DialogCVAE.sequence_unlikelihood): not in the papers either; meant for fine-tuning
    # (--init-from), and it decodes a response per example at every training step.
    sequence_unlikelihood_weight: float = field(
        default=0.0,
        metadata=_help(
            "weight of the sequence-level unlikelihood loss on the loops of the model's own "
            "greedy responses (0: the papers' objective)",
            ge=0,
        ),
    )
    # A context-contrast term (not in the papers; in the spirit of Cai et al., Findings of EMNLP
    # 2020, contrastive dialogue learning): each response must be likelier, per token, under its
    # own context than under another example's with the same z (DialogCVAE.context_gap); meant
    # for fine-tuning the decoder (--train-only decoder), training only.
    context_contrast_weight: float = field(
        default=0.0,
        metadata=_help(
            "weight of the logistic loss on how much likelier each response is under its own "
            "context than under another example's (0: the papers' objective)",
            ge=0,
        ),
    )
    # How text becomes tokens (model/text.py); the vocabulary is made of this tokenizer's tokens.
    tokenizer: str = field(
        default=DEFAULT_TOKENIZER,
        metadata=_help("how text becomes tokens (model/text.py)", choices=TOKENIZERS, cli=False),
    )

    def __post_init__(self):
        # Impossible values (from a config.json, or flags) are refused here, naming the field
        # and its range (the metadata above): else they fail later inside torch, or load and
        # give wrong results (max_context 0 made every response fail).
        check(self)

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def use_bn(self) -> bool:
        return self.variant == "bn-cvae"

    @property
    def use_bow(self) -> bool:
        return self.variant == "cvae-bow"

    @property
    def cond_dim(self) -> int:
        return self.ctx_hidden
