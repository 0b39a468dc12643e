"""python -m eval.latent_dims: per-dimension gamma, KL and MI of BN-CVAE checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from eval.latent import active_units
from eval.latent_dims import main
from model.checkpoint import save_pretrained
from model.config import ModelConfig
from model.cvae import DialogCVAE
from training.batching import eval_batches
from training.prepare import load_prepared


def checkpoint(corpus, path, **kw):
    torch.manual_seed(0)
    config = ModelConfig.preset("tiny", variant="bn-cvae", vocab_size=len(corpus.vocab),
                                tokenizer=corpus.tokenizer, bn_gamma=0.3, **kw)  # fmt: skip
    model = DialogCVAE(config)
    if kw.get("bn_gamma_mode") == "learned":  # gamma_i as if learned: unequal, then rescaled
        with torch.no_grad():
            model.recognition.mu_bn.weight.copy_(torch.linspace(0.1, 1.0, config.latent_dim))
            model.recognition.mu_bn.bias.copy_(torch.linspace(-0.5, 0.5, config.latent_dim))
    save_pretrained(model, corpus.vocab, path)
    return model.eval()


def test_latent_dims_plot_json_and_totals(synthetic_prepared, tmp_path, capsys):
    corpus = load_prepared(synthetic_prepared)
    learned = checkpoint(corpus, tmp_path / "learned", bn_gamma_mode="learned")
    checkpoint(corpus, tmp_path / "fixed")
    png, js = tmp_path / "img" / "dims.png", tmp_path / "dims.json"
    argv = [f"learned={tmp_path / 'learned'}", f"fixed={tmp_path / 'fixed'}",
            "--data", str(synthetic_prepared), "--split", "valid", "--out", str(png),
            "--json-out", str(js), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert png.stat().st_size > 20_000
    r = json.loads(js.read_text())
    d = learned.config.latent_dim
    for key in ("gamma", "beta", "kl", "kl_standard", "bound", "mean_variance", "mutual_info"):
        assert len(r["learned"][key]) == d, key
    gamma = torch.tensor(r["learned"]["gamma"])
    assert float(gamma.pow(2).mean().sqrt()) == pytest.approx(0.3, rel=1e-6)
    assert gamma.argmax() == d - 1 and gamma.min() < gamma.max() / 5  # the learned shape kept
    assert r["fixed"]["gamma"] == pytest.approx([0.3] * d)
    # the per-dimension KLs add up to the model's own KL, averaged over the split's examples
    dialogs = [x.turns() for x in corpus.valid]
    cfg = learned.config
    with torch.no_grad():
        outs = [learned(b) for b in eval_batches(dialogs, corpus.vocab, 4, cfg.max_context,
                                                  cfg.max_utt_len)]  # fmt: skip
        mus = torch.cat([o.extras["mu_q"] for o in outs])
    kl = torch.cat([o.kl for o in outs]).double().mean()
    assert r["learned"]["totals"]["kl"] == pytest.approx(float(kl), rel=1e-5)
    assert r["learned"]["examples"] == mus.shape[0]
    assert r["learned"]["totals"]["active_units"] == active_units(mus)
    bound = 0.5 * (gamma.double() ** 2 + torch.tensor(r["learned"]["beta"]).double() ** 2)
    assert r["learned"]["bound"] == pytest.approx(bound.tolist())
    table = capsys.readouterr().out
    assert "| learned | learned | 0.0" in table and "| fixed | fixed | 0.300 / 0.300 |" in table


def test_missing_checkpoint_is_one_line(synthetic_prepared, tmp_path, capsys):
    assert main([str(tmp_path / "nope"), "--data", str(synthetic_prepared)]) == 2
    assert "nope" in capsys.readouterr().err


def test_a_json_record_stands_in_for_its_checkpoints(synthetic_prepared, tmp_path, capsys):
    corpus = load_prepared(synthetic_prepared)
    checkpoint(corpus, tmp_path / "learned", bn_gamma_mode="learned")
    checkpoint(corpus, tmp_path / "fixed")
    data = ["--data", str(synthetic_prepared), "--split", "valid", "--no-progress"]
    both, one = tmp_path / "both.json", tmp_path / "one.json"
    assert main([f"learned={tmp_path / 'learned'}", f"fixed={tmp_path / 'fixed'}", *data,
                 "--out", str(tmp_path / "a.png"), "--json-out", str(both)]) == 0  # fmt: skip
    table = capsys.readouterr().out.split("\n\nvalid")[0]
    assert main([str(tmp_path / "fixed"), *data, "--out", str(tmp_path / "b.png"),
                 "--json-out", str(one)]) == 0  # fmt: skip
    capsys.readouterr()
    # the two-record file redrawn as it is, then its fixed model again from a one-record file
    # renamed as in the first call: the same table, with no corpus at all
    png = tmp_path / "c.png"
    argv = [str(both), f"fixed={one}", "--data", str(tmp_path / "no-corpus"), "--out", str(png),
            "--json-out", str(tmp_path / "again.json")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.split("\n\nvalid")[0] == table
    assert png.stat().st_size > 20_000
    records = json.loads((tmp_path / "again.json").read_text())
    assert list(records) == ["learned", "fixed"]
    assert records == json.loads(both.read_text())
    # a label names the only record; a two-record file cannot take one
    assert main([f"x={both}", "--out", str(png)]) == 2
    assert "2 records (learned, fixed)" in capsys.readouterr().err


def test_bad_records_are_one_line(synthetic_prepared, tmp_path, capsys):
    corpus = load_prepared(synthetic_prepared)
    checkpoint(corpus, tmp_path / "fixed")
    valid = tmp_path / "valid.json"
    assert main([str(tmp_path / "fixed"), "--data", str(synthetic_prepared), "--split", "valid",
                 "--no-progress", "--out", str(tmp_path / "a.png"), "--json-out", str(valid)]) == 0  # fmt: skip
    record = json.loads(valid.read_text())
    test = tmp_path / "test.json"
    test.write_text(json.dumps({"other": {**record["fixed"], "split": "test"}}))
    capsys.readouterr()
    assert main([str(valid), str(test), "--out", str(tmp_path / "b.png")]) == 2
    assert capsys.readouterr().err.strip() == (
        "python -m eval.latent_dims: records of different splits (test, valid)"
    )
    for text in ("{", "[1, 2]", '{"a": {"split": "test"}}'):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        assert main([str(bad), "--out", str(tmp_path / "c.png")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(bad) in err, text
    assert not (tmp_path / "b.png").exists() and not (tmp_path / "c.png").exists()
