"""Nothing lost, nothing silent: checkpoints and run files under kills, full disks, flipped bits,
missing permissions and signals."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import model.files
from model.checkpoint import (
    CheckpointError,
    load_config,
    load_pretrained,
    record_hashes,
    save_pretrained,
)
from model.config import ModelConfig
from model.cvae import DialogCVAE
from model.files import atomic_write_bytes, existing_directory, remove_temporaries
from model.vocab import Vocabulary
from service.config import DEFAULT_CHECKPOINT
from training.switchboard import RUN_FILES, STATE_FILE, main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / DEFAULT_CHECKPOINT
TINY = ["--preset", "tiny", "--threads", "1", "--segment-size", "4", "--batch-segments", "4",
        "--kl-anneal-steps", "40", "--log-every", "10"]  # fmt: skip
PREVIOUS, NEW = 1, 2


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.build([[f"w{i}" for i in range(60)]])


def tiny_model(vocab, seed=0) -> DialogCVAE:
    torch.manual_seed(seed)
    return DialogCVAE(ModelConfig.preset("tiny", vocab_size=len(vocab)))


def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# --- 1. a kill at any moment of a save -------------------------------------------------------

# The audit events (PEP 578) of everything a save does to the file system: each open (for
# writing or fsync), mkdir, chmod, rename, removal, and the ctypes call of renameat2.
KILL_EVENTS = {"open", "os.mkdir", "os.chmod", "os.rename", "os.remove", "os.rmdir",
               "shutil.rmtree", "tempfile.mkdtemp", "ctypes.call_function"}  # fmt: skip


def save_killed_at(n: int, operation) -> int:
    """Run ``operation`` in a forked child that SIGKILLs itself as it reaches its ``n``-th file
    system event; returns the child's wait status."""
    pid = os.fork()
    if pid == 0:  # the child
        seen = 0

        def hook(event, args):
            nonlocal seen
            if event in KILL_EVENTS:
                seen += 1
                if seen == n:
                    os.kill(os.getpid(), signal.SIGKILL)

        try:
            sys.addaudithook(hook)
            operation()
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "two-renames"])
def test_best_survives_a_kill_at_every_step_of_a_save(vocab, tmp_path, monkeypatch, exchange):
    if not exchange:  # a file system without RENAME_EXCHANGE
        monkeypatch.setattr(model.files, "_exchange", lambda a, b: False)
    template = tmp_path / "template"
    save_pretrained(tiny_model(vocab, 0), vocab, template / "best", metadata={"step": PREVIOUS})
    new = tiny_model(vocab, 1)
    run = tmp_path / "run"
    kills = 0
    for n in range(1, 500):
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(template, run)
        status = save_killed_at(
            n, lambda: save_pretrained(new, vocab, run / "best", metadata={"step": NEW})
        )
        if not os.WIFSIGNALED(status):
            break  # the save ended before its n-th event
        kills += 1
        # A reader finds a complete checkpoint, the previous or the new one, hashes verified.
        found = existing_directory(run / "best")
        load_pretrained(found)
        assert load_config(found)[1]["step"] in (PREVIOUS, NEW)
        if exchange:
            assert found == run / "best", f"kill {n}: best/ missing"
        # The next start leaves best/ and no temporaries.
        remove_temporaries(run, RUN_FILES)
        assert temporaries(run) == [], f"kill {n}"
        load_pretrained(run / "best")
    assert kills >= 15  # every event of the save was a kill point
    assert load_config(run / "best")[1]["step"] == NEW


def test_a_file_replaced_atomically_survives_a_kill_at_every_step(tmp_path):
    path = tmp_path / STATE_FILE
    path.write_bytes(b"previous" * 1000)
    kills = 0
    for n in range(1, 100):
        status = save_killed_at(n, lambda: atomic_write_bytes(path, b"new" * 1000))
        if not os.WIFSIGNALED(status):
            break
        kills += 1
        assert path.read_bytes() in (b"previous" * 1000, b"new" * 1000)
        remove_temporaries(tmp_path, RUN_FILES)
        assert temporaries(tmp_path) == []
    assert kills >= 3 and path.read_bytes() == b"new" * 1000


