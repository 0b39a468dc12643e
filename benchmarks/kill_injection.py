"""A checkpoint save killed at each of its system calls: is ``best/`` still there and loadable?

A process saves a tiny model over an existing checkpoint ``best/`` (the "previous" one) under
``strace``, first only to list the system calls the save makes, then once for every one of them
with ``strace -e inject=SYSCALL:signal=KILL:when=N``: the process is killed as it enters that
call. After each kill the table shows whether a reader finds ``best/`` (or the fallback's
``.best.old``), which checkpoint it loads (previous or new, verified by its SHA-256 hashes), and
how many temporaries the kill left before and after the next start of a run
(``model.files.remove_temporaries``). ``--fallback`` runs the save without RENAME_EXCHANGE (the
two-rename path of file systems that lack it).

    python benchmarks/kill_injection.py [--fallback] [--syscalls rename,renameat2,write]

Linux only; needs strace (Debian: apt-get install strace). Exits 1 if any kill lost ``best/``,
left an unloadable one, or left a temporary after the next start.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(REPO))

# Every call of a save that writes, renames, removes or publishes something.
SYSCALLS = ("openat", "write", "fsync", "fchmod", "chmod", "mkdir", "rename", "renameat2",
            "unlink", "unlinkat", "rmdir")  # fmt: skip
PREVIOUS, NEW = 1, 2  # the checkpoints' metadata "step"


def save(directory: Path, step: int, fallback: bool) -> None:
    """The child: save the tiny model of seed ``step`` as ``directory``."""
    import torch

    import model.files
    from model.checkpoint import save_pretrained
    from model.config import ModelConfig
    from model.cvae import DialogCVAE
    from model.vocab import Vocabulary

    if fallback:
        model.files._exchange = lambda a, b: False
    torch.manual_seed(step)
    vocab = Vocabulary.build([[f"w{i}" for i in range(60)]])
    net = DialogCVAE(ModelConfig.preset("tiny", vocab_size=len(vocab)))
    save_pretrained(net, vocab, directory, metadata={"step": step})


def child_command(directory: Path, step: int, fallback: bool) -> list[str]:
    return [sys.executable, __file__, "--child", str(directory), str(step)] + (
        ["--fallback"] if fallback else []
    )


def calls_of_the_save(
    root: Path, fallback: bool, syscalls: list[str]
) -> list[tuple[str, int, str]]:
    """(syscall, N, the call as strace shows it) of the main thread, for the calls on ``root``
    (openat) or on any file (the others: they are few outside the save)."""
    log = root / "strace.log"
    directory = root / "run" / "best"
    subprocess.run(["strace", "-f", "-qq", "-o", str(log), "-e", "trace=" + ",".join(syscalls),
                    *child_command(directory, NEW, fallback)], check=True)  # fmt: skip
    lines = log.read_text().splitlines()
    main_pid = lines[0].split()[0]
    counts: dict[str, int] = {}
    calls = []
    for line in lines:
        pid, _, rest = line.partition(" ")
        m = re.match(r"\s*(\w+)\(", rest)
        if pid != main_pid or not m or m.group(1) not in syscalls:
            continue
        name = m.group(1)
        counts[name] = counts.get(name, 0) + 1
        if name == "openat" and str(root) not in rest:
            continue
        calls.append((name, counts[name], rest.strip().replace(str(root) + "/", "")))
    log.unlink()
    return calls


def outcome(run: Path) -> tuple[str, str, int, int]:
    """(what a reader finds, which checkpoint loads, temporaries before, after the next start)."""
    from model.checkpoint import CheckpointError, load_config, load_pretrained
    from model.files import existing_directory, remove_temporaries

    before = len([p for p in run.iterdir() if p.name.startswith(".")])
    found = existing_directory(run / "best")
    seen = "best/" if found.name == "best" else found.name if found.exists() else "nothing"
    try:
        load_pretrained(found)
        step = load_config(found)[1]["step"]
        loaded = {PREVIOUS: "previous", NEW: "new"}[step]
    except CheckpointError as e:
        loaded = f"NO: {e}"
    remove_temporaries(run, ["best"])
    after = len([p for p in run.iterdir() if p.name.startswith(".")])
    if not (run / "best").is_dir():
        seen += " (none after the next start)"
    return seen, loaded, before, after


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fallback", action="store_true", help="save without RENAME_EXCHANGE")
    parser.add_argument("--syscalls", default=",".join(SYSCALLS))
    parser.add_argument("--child", nargs=2, metavar=("DIR", "STEP"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        save(Path(args.child[0]), int(args.child[1]), args.fallback)
        return 0
    if shutil.which("strace") is None:
        parser.exit(2, "strace not found (Debian: apt-get install strace)\n")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import logging

    logging.disable(logging.WARNING)  # the fallback's "restored"/"reading .best.old" lines
    syscalls = args.syscalls.split(",")
    failures = 0
    with tempfile.TemporaryDirectory(prefix="kill-injection-") as tmp:
        root = Path(tmp)
        template = root / "template"
        subprocess.run(child_command(template / "best", PREVIOUS, args.fallback), check=True)
        shutil.copytree(template, root / "run")
        calls = calls_of_the_save(root, args.fallback, syscalls)
        mode = "fallback (two renames)" if args.fallback else "RENAME_EXCHANGE"
        print(f"save over an existing best/, {mode}: {len(calls)} calls, each killed in turn\n")
        print("| killed at | call | reader finds | loads | temporaries left | after next start |")
        print("|---|---|---|---|---|---|")
        for name, n, call in calls:
            run = root / "run"
            shutil.rmtree(run)
            shutil.copytree(template, run)
            result = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e",
                                     f"inject={name}:signal=KILL:when={n}",
                                     *child_command(run / "best", NEW, args.fallback)],
                                    capture_output=True)  # fmt: skip
            killed = result.returncode in (-9, 137)
            seen, loaded, before, after = outcome(run)
            ok = (
                killed and seen.startswith(("best/", ".best.old")) and loaded in ("previous", "new")
            )
            ok = ok and after == 0 and (run / "best").is_dir()
            failures += not ok
            short = (call if len(call) < 70 else call[:67] + "...").replace("|", "\\|")
            print(f"| {name} #{n}{'' if killed else ' (not killed)'} | `{short}` | {seen} | "
                  f"{loaded} | {before} | {after} |")  # fmt: skip
    print(f"\n{len(calls)} kills, {failures} lost or unloadable best/ or temporaries left")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
