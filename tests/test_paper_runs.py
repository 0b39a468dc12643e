"""scripts/paper_runs.sh: which training command each run gets, and the steps after it.

`python` is replaced on PATH by a script that records its arguments, so the script's own logic
(fresh, resumed or finished run; THREADS; the evaluation and publication steps) is what is
tested, in a copy of the repository's scripts/ with a recipe of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run_script(tmp_path: Path, *pairs: str, **env: str) -> list[list[str]]:
    """Run paper_runs.sh in tmp_path/repo with a recording `python`; the calls it made."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "scripts" / "paper_runs.sh", repo / "scripts" / "paper_runs.sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls.jsonl"
    real_python = shutil.which("python3") or shutil.which("python")
    assert real_python
    fake = bin_dir / "python"
    # The run directory is read from the recipe with `python -c`: that call goes to the real
    # interpreter; every `python -m ...` is only recorded.
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = "-c" ]; then exec {real_python} "$@"; fi\n'
        f"{real_python} -c 'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\""
        f" >>{calls}\n"
    )
    fake.chmod(0o755)
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **env}
    subprocess.run(
        ["bash", "scripts/paper_runs.sh", *pairs], cwd=repo, env=environment, check=True,
        capture_output=True,
    )  # fmt: skip
    if not calls.exists():
        return []
    return [json.loads(line) for line in calls.read_text().splitlines()]


def write_recipe(tmp_path: Path, name: str) -> Path:
    repo = tmp_path / "repo"
    (repo / "recipes").mkdir(parents=True, exist_ok=True)
    recipe = repo / "recipes" / f"{name}.json"
    recipe.write_text(json.dumps({"train": {"out": f"../runs/{name}"}, "model": {}}))
    return recipe


def test_a_new_run_is_trained_from_its_recipe_then_evaluated_both_ways_and_published(tmp_path):
    write_recipe(tmp_path, "a")
    calls = run_script(tmp_path, "a=recipes/a.json")
    run = "../runs/a"
    assert calls == [
        ["-m", "training.switchboard", "--config", "recipes/a.json"],
        ["-m", "eval.switchboard", "--checkpoint", f"{run}/best", "--split", "test",
         "--samples", "10", "--seed", "0", "--out", "results/a.json"],
        ["-m", "eval.switchboard", "--checkpoint", f"{run}/best", "--protocol", "paper",
         "--out", "results/a.paper.json"],
        ["-m", "eval.latent_dims", f"a={run}/best", "--split", "test", "--no-progress",
         "--out", f"{run}/dims.png", "--json-out", "results/a.dims.json"],
        ["-m", "training.publish", run, "--name", "a"],
    ]  # fmt: skip


def test_threads_overrides_the_recipe_for_a_new_run_and_a_resumed_one(tmp_path):
    write_recipe(tmp_path, "new")
    write_recipe(tmp_path, "resumed")
    (tmp_path / "runs" / "resumed").mkdir(parents=True)
    (tmp_path / "runs" / "resumed" / "training_state.pt").write_bytes(b"")
    calls = run_script(
        tmp_path, "new=recipes/new.json", "resumed=recipes/resumed.json", THREADS="2"
    )
    training = [c for c in calls if c[:2] == ["-m", "training.switchboard"]]
    assert training == [
        ["-m", "training.switchboard", "--config", "recipes/new.json", "--threads", "2"],
        ["-m", "training.switchboard", "--out", "../runs/resumed", "--resume", "--threads", "2"],
    ]


def test_a_finished_run_is_not_trained_again(tmp_path):
    write_recipe(tmp_path, "done")
    (tmp_path / "runs" / "done").mkdir(parents=True)
    (tmp_path / "runs" / "done" / "summary.json").write_text("{}")
    calls = run_script(tmp_path, "done=recipes/done.json")
    assert [c[1] for c in calls] == [
        "eval.switchboard", "eval.switchboard", "eval.latent_dims", "training.publish",
    ]  # fmt: skip


