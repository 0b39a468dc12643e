"""A finished run's record, copied beside the results: what committing a run means.

    python -m training.publish ../bncvae-runs/bn-cvae-paper-d0.3 --name bn-cvae --into results

writes ``results/bn-cvae.config.json``, ``.summary.json``, ``.metrics.ndjson`` (the run's
``metrics.jsonl``) and ``.curves.png``. Paths in the config (``out``, ``data``) are rewritten
relative to the current directory (run it from the repository), so no machine's absolute path
is committed. The checkpoints themselves stay in the run directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from model.files import atomic_path, atomic_write_text

PATH_KEYS = ("out", "data")  # the train config's path-valued fields


def relative(path: str, base: Path) -> str:
    """``path`` (absolute, or relative to ``base``) relative to ``base``."""
    return os.path.relpath((base / path).resolve(), base.resolve())


def publish(run: Path, name: str, into: Path, base: Path | None = None) -> list[Path]:
    """Copy ``run``'s config, summary, metrics log and curves to ``into/<name>.*``; returns them.
    Raises ``SystemExit`` with one line naming the file when the run is not finished."""
    base = Path.cwd() if base is None else base
    summary = run / "summary.json"
    if not summary.exists():
        raise SystemExit(f"{summary}: missing (the run has not finished; resume it with --resume)")
    config = json.loads((run / "config.json").read_text())
    for key in PATH_KEYS:
        if config.get("train", {}).get(key):
            config["train"][key] = relative(config["train"][key], base)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.publish",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", type=Path, help="a finished training.switchboard run directory")
    parser.add_argument("--name", required=True, help="file name stem, e.g. bn-cvae")
    parser.add_argument("--into", type=Path, default=Path("results"), help="target directory")
    args = parser.parse_args(argv)
    for path in publish(args.run, args.name, args.into):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