def test_interrupted_two_rename_save_is_found_and_restored(vocab, tmp_path, caplog):
    """What a kill between the fallback's two renames leaves: only .best.old."""
    save_pretrained(tiny_model(vocab), vocab, tmp_path / "best", metadata={"step": PREVIOUS})
    os.rename(tmp_path / "best", tmp_path / ".best.old")
    with caplog.at_level(logging.WARNING):
        model_, _ = load_pretrained(tmp_path / "best")  # a reader reads .best.old
    assert ".best.old" in caplog.text and load_config(tmp_path / "best")[1]["step"] == PREVIOUS
    remove_temporaries(tmp_path, ["best"])  # a writer renames it back
    assert (tmp_path / "best").is_dir() and temporaries(tmp_path) == []


# --- 2. integrity --------------------------------------------------------------------------


def flip_bits_in_tensor_data(path: Path, bits: int, seed: int = 0) -> None:
    """Flip ``bits`` random bits after the safetensors header: the file's structure stays valid.
    Only in the low byte of each 16-bit word: a float16 (or float32) value stays finite, so the
    loader's check for non-finite values cannot see the damage, only the hash can."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    rng = random.Random(seed)
    for _ in range(bits):
        i = start + 2 * rng.randrange((len(data) - start) // 2)
        data[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


def test_flipped_bits_in_the_tensor_data_are_one_line_naming_the_file(vocab, tmp_path):
    save_pretrained(tiny_model(vocab), vocab, tmp_path / "ck")
    flip_bits_in_tensor_data(tmp_path / "ck" / "model.safetensors", bits=1)
    load_pretrained(tmp_path / "ck", verify=False)  # the structure is intact: only hashes tell
    with pytest.raises(CheckpointError) as e:
        load_pretrained(tmp_path / "ck")
    assert str(e.value) == (
        f"{tmp_path / 'ck' / 'model.safetensors'}: SHA-256 differs from the one in "
        f"{tmp_path / 'ck' / 'config.json'} (file changed or corrupt)"
    )


def test_a_changed_vocabulary_is_caught_by_its_hash(vocab, tmp_path):
    save_pretrained(tiny_model(vocab), vocab, tmp_path / "ck")
    words = json.loads((tmp_path / "ck" / "vocab.json").read_text())["words"]
    words[10], words[11] = words[11], words[10]  # still a valid vocabulary of the right size
    (tmp_path / "ck" / "vocab.json").write_text(json.dumps({"words": words}))
    with pytest.raises(CheckpointError, match=r"vocab.json: SHA-256 differs"):
        load_pretrained(tmp_path / "ck")


def test_a_checkpoint_saved_before_hashes_loads_with_a_warning(vocab, tmp_path, caplog):
    save_pretrained(tiny_model(vocab), vocab, tmp_path / "ck")
    config = tmp_path / "ck" / "config.json"
    raw = json.loads(config.read_text())
    del raw["sha256"]
    config.write_text(json.dumps(raw))
    with caplog.at_level(logging.WARNING):
        load_pretrained(tmp_path / "ck")
    assert f"{config}: no SHA-256 hashes" in caplog.text
    record_hashes(tmp_path / "ck")  # what was done once for the shipped checkpoint
    assert json.loads(config.read_text())["sha256"].keys() == {"vocab.json", "model.safetensors"}


def test_a_malformed_hash_table_is_one_line(vocab, tmp_path):
    save_pretrained(tiny_model(vocab), vocab, tmp_path / "ck")
    config = tmp_path / "ck" / "config.json"
    raw = json.loads(config.read_text())
    raw["sha256"] = {"vocab.json": 5}
    config.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"config.json: \"sha256\" must give the hash"):
        load_pretrained(tmp_path / "ck")


def test_the_shipped_checkpoint_records_its_hashes_and_matches_them(caplog):
    with caplog.at_level(logging.WARNING):
        load_pretrained(SHIPPED)
    assert caplog.text == ""
    assert set(json.loads((SHIPPED / "config.json").read_text())["sha256"]) == {
        "vocab.json", "model.safetensors"}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("verify", [True, False], ids=["verify", "no-verify"])
def test_eval_refuses_the_shipped_checkpoint_with_2000_flipped_bits(tmp_path, verify):
    copy = tmp_path / "shipped"
    shutil.copytree(SHIPPED, copy)
    flip_bits_in_tensor_data(copy / "model.safetensors", bits=2000)
    cmd = [sys.executable, "-m", "eval.switchboard", "--checkpoint", str(copy), "--limit", "1",
           "--samples", "1", "--threads", "1", "--out", str(tmp_path / "r.json"),
           "--no-progress", "--data", str(tmp_path / "missing.jsonl")]  # fmt: skip
    if not verify:
        cmd.append("--no-verify")
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    if verify:
        assert last.endswith(f"{copy / 'model.safetensors'}: SHA-256 differs from the one in "
                             f"{copy / 'config.json'} (file changed or corrupt)")  # fmt: skip
    else:  # the weights load (the damage goes unseen); the missing --data stops it next
        assert last.endswith(f"--data {tmp_path / 'missing.jsonl'}: no such file or directory "
                             "(a JSONL file or a SwDA directory)")  # fmt: skip


# --- 3 and 4. unreadable files and truthful messages ----------------------------------------


def as_unprivileged(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a Python that file permissions apply to: as root, one without the
    capabilities that override them (setpriv, util-linux)."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("as root, needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    return subprocess.run([*prefix, sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


LOAD = "from model.checkpoint import load_pretrained\ntry:\n    load_pretrained({!r})\n" \
       "except ValueError as e:\n    print(e)\n"  # fmt: skip


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda ck: ck.chmod(0o000), "config.json: cannot read: permission denied"),
        (
            lambda ck: (ck / "model.safetensors").chmod(0o200),
            "model.safetensors: cannot read weights: permission denied",
        ),  # fmt: skip
        (
            lambda ck: (ck / "vocab.json").chmod(0o200),
            "vocab.json: cannot read the vocabulary: permission denied",
        ),  # fmt: skip
    ],
    ids=["directory", "weights", "vocabulary"],
)
def test_unreadable_checkpoint_files_say_permission_denied(vocab, tmp_path, damage, message):
    ck = tmp_path / "ck"
    save_pretrained(tiny_model(vocab), vocab, ck)
    damage(ck)
    result = as_unprivileged(LOAD.format(str(ck)))
    assert result.stdout == f"{ck / message}\n", result.stderr


def test_weights_that_are_a_directory_say_so(vocab, tmp_path):
    save_pretrained(tiny_model(vocab), vocab, tmp_path / "ck")
    weights = tmp_path / "ck" / "model.safetensors"
    weights.unlink()
    weights.mkdir()
    with pytest.raises(CheckpointError) as e:
        load_pretrained(tmp_path / "ck", verify=False)
    assert str(e.value) == f"{weights}: cannot read weights: is a directory, not a file"


def test_a_checkpoint_that_is_a_file_says_so(tmp_path):
    (tmp_path / "ck").write_text("x")
    with pytest.raises(CheckpointError, match=r"ck: a file, not a checkpoint directory"):
        load_pretrained(tmp_path / "ck")


def test_data_that_is_a_fifo_says_so(tmp_path, synthetic_prepared, caplog):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    from eval.config import EvalConfig, EvalError
    from eval.data import load_dialogs

    with pytest.raises(EvalError) as e:
        load_dialogs(EvalConfig(checkpoint="x", data=str(fifo)), "wordpunct")
    assert str(e.value) == f"--data {fifo}: a FIFO, not a file (a JSONL file or a SwDA directory)"
    assert main(["--data", str(fifo), "--out", str(tmp_path / "r"), *TINY]) == 2
    assert f"{fifo}: a FIFO, not a prepared corpus directory" in caplog.text


def test_unreadable_prepared_corpus_says_permission_denied(synthetic_prepared, tmp_path):
    data = tmp_path / "prepared"
    shutil.copytree(synthetic_prepared, data)
    (data / "train.jsonl").chmod(0o200)
    code = ("from training.prepare import load_prepared\ntry:\n"
            f"    load_prepared({str(data)!r})\nexcept ValueError as e:\n    print(e)\n")  # fmt: skip
    result = as_unprivileged(code)
    assert result.stdout == f"{data / 'train.jsonl'}: cannot read: permission denied\n"


# --- runs: full disks, signals, resume ------------------------------------------------------


def train_cmd(data: Path, out: Path, steps: int, *more: str) -> list[str]:
    return [sys.executable, "-m", "training.switchboard", "--data", str(data), "--out", str(out),
            "--max-steps", str(steps), "--eval-every", "25", "--save-every", "10",
            "--epochs", "1000", *TINY, *more]  # fmt: skip


def resume_cmd(out: Path, *more: str) -> list[str]:
    return [sys.executable, "-m", "training.switchboard", "--out", str(out), "--resume", *more]


def run_state(run: Path) -> dict:
    return torch.load(run / STATE_FILE, weights_only=True)


def without_time(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in lines]


def test_disk_full_while_saving_the_state_is_one_line_and_keeps_the_last_state(
    synthetic_prepared, tmp_path, monkeypatch, caplog
):
    run = tmp_path / "run"
    args = ["--data", str(synthetic_prepared), "--out", str(run), "--save-every", "10",
            "--eval-every", "10", *TINY]  # fmt: skip
    assert main([*args, "--max-steps", "20"]) == 0
    before = {
        p.name: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "curves.png"
    }

    import training.switchboard as sw

    def full_disk(path, data):  # half the bytes fit
        with model.files.atomic_path(path) as tmp:
            tmp.write_bytes(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sw, "atomic_write_bytes", full_disk)
    caplog.clear()
    assert main(["--out", str(run), "--resume", "--max-steps", "40"]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"{run / STATE_FILE}: no space left on the device (the disk is full)"]
    assert run_state(run)["progress"]["step"] == 20  # the last good state
    assert (run / STATE_FILE).read_bytes() == before[STATE_FILE]
    assert temporaries(run) == []
    monkeypatch.undo()
    assert main(["--out", str(run), "--resume", "--max-steps", "40"]) == 0
    assert run_state(run)["progress"]["step"] == 40


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
def test_a_really_full_disk_is_one_line_and_loses_nothing(synthetic_prepared, small_tmpfs):
    run = small_tmpfs / "run"
    subprocess.run(train_cmd(synthetic_prepared, run, 20), cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    state = (run / STATE_FILE).read_bytes()
    # Fill the disk but for half a training state: the resumed run starts, then cannot save.
    free = shutil.disk_usage(small_tmpfs).free
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * max(0, free - len(state) // 2))
    result = subprocess.run(resume_cmd(run, "--max-steps", "40"), cwd=ROOT, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.endswith("no space left on the device (the disk is full)") and str(run) in last
    assert (run / STATE_FILE).read_bytes() == state  # the last good state
    load_pretrained(run / "best")  # the previous best, or a better one saved before the disk filled
    assert temporaries(run) == []
    filler.unlink()
    subprocess.run(resume_cmd(run, "--max-steps", "40"), cwd=ROOT, check=True, capture_output=True)
    assert run_state(run)["progress"]["step"] == 40


@pytest.mark.parametrize("state", ["no directory", "empty directory", "stopped before a save"])
def test_resume_without_a_training_state_is_an_error_naming_the_directory(
    synthetic_prepared, tmp_path, caplog, state
):
    run = tmp_path / "run"
    why = "no such directory"
    if state != "no directory":
        run.mkdir()
        why = "not a training run directory"
    if state == "stopped before a save":
        assert main(["--data", str(synthetic_prepared), "--out", str(run), "--max-steps", "5",
                     "--eval-every", "5", *TINY]) == 0  # fmt: skip
        (run / STATE_FILE).unlink()
        why = "the run stopped before its first save; start it again without --resume"
    config = (run / "config.json").read_bytes() if state == "stopped before a save" else None
    caplog.clear()
    assert main(["--out", str(run), "--resume", "--data", str(synthetic_prepared), *TINY]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"{run}: nothing to resume, no {STATE_FILE} ({why})"]
    if config is None:
        assert not (run / "config.json").exists()
    else:  # not overwritten by a fresh run's
        assert (run / "config.json").read_bytes() == config


@pytest.fixture(scope="module")
def uninterrupted(synthetic_prepared, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    subprocess.run(train_cmd(synthetic_prepared, run, 150), cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    return run


def interrupt(cmd: list[str], run: Path, signum: int, after_step: int) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and any(
            json.loads(line)["step"] >= after_step for line in metrics.read_text().splitlines()
        ):
            break
        time.sleep(0.02)
    proc.send_signal(signum)
    proc.wait(timeout=240)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_saves_a_resumable_state_and_exits_with_one_line(
    synthetic_prepared, tmp_path, uninterrupted, signum
):
    run = tmp_path / "run"
    proc = interrupt(train_cmd(synthetic_prepared, run, 150), run, signum, after_step=30)
    stderr = proc.stderr.read()
    assert proc.returncode == 128 + signum and "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if " training " in line and "stopped" in line]
    step = run_state(run)["progress"]["step"]
    assert 30 <= step < 150
    assert len(errors) == 1 and errors[0].endswith(
        f"{signal.Signals(signum).name}: stopped at step {step} with the training state saved in "
        f"{run / STATE_FILE}; --resume --out {run} continues the run"
    )
    subprocess.run(resume_cmd(run), cwd=ROOT, check=True, capture_output=True)
    a, b = run_state(uninterrupted), run_state(run)
    assert b["progress"]["step"] == 150
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert without_time(run) == without_time(uninterrupted)


@pytest.mark.slow
def test_resume_drops_a_torn_last_metrics_line_and_stays_bit_identical(
    synthetic_prepared, tmp_path, uninterrupted
):
    run = tmp_path / "run"
    proc = interrupt(train_cmd(synthetic_prepared, run, 150), run, signal.SIGKILL, after_step=30)
    assert proc.returncode == -signal.SIGKILL
    # What a kill in the middle of an append leaves: the start of a record, no newline.
    record = json.dumps(without_time(uninterrupted)[-1])
    with (run / "metrics.jsonl").open("a") as f:
        f.write(record[: len(record) // 2])
    result = subprocess.run(resume_cmd(run), cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    dropped = [line for line in result.stderr.splitlines() if "dropped a torn" in line]
    assert (
        len(dropped) == 1
        and "metrics.jsonl" in dropped[0]
        and "dropped a torn last line" in dropped[0]
    )
    for k, v in run_state(uninterrupted)["model"].items():
        assert torch.equal(v, run_state(run)["model"][k]), k
    assert without_time(run) == without_time(uninterrupted)


def test_a_bad_metrics_line_before_the_last_is_an_error_naming_it(
    synthetic_prepared, tmp_path, caplog
):
    run = tmp_path / "run"
    assert main(["--data", str(synthetic_prepared), "--out", str(run), "--max-steps", "20",
                 "--save-every", "10", "--eval-every", "10", *TINY]) == 0  # fmt: skip
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    caplog.clear()
    assert main(["--out", str(run), "--resume", "--max-steps", "30"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(
        f"{run / 'metrics.jsonl'}:2: not a metrics record"
    )


def test_a_run_written_before_checkpoint_hashes_resumes(synthetic_prepared, tmp_path, caplog):
    """Runs started by the code before hashes were recorded: their best/ and last/ have no
    hashes (their only difference); they resume, and their checkpoints load with a warning."""
    run = tmp_path / "run"
    assert main(["--data", str(synthetic_prepared), "--out", str(run), "--max-steps", "20",
                 "--save-every", "10", "--eval-every", "10", *TINY]) == 0  # fmt: skip
    for which in ("best", "last"):
        config = run / which / "config.json"
        raw = json.loads(config.read_text())
        del raw["sha256"]
        config.write_text(json.dumps(raw, indent=2) + "\n")
    (run / ".curves.png.abc123.png").write_bytes(b"left by a kill")
    (run / ".best.x1y2z3").mkdir()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["--out", str(run), "--resume", "--max-steps", "30"]) == 0
    assert "resumed from" in caplog.text and temporaries(run) == []
    assert run_state(run)["progress"]["step"] == 30
    load_pretrained(run / "best")
    load_pretrained(run / "last")


@pytest.mark.slow
def test_the_service_refuses_flipped_bits_in_one_line_unless_told_not_to_verify(vocab, tmp_path):
    from benchmarks.service_process import free_port, service_env
    from service.config import ServiceConfig
    from service.engine import InferenceEngine

    save_pretrained(tiny_model(vocab), vocab, tmp_path / "ck")
    weights = tmp_path / "ck" / "model.safetensors"
    flip_bits_in_tensor_data(weights, bits=50)
    cmd = [sys.executable, "-m", "service", "--checkpoint", str(tmp_path / "ck"),
           "--port", str(free_port()), "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=service_env(), capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"python -m service: error: CheckpointError: {weights}: SHA-256 differs from the one in "
        f"{tmp_path / 'ck' / 'config.json'} (file changed or corrupt)"
    )
    config = ServiceConfig.from_args(["--checkpoint", str(tmp_path / "ck"), "--no-verify"])
    assert config.verify is False
    loaded, _ = InferenceEngine.from_checkpoint(config)._loader()  # the damage goes unseen
    assert loaded.config.vocab_size == len(vocab)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (.ci/run installs it)")
@pytest.mark.parametrize("fallback", [[], ["--fallback"]], ids=["rename-exchange", "two-renames"])
def test_strace_kills_at_every_rename_of_a_save_lose_nothing(fallback):
    """The kill-injection benchmark at the system-call level, for the renames (the whole table,
    every write and open included: python benchmarks/kill_injection.py)."""
    result = subprocess.run([sys.executable, "benchmarks/kill_injection.py", *fallback,
                             "--syscalls", "rename,renameat2"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    if "Operation not permitted" in result.stderr:
        pytest.skip("ptrace is not allowed here")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| rename")]
    assert len(rows) == (1 if not fallback else 2), result.stdout  # exchange; or the two renames
    assert all(" | best/ | " in row or " | .best.old | " in row for row in rows), result.stdout


@pytest.mark.slow
def test_a_run_directory_without_write_permission_is_one_line(synthetic_prepared, tmp_path):
    run = tmp_path / "run"
    assert main(["--data", str(synthetic_prepared), "--out", str(run), "--max-steps", "10",
                 "--save-every", "10", "--eval-every", "10", *TINY]) == 0  # fmt: skip
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    run.chmod(0o555)
    try:
        code = ("import sys\nfrom training.switchboard import main\n"
                f"sys.exit(main(['--out', {str(run)!r}, '--resume', '--max-steps', '20']))\n")  # fmt: skip
        result = as_unprivileged(code)
    finally:
        run.chmod(0o755)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(f"training {run / 'config.json'}: permission denied")
    )
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
