"""Corpus preparation, batching and the training loop (``python -m training.prepare``,
``python -m training.switchboard``)."""

from model.dependencies import DEVELOP, require

require(("torch", "numpy", "safetensors", "tqdm", "pydantic_settings", "matplotlib"), DEVELOP)
