"""A finished run's record, copied beside the results: what committing a run means.

    python -m training.publish ../bncvae-runs/bn-cvae-paper-d0.3 --name bn-cvae --into results

writes ``results/bn-cvae.config.json``, ``.summary.json``, ``.metrics.ndjson`` (the run's
``metrics.jsonl``) and ``.curves.png``. Absolute paths in the config (``out``, ``init_from``)
are made relative to the repository, so no machine's own paths are committed. The checkpoints
stay in the run directory, except with ``--checkpoint DIR``: the run's best checkpoint (or,
with ``--from last``, its last one) is written there in float16 (half the size; loaded as
float32), e.g. as the project's default checkpoint, ``checkpoints/bn-cvae-switchboard``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from model.checkpoint import load_config, load_pretrained, save_pretrained
from model.files import atomic_path, atomic_write_text, repo_relative_paths


def publish(run: Path, name: str, into: Path) -> list[Path]:
    """Copy ``run``'s config, summary, metrics log and curves to ``into/<name>.*``; returns them.
    A run that has not finished is refused (ValueError naming its missing summary)."""
    summary = run / "summary.json"
    if not summary.exists():
        raise ValueError(f"{summary}: missing (the run has not finished; resume it with --resume)")
    config = json.loads((run / "config.json").read_text())
    config = repo_relative_paths(config)
    into.mkdir(parents=True, exist_ok=True)
    written = [into / f"{name}.config.json"]
    atomic_write_text(written[0], json.dumps(config, indent=2) + "\n")
    for source, suffix in (
        (summary, "summary.json"),
        (run / "metrics.jsonl", "metrics.ndjson"),
        (run / "curves.png", "curves.png"),
    ):
        if source.exists():
            written.append(into / f"{name}.{suffix}")
            with atomic_path(written[-1]) as tmp:
                shutil.copyfile(source, tmp)
    return written


CHECKPOINTS = ("best", "last")


def ship_checkpoint(run: Path, directory: Path, which: str = "best") -> None:
    """The run's ``which`` checkpoint (best or last), in float16, at ``directory``; its
    metadata says where from."""
    if which not in CHECKPOINTS:
        raise ValueError(f"which must be one of {CHECKPOINTS}, got {which!r}")
    model, vocab = load_pretrained(run / which)
    _, metadata = load_config(run / which)
    metadata = repo_relative_paths(metadata)
    metadata["checkpoint"] = which
    metadata["weights"] = "float16 (loaded as float32)"
    save_pretrained(model, vocab, directory, metadata=metadata, dtype=torch.float16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.publish",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", type=Path, help="a finished training.switchboard run directory")
    parser.add_argument("--name", required=True, help="file name stem, e.g. bn-cvae")
    parser.add_argument("--into", type=Path, default=Path("results"), help="target directory")
    parser.add_argument(
        "--checkpoint", type=Path, help="also write the run's best checkpoint here, in float16"
    )
    parser.add_argument(
        "--from",
        dest="which",
        choices=CHECKPOINTS,
        default="best",
        help="which of the run's checkpoints --checkpoint writes: best (by validation -ELBO) "
        "or last (e.g. a fine-tuning chosen by another measure)",
    )
    args = parser.parse_args(argv)
    try:
        for path in publish(args.run, args.name, args.into):
            print(path)
        if args.checkpoint:
            ship_checkpoint(args.run, args.checkpoint, args.which)
            print(args.checkpoint)
    except (OSError, ValueError) as e:  # CheckpointError is a ValueError
        parser.exit(2, f"python -m training.publish: {e}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
