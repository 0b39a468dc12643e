"""The evaluation: metrics, baselines and ``python -m eval.switchboard``."""

from model.dependencies import DEVELOP, require

require(("torch", "numpy", "tqdm", "sacrebleu", "nltk", "gensim"), DEVELOP)
