"""A model config with impossible values is refused, naming config.json and the field (issue 12)."""

from __future__ import annotations

import json
import shutil

import pytest

from model.checkpoint import CheckpointError, load_pretrained
from model.config import PRESETS, ModelConfig
from tests.test_service import tiny_checkpoint  # noqa: F401 (fixture)

IMPOSSIBLE = [
    ("latent_dim", -1),
    ("latent_dim", 0),
    ("embed_dim", 2.5),
    ("dec_hidden", "256"),
    ("bow_hidden", True),
    ("vocab_size", None),
    ("max_context", 0),
    ("max_utt_len", 0),
    ("bn_gamma", "x"),
    ("bn_gamma", 0),
    ("bn_gamma", -0.5),
    ("bn_gamma", float("nan")),
    ("bn_gamma", float("inf")),
    ("prior_kl_weight", -1.0),
    ("bow_weight", float("nan")),
    ("dropout", 1.0),
    ("dropout", -0.1),
    ("dropout", float("nan")),
    ("variant", "vae"),
    ("variant", ["bn-cvae"]),
]


@pytest.mark.parametrize("field, value", IMPOSSIBLE)
def test_impossible_values_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{field: value})


def test_presets_and_edge_values_are_accepted():
    for name in PRESETS:
        ModelConfig.preset(name)
    ModelConfig(
        max_context=1, max_utt_len=1, bn_gamma=1, prior_kl_weight=0, bow_weight=0.0, dropout=0.5
    )


def write_config(checkpoint, directory, **model_fields):
    shutil.copytree(checkpoint, directory)
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config["model"].update(model_fields)
    path.write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize(
    "field, value",
    [(f, v) for f, v in IMPOSSIBLE if v == v and v not in (float("inf"),)]  # JSON has no NaN/inf
    + [("colour", "blue")],
)
def test_a_checkpoint_with_an_impossible_config_is_refused_at_load(
    tiny_checkpoint,  # noqa: F811
    tmp_path,
    field,
    value,
):
    directory = write_config(tiny_checkpoint, tmp_path / "bad", **{field: value})
    with pytest.raises(CheckpointError) as e:
        load_pretrained(directory)
    message = str(e.value)
    assert message.startswith(f"{directory / 'config.json'}: bad model config: ")
    assert field in message and "\n" not in message


def test_a_model_entry_that_is_not_an_object_is_refused(tiny_checkpoint, tmp_path):  # noqa: F811
    directory = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "model": 5}))
    with pytest.raises(CheckpointError, match="config.json: bad model config"):
        load_pretrained(directory)
