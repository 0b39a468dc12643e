from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_pretrained
from training.batching import SegmentBatches, eval_batches
from training.prepare import load_prepared
from training.switchboard import STATE_FILE, RunError, TrainConfig, main, train, validate

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "tiny", "--threads", "1", "--segment-size", "4", "--batch-segments", "4",
        "--kl-anneal-steps", "40", "--log-every", "10"]  # fmt: skip


def records(run: Path, split: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def test_segment_batches_cover_every_example_once_per_epoch(synthetic_prepared):
    corpus = load_prepared(synthetic_prepared)
    dialogs = [d.turns() for d in corpus.train]
    sb = SegmentBatches(dialogs, corpus.vocab, segment_size=3, segments_per_batch=5, seed=1)
    seen = []
    for b in sb.epoch(0):
        seen += [tuple(b.utterances[r][b.utterances[r] > 0].tolist()) for r in b.response_index]
    assert len(seen) == sum(len(d) for d in dialogs)
    assert sb.order(0) == sb.order(0) and sb.order(0) != sb.order(1)


@pytest.mark.slow
def test_tiny_training_lowers_validation_loss_and_round_trips(synthetic_prepared, tmp_path):
    run = tmp_path / "run"
    main(["--data", str(synthetic_prepared), "--out", str(run), "--max-steps", "150",
          "--eval-every", "30", *TINY])  # fmt: skip
    valid = records(run, "valid")
    assert valid[-1]["valid_loss"] < valid[0]["valid_loss"] - 1.0
    assert (run / "curves.png").stat().st_size > 10_000
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["train"]["max_steps"] == 150 and resolved["model"]["variant"] == "bn-cvae"

    # The best checkpoint reproduces its recorded validation loss after loading.
    model, vocab = load_pretrained(run / "best")
    meta = json.loads((run / "best" / "config.json").read_text())["metadata"]
    corpus = load_prepared(synthetic_prepared)
    batches = list(eval_batches([d.turns() for d in corpus.valid], vocab))
    again = validate(model, batches, torch.device("cpu"), seed=0)
    assert again["valid_loss"] == pytest.approx(meta["valid_loss"], rel=1e-5)


def test_existing_run_needs_resume(synthetic_prepared, tmp_path):
    cfg = TrainConfig(data=str(synthetic_prepared), out=str(tmp_path / "r"), preset="tiny",
                      max_steps=5, eval_every=5, threads=1)  # fmt: skip
    train(cfg)
    with pytest.raises(RunError, match="--resume"):
        train(cfg)


def _train_cmd(data: Path, out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "training.switchboard", "--data", str(data), "--out", str(out),
            "--max-steps", str(steps), "--eval-every", "50", "--save-every", "7",
            "--variant", "cvae-bow", "--epochs", "1000", *TINY]  # fmt: skip


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted(synthetic_prepared, tmp_path):
    steps = 400
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_train_cmd(synthetic_prepared, full, steps), cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip

    proc = subprocess.Popen(_train_cmd(synthetic_prepared, killed, steps), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        m = killed / "metrics.jsonl"
        if m.exists() and any(
            r["step"] >= 120 for r in map(json.loads, m.read_text().splitlines())
        ):
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"

    # --resume reads the run's own settings: no other flag needs repeating.
    resume = [sys.executable, "-m", "training.switchboard", "--out", str(killed), "--resume"]
    subprocess.run(resume, cwd=ROOT, check=True, capture_output=True)
    a = torch.load(full / "training_state.pt", weights_only=True)
    b = torch.load(killed / "training_state.pt", weights_only=True)
    assert a["progress"]["step"] == b["progress"]["step"] == steps
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k

    # The log is the uninterrupted run's, the partly filled logging window included
    # (--save-every 7 is not a multiple of --log-every 10); only the wall-clock time differs.
    def without_time(run):
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records(run, "train")]

    assert without_time(killed) == without_time(full)


def test_every_process_gets_two_examples_of_every_batch(synthetic_prepared):
    # Batch norm refuses a single example ("Expected more than 1 value per channel"): an
    # epoch's last batch once left a process one 1-response segment and crashed a 2-process run.
    corpus = load_prepared(synthetic_prepared)
    dialogs = [d.turns() for d in corpus.train]
    merged = []
    for segment_size in (2, 3, 5, 7):
        for per_batch in (2, 3, 4):
            sb = SegmentBatches(dialogs, corpus.vocab, segment_size, per_batch, seed=segment_size)
            order, n = sb.order(0), len(sb.segments)
            if not sb.splits(order[(n - 1) // per_batch * per_batch :], world=2):
                merged.append(sb)  # its last batch, as drawn, would leave a process one example
            batches = sb.batch_ids(0, world=2)
            assert sorted(i for ids in batches for i in ids) == list(range(n))
            assert all(sb.splits(ids, world=2) for ids in batches)
    for rank in (0, 1):  # the batches themselves, where the last batch was merged
        assert all(len(b.response_index) >= 2 for b in merged[0].epoch(0, rank=rank, world=2))
    assert merged  # the case that crashed came up and was handled


@pytest.mark.slow
def test_two_process_gloo_run(synthetic_prepared, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.switchboard", "--data", str(synthetic_prepared), "--out", str(out),
           "--max-steps", "40", "--eval-every", "10", "--device", "cpu", *TINY]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert json.loads((out / "summary.json").read_text())["step"] == 40
    # 40 steps cross the end of the first epoch, whose last batch, as drawn, would leave one
    # process a single example (batch norm refused it before batch_ids merged such batches)
    assert records(out, "train")[-1]["epoch"] == 1
    # the two processes trained one model: its loss fell
    valid = records(out, "valid")
    assert len(valid) == 4 and valid[-1]["valid_loss"] < valid[0]["valid_loss"]
    # and the state holds each process's random generator, for an exact resume of both
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0], state["rng"][1])
    load_pretrained(out / "last")


def _short_run(data: Path, out: Path) -> list[str]:
    argv = ["--data", str(data), "--out", str(out), "--max-steps", "6", "--eval-every", "3"]
    assert main([*argv, *TINY]) == 0
    return argv


def test_resume_refuses_other_settings(synthetic_prepared, tmp_path, caplog):
    run = tmp_path / "run"
    argv = _short_run(synthetic_prepared, run)
    before = (run / "config.json").read_text()
    assert main([*argv, *TINY, "--resume", "--seed", "1", "--kl-anneal-steps", "7"]) == 2
    message = caplog.records[-1].getMessage()
    assert "config.json" in message and "--seed 1 (run: 0)" in message
    assert "--kl-anneal-steps 7 (run: 40)" in message
    assert (run / "config.json").read_text() == before  # nothing overwritten
    # The same flags again, or a thread count, are fine.
    assert main([*argv, *TINY, "--resume", "--threads", "2"]) == 0


@pytest.mark.parametrize(
    "content", [b"", b"PK\x03\x04truncated", "foreign"], ids=["empty", "truncated", "foreign"]
)
def test_unreadable_training_state_is_one_line_naming_the_file(
    synthetic_prepared, tmp_path, caplog, content
):
    run = tmp_path / "run"
    argv = _short_run(synthetic_prepared, run)
    state = run / STATE_FILE
    if content == "foreign":
        torch.save({"weights": torch.zeros(2)}, state)
    else:
        state.write_bytes(content)
    assert main([*argv, "--resume"]) == 2
    assert str(state) in caplog.records[-1].getMessage()


def test_missing_data_is_one_line(tmp_path, caplog):
    assert main(["--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 2
    assert "manifest.json" in caplog.records[-1].getMessage()


def test_publish_copies_a_finished_run_with_relative_paths(synthetic_prepared, tmp_path):
    from model.files import PROJECT_ROOT
    from training.publish import publish, ship_checkpoint

    results, run = tmp_path / "results", tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    with pytest.raises(ValueError, match="summary.json: missing"):
        publish(run, "bn-cvae", results)
    _short_run(synthetic_prepared, run.resolve())  # an absolute --out, as a run may be given
    written = publish(run, "bn-cvae", results)
    suffixes = [p.name.removeprefix("bn-cvae.") for p in written]
    assert suffixes == ["config.json", "summary.json", "metrics.ndjson", "curves.png"]
    config = json.loads((results / "bn-cvae.config.json").read_text())
    for key in ("out", "data"):
        assert not Path(config["train"][key]).is_absolute()  # relative to the repository
    assert (PROJECT_ROOT / config["train"]["out"]).resolve() == run.resolve()
    log = (results / "bn-cvae.metrics.ndjson").read_text()
    assert log == (run / "metrics.jsonl").read_text()

    ship_checkpoint(run, tmp_path / "checkpoints" / "default")
    shipped, _ = load_pretrained(tmp_path / "checkpoints" / "default")
    best, _ = load_pretrained(run / "best")
    for name, weight in best.state_dict().items():  # float16, within its rounding
        torch.testing.assert_close(shipped.state_dict()[name], weight, rtol=1e-3, atol=1e-4)
    meta = json.loads((tmp_path / "checkpoints/default/config.json").read_text())["metadata"]
    assert not Path(meta["train_config"]["out"]).is_absolute()
    assert meta["weights"].startswith("float16") and meta["checkpoint"] == "best"
    ship_checkpoint(run, tmp_path / "checkpoints" / "last", "last")
    shipped, _ = load_pretrained(tmp_path / "checkpoints" / "last")
    last, _ = load_pretrained(run / "last")
    for name, weight in last.state_dict().items():
        torch.testing.assert_close(shipped.state_dict()[name], weight, rtol=1e-3, atol=1e-4)


def test_init_from_a_checkpoint_starts_from_its_weights(synthetic_prepared, tmp_path, caplog):
    from training.switchboard import Run

    _short_run(synthetic_prepared, tmp_path / "base")
    best = tmp_path / "base" / "best"
    cfg = TrainConfig(data=str(synthetic_prepared), out=str(tmp_path / "ft"), preset="tiny",
                      init_from=str(best))  # fmt: skip
    run = Run(cfg, {"unlikelihood_weight": 1.0, "dropout": 0.1})  # training-only: may differ
    run.resume()  # a fresh run: the checkpoint's weights come in here
    shipped, _ = load_pretrained(best)
    for name, weight in shipped.state_dict().items():
        torch.testing.assert_close(run.model.state_dict()[name], weight)
    assert run.model_config.unlikelihood_weight == 1.0

    # a checkpoint of another model: one line naming its config and the field
    argv = ["--data", str(synthetic_prepared), "--out", str(tmp_path / "ft2"), *TINY]
    assert main([*argv, "--init-from", str(best), "--model.latent-dim", "4"]) == 2
    message = caplog.records[-1].getMessage()
    assert "best/config.json" in message and "latent_dim 8 (this run: 4)" in message
    assert main([*argv, "--init-from", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such checkpoint directory" in caplog.records[-1].getMessage()
    # and a fine-tuning run trains from there
    assert main([*argv, "--init-from", str(best), "--max-steps", "3", "--eval-every", "3",
                 "--model.unlikelihood-weight", "1"]) == 0  # fmt: skip
    # with the sequence-level unlikelihood, the train records say how often greedy repeats
    assert main([*argv[:3], str(tmp_path / "ft3"), *TINY, "--init-from", str(best),
                 "--max-steps", "10", "--eval-every", "10",
                 "--model.sequence-unlikelihood-weight", "1"]) == 0  # fmt: skip
    (train,) = records(tmp_path / "ft3", "train")
    assert 0 <= train["train_repeating"] <= 1 and train["train_sequence_ul"] >= 0
    # with the context contrast, they log how much likelier a response is under its own context
    assert main([*argv[:3], str(tmp_path / "ft4"), *TINY, "--init-from", str(best),
                 "--max-steps", "10", "--eval-every", "10",
                 "--model.context-contrast-weight", "1"]) == 0  # fmt: skip
    (train,) = records(tmp_path / "ft4", "train")
    assert math.isfinite(train["train_context_gap"]) and "train_repeating" not in train
    assert "train_context_gap" not in records(tmp_path / "ft3", "train")[0]


def test_decoder_only_fine_tune_keeps_the_latent_space(synthetic_prepared, tmp_path):
    _short_run(synthetic_prepared, tmp_path / "base")
    best = tmp_path / "base" / "best"
    out = tmp_path / "dec"
    assert main(["--data", str(synthetic_prepared), "--out", str(out), *TINY,
                 "--init-from", str(best), "--train-only", "decoder", "--lr", "1e-2",
                 "--max-steps", "20", "--eval-every", "10"]) == 0  # fmt: skip
    before, _ = load_pretrained(best)
    after, _ = load_pretrained(out / "last")
    old, new = before.state_dict(), after.state_dict()
    trained = {name for name in old if not torch.equal(old[name], new[name])}
    decoder_own = {n for n in old if n.startswith(("decoder.init_state", "decoder.rnn",
                                                   "decoder.out"))}  # fmt: skip
    # every decoder layer moved; nothing else did (the shared embedding and the recognition
    # network's batch-norm running statistics included)
    assert trained == decoder_own
    assert any("mu_bn.running_mean" in n for n in old)
    # so the validation KL is the checkpoint's, while the likelihood moved
    valid = records(out, "valid")
    base_valid = json.loads((best / "config.json").read_text())["metadata"]
    assert valid[-1]["valid_kl"] == pytest.approx(base_valid["valid_kl"], rel=1e-5)
    assert valid[-1]["valid_nll"] != pytest.approx(base_valid["valid_nll"], rel=1e-5)