def test_a_pair_without_an_existing_recipe_is_refused_before_anything_runs(tmp_path):
    write_recipe(tmp_path, "a")
    with pytest.raises(subprocess.CalledProcessError) as failed:
        run_script(tmp_path, "a=recipes/a.json", "b=recipes/missing.json")
    assert failed.value.returncode == 2
    assert not (tmp_path / "calls.jsonl").exists()
    assert b"expected NAME=RECIPE[@last] with an existing recipe file" in failed.value.stderr


def test_at_last_evaluates_the_last_checkpoint_instead_of_the_best(tmp_path):
    write_recipe(tmp_path, "stage")
    calls = run_script(tmp_path, "stage=recipes/stage.json@last")
    assert calls[0] == ["-m", "training.switchboard", "--config", "recipes/stage.json"]
    evaluated = [c[c.index("--checkpoint") + 1] for c in calls if "--checkpoint" in c]
    assert evaluated == ["../runs/stage/last", "../runs/stage/last"]
    assert calls[3][2] == "stage=../runs/stage/last"


def test_a_checkpoint_set_aside_when_the_kl_settled_is_evaluated_both_ways_once(tmp_path):
    write_recipe(tmp_path, "cvae")
    run = tmp_path / "runs" / "cvae"
    (run / "best-before-kl-settled").mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    calls = run_script(tmp_path, "cvae=recipes/cvae.json")
    aside = "../runs/cvae/best-before-kl-settled"
    assert calls[4:] == [
        ["-m", "eval.switchboard", "--checkpoint", aside, "--split", "test", "--samples", "10",
         "--seed", "0", "--out", "results/cvae-before-kl-settled.json"],
        ["-m", "eval.switchboard", "--checkpoint", aside, "--protocol", "paper",
         "--out", "results/cvae-before-kl-settled.paper.json"],
    ]  # fmt: skip
    # Already scored: only the run's own four steps again.
    (tmp_path / "repo" / "results").mkdir()
    (tmp_path / "repo" / "results" / "cvae-before-kl-settled.json").write_text("{}")
    (tmp_path / "calls.jsonl").unlink()
    assert len(run_script(tmp_path, "cvae=recipes/cvae.json")) == 4


def test_no_aside_is_evaluated_without_one_or_for_a_run_scored_at_its_last_checkpoint(tmp_path):
    write_recipe(tmp_path, "plain")
    write_recipe(tmp_path, "stage")
    (tmp_path / "runs" / "stage" / "best-before-kl-settled").mkdir(parents=True)
    calls = run_script(tmp_path, "plain=recipes/plain.json", "stage=recipes/stage.json@last")
    assert not [c for c in calls if any("before-kl-settled" in word for word in c)]


def test_a_finished_run_evaluated_since_is_not_evaluated_again(tmp_path):
    write_recipe(tmp_path, "done")
    run = tmp_path / "runs" / "done"
    (run / "best-before-kl-settled").mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    results = tmp_path / "repo" / "results"
    results.mkdir()
    for name in ("done.json", "done.paper.json"):
        (results / name).write_text("{}")
    os.utime(run / "summary.json", (1_000_000, 1_000_000))  # finished before the evaluation
    calls = run_script(tmp_path, "done=recipes/done.json")
    # only the aside, which was not scored yet
    assert [c[c.index("--checkpoint") + 1] for c in calls] == [
        "../runs/done/best-before-kl-settled", "../runs/done/best-before-kl-settled",
    ]  # fmt: skip
    # a summary newer than the result (the run trained again, say): evaluated again
    (tmp_path / "calls.jsonl").unlink()
    os.utime(results / "done.json", (1_000_000, 1_000_000))
    os.utime(run / "summary.json", None)
    calls = run_script(tmp_path, "done=recipes/done.json")
    assert [c[1] for c in calls][:4] == [
        "eval.switchboard", "eval.switchboard", "eval.latent_dims", "training.publish",
    ]  # fmt: skip
