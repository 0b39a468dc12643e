"""Build the service's image, run it, probe it, stop it, and remove what was made (make docker-check).

For a Debian machine that reaches Debian's mirror and the Python package index but no image
registry (so ``nvidia/cuda`` cannot be pulled):

1. the engine: Debian's ``docker.io`` and ``mmdebstrap`` are installed if missing (as root, with
   apt-get), and ``dockerd`` is started (``--iptables=false --ip6tables=false --bridge=none``)
   unless one answers already;
2. the base image: a Debian bookworm root file system from ``mmdebstrap --variant=minbase``,
   ``docker import``-ed, holding the CA bundle pip is configured with here (``pip config list``,
   ``cert``) and an ``/etc/pip.conf`` naming it, so that pip inside the build reaches the index
   the way pip here does;
3. the project's Dockerfile built on that base (``--build-arg BASE_IMAGE``, ``--network host``),
   with the CUDA build of torch from the package index, as in the shipped image;
4. the container run with ``--network none``, waited for until ``docker inspect`` says healthy,
   and probed with ``docker exec``: ``/ready``, ``/respond``, ``/v1/chat/completions`` with n=3,
   ``/metrics``; it must not run as root; ``docker stop`` must end it with exit code 0 in 10 s;
5. the build time, image size (per layer too) and startup time printed; then the container, the
   images and the base removed (exactly those: what existed before is left), and the engine
   stopped by its PID if this script started it.

Only the standard library: it runs before any virtual environment exists. Exit code 0 when
every check passed; 1 with the failed check's message otherwise; 3 when no engine can be
started here (the test skips on that, with this script's message).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NO_ENGINE = 3  # exit code: no Docker engine can be started on this machine
ENGINE_FLAGS = ["--iptables=false", "--ip6tables=false", "--bridge=none"]
SUITE = "bookworm"
# Where the base image keeps the CA bundle pip trusts (and /etc/pip.conf says so).
BASE_CA_BUNDLE = "/etc/ssl/pip-ca-bundle.crt"
# The target for the image's size: the torch layer plus this much for everything else.
SIZE_ALLOWANCE = 300 * 10**6
READY_LIMIT_S = 5.0
STOP_LIMIT_S = 10.0
MB = 10**6


class CheckFailed(Exception):
    pass


class NoEngine(Exception):
    pass


def log(message: str) -> None:
    print(f"[docker-check] {message}", flush=True)


def run(
    *cmd: str, check: bool = True, capture: bool = True, **kwargs
) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, text=True, capture_output=capture, **kwargs)
    if check and result.returncode != 0:
        output = (result.stderr or result.stdout or "").strip()[-2000:] if capture else ""
        raise CheckFailed(f"{' '.join(cmd[:4])} ... exited with {result.returncode}: {output}")
    return result


# --- the engine ---------------------------------------------------------------------------------


def engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return run("docker", "info", check=False).returncode == 0


def install_packages(packages: list[str]) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise NoEngine(
            f"{', '.join(packages)} missing and cannot be installed (needs root and apt-get)"
        )
    log(f"installing {' '.join(packages)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
    ):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise NoEngine(f"{' '.join(cmd)} failed: {result.stderr.strip()[-500:]}")


class Engine:
    """A Docker engine that answers; started here (and then stopped here) only if none did."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Engine:
        missing = [
            p
            for p, exe in (("docker.io", "dockerd"), ("mmdebstrap", "mmdebstrap"))
            if shutil.which(exe) is None
        ]
        if missing and not (missing == ["docker.io"] and engine_answers()):
            install_packages(missing)
        if engine_answers():
            log("using the Docker engine that is running")
            return self
        if os.geteuid() != 0:
            raise NoEngine("no Docker engine answers and starting dockerd needs root")
        log(f"starting dockerd {' '.join(ENGINE_FLAGS)}")
        engine_log = open(self.workdir / "dockerd.log", "w")  # noqa: SIM115 (closed by the process's end)
        self.process = subprocess.Popen(
            ["dockerd", *ENGINE_FLAGS],
            stdout=engine_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.workdir / "dockerd.log").read_text()[-800:]
                raise NoEngine(f"dockerd exited with {self.process.returncode}: {tail.strip()}")
            if engine_answers():
                log(f"dockerd (PID {self.process.pid}) answers")
                return self
            time.sleep(0.5)
        self._stop()
        raise NoEngine("dockerd did not answer within 60 s")

    def __exit__(self, *exc) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        log(f"stopping the dockerd this check started (PID {self.process.pid})")
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- what the check creates, removed at the end -------------------------------------------------


class Created:
    """Containers and images this check made, removed in reverse order.

    Exactly those: the tags it gave, and the images its build made, read from the build's log
    (a step's " ---> <id>", not the ones taken from the cache or FROM), so that a check or build
    running at the same time on the same engine keeps its own.
    """

    def __init__(self):
        self.containers: list[str] = []
        self.tags: list[str] = []
        self.images: list[str] = []  # made by the build, oldest first

    def remove(self) -> None:
        for container in self.containers:
            run("docker", "rm", "--force", container, check=False)
        for tag in reversed(self.tags):
            run("docker", "rmi", tag, check=False)
        # the build's intermediate images (a multi-stage build leaves its first stage's); an
        # image another one was built on since (not by this check) is not removed
        left = [i for i in reversed(self.images) if run("docker", "rmi", i, check=False).returncode]
        left = [
            i for i in left if run("docker", "image", "inspect", i, check=False).returncode == 0
        ]
        log(
            f"removed {len(self.containers)} container(s) and the images made"
            + (f"; {len(left)} left (others built on them): {left}" if left else "")
        )


def images_built(build_log: str) -> list[str]:
    """The images a legacy-builder build made, from its log: each step's result, less what
    came from FROM or from the cache."""
    made, step, cached = [], "", False
    for line in build_log.splitlines():
        text = line.strip()
        if text.startswith("Step ") and " : " in text:
            step, cached = text.split(" : ", 1)[1], False
        elif text == "---> Using cache":
            cached = True
        elif text.startswith("---> ") and len(text.split()) == 2:
            image = text.split()[1]
            if all(c in "0123456789abcdef" for c in image) and not cached:
                if not step.upper().startswith("FROM "):
                    made.append(image)
            cached = False
    return made


# --- the base image -----------------------------------------------------------------------------


def pip_ca_bundle() -> Path | None:
    """The CA bundle pip is configured with here (``pip config list``: ``cert``), if any."""
    result = run(sys.executable, "-m", "pip", "config", "list", check=False)
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.split(".")[-1] == "cert":
            path = Path(value.strip().strip("'\""))
            if path.is_file():
                return path
    bundle = os.environ.get("PIP_CERT")
    return Path(bundle) if bundle and Path(bundle).is_file() else None


# As in Ubuntu's (and so NVIDIA's) images: no manuals, documentation or translations, in the
# base nor in what is installed on it later (dpkg's configuration stays in the image).
DPKG_EXCLUDES = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/info/*",
]


def build_base(tag: str, workdir: Path) -> float:
    """Debian minbase with ca-certificates and pip's CA bundle, imported as ``tag``."""
    hooks = [f"--dpkgopt={option}" for option in DPKG_EXCLUDES]
    bundle = pip_ca_bundle()
    if bundle is not None:
        pip_conf = workdir / "pip.conf"
        pip_conf.write_text(f"[global]\ncert = {BASE_CA_BUNDLE}\n")
        hooks += [
            f"--customize-hook=upload {bundle} {BASE_CA_BUNDLE}",
            f"--customize-hook=upload {pip_conf} /etc/pip.conf",
        ]
        log(f"the base trusts pip's CA bundle {bundle}")
    started = time.monotonic()
    mmdebstrap = subprocess.Popen(
        [
            "mmdebstrap",
            "--quiet",
            "--variant=minbase",
            "--include=ca-certificates",
            *hooks,
            SUITE,
            "-",
        ],
        stdout=subprocess.PIPE,
        stderr=open(workdir / "mmdebstrap.log", "w"),  # noqa: SIM115
    )
    imported = run("docker", "import", "-", tag, stdin=mmdebstrap.stdout, check=False)
    mmdebstrap.stdout.close()
    if mmdebstrap.wait() != 0 or imported.returncode != 0:
        tail = (workdir / "mmdebstrap.log").read_text()[-800:]
        raise CheckFailed(f"building the base failed: {tail.strip()} {imported.stderr.strip()}")
    return time.monotonic() - started


# --- the image ----------------------------------------------------------------------------------


def build_image(tag: str, base: str, workdir: Path) -> float:
    log(
        f"docker build --network host --build-arg BASE_IMAGE={base} -t {tag} (build log: "
        f"{workdir / 'build.log'})"
    )
    started = time.monotonic()
    with open(workdir / "build.log", "w") as build_log:
        result = subprocess.run(
            [
                "docker",
                "build",
                "--network",
                "host",
                "--build-arg",
                f"BASE_IMAGE={base}",
                "--force-rm",
                "-t",
                tag,
                str(REPO),
            ],
            stdout=build_log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},  # the builder every engine version has
        )
    if result.returncode != 0:
        tail = (workdir / "build.log").read_text()[-2000:]
        raise CheckFailed(f"docker build failed:\n{tail}")
    return time.monotonic() - started


def layers(tag: str) -> list[tuple[int, str]]:
    """(bytes, the instruction that made it) of each layer of ``tag``, oldest first."""
    result = run(
        "docker",
        "history",
        "--no-trunc",
        "--human=false",
        "--format",
        "{{.Size}}\t{{.CreatedBy}}",
        tag,
    )
    rows = []
    for line in result.stdout.splitlines():
        size, _, created_by = line.partition("\t")
        rows.append((int(size), " ".join(created_by.split())))
    return rows[::-1]


def inside(image: str) -> str:
    """What the image's main directories hold (du), in MB."""
    directories = [
        "/opt/torch",
        "/opt/torch/nvidia",
        "/opt/torch/torch",
        "/opt/app",
        "/usr",
        "/app",
    ]
    result = run(
        "docker",
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "du",
        image,
        "-s",
        "--block-size=1000000",
        *directories,
        check=False,
    )
    return ", ".join(
        f"{path} {size}" for size, path in (line.split("\t") for line in result.stdout.splitlines())
    )


def torch_layer(rows: list[tuple[int, str]]) -> int:
    """The torch layer: the largest (torch with the CUDA libraries; the history of a COPY does
    not name its source)."""
    return max((size for size, _ in rows), default=0)


# --- the container ------------------------------------------------------------------------------


PROBE = r"""
import json, sys, urllib.error, urllib.request
path, body = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
request = urllib.request.Request("http://127.0.0.1:8000" + path,
    data=body.encode() if body else None, headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=30) as response:
        status, text = response.status, response.read().decode()
except urllib.error.HTTPError as e:
    status, text = e.code, e.read().decode()
except OSError as e:
    status, text = 0, str(e)
print(status)
print(text)
"""


def probe(container: str, path: str, body: dict | None = None) -> tuple[int, str]:
    args = [json.dumps(body)] if body is not None else []
    result = run("docker", "exec", container, "python3", "-c", PROBE, path, *args, check=False)
    if result.returncode != 0:
        return 0, result.stderr.strip()
    status, _, text = result.stdout.partition("\n")
    return int(status), text.strip()


def inspect(container: str, template: str) -> str:
    return run("docker", "inspect", "--format", template, container).stdout.strip()


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)
    log(f"ok: {message}")


def timestamp(text: str) -> float:
    """Seconds since the epoch of Docker's RFC 3339 time (nanoseconds cut to microseconds)."""
    day, _, rest = text.strip().rstrip("Z").partition("T")
    clock, _, fraction = rest.partition(".")
    moment = datetime.fromisoformat(f"{day}T{clock}.{(fraction + '000000')[:6]}+00:00")
    return moment.timestamp()


def check_container(container: str, image: str) -> dict:
    # As deploy/kubernetes/ runs it: read-only, /tmp a tmpfs, no capabilities.
    run(
        *("docker", "run", "--detach", "--network", "none", "--name", container),
        *("--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL"),
        *("--security-opt", "no-new-privileges", "--health-interval", "1s"),
        image,
    )
    figures = {}
    deadline = time.monotonic() + 180
    while (health := inspect(container, "{{.State.Health.Status}}")) != "healthy":
        if inspect(container, "{{.State.Running}}") != "true":
            logs = run("docker", "logs", "--tail", "30", container, check=False)
            raise CheckFailed(f"the container stopped: {logs.stdout}{logs.stderr}")
        if time.monotonic() > deadline:
            raise CheckFailed(f"not healthy within 180 s ({health})")
        time.sleep(0.2)
    started = timestamp(inspect(container, "{{.State.StartedAt}}"))
    figures["healthy_s"] = time.time() - started
    expect(True, f"healthy (docker inspect) {figures['healthy_s']:.1f} s after the start")
    # Ready: the engine's log line when it takes requests, against the container's start (no
    # polling with docker exec, which would itself slow the start down).
    while (status := probe(container, "/ready")[0]) != 200:
        if time.monotonic() > deadline:
            raise CheckFailed(f"/ready answered {status}, not 200, within 180 s")
        time.sleep(0.5)
    logs = run("docker", "logs", "--timestamps", container)
    ready_line = next(
        line for line in (logs.stdout + logs.stderr).splitlines() if "model ready on" in line
    )
    figures["ready_s"] = timestamp(ready_line.split()[0]) - started
    expect(True, f"/ready: 200; the model was ready {figures['ready_s']:.1f} s after the start")
    # where the process's part of it went (docs/deployment.md, "Where the start-up time goes")
    for line in (logs.stdout + logs.stderr).splitlines():
        if "startup: " in line:
            log(line.split("startup: ", 1)[1])

    turn = {"speaker": "A", "text": "do you have any pets"}
    status, text = probe(container, "/respond", {"conversation": [turn], "num_samples": 3})
    expect(status == 200, f"/respond: {status}")
    responses = json.loads(text)["responses"]
    expect(
        len(responses) == 3 and all(r["text"] for r in responses),
        f"/respond gave 3 responses: {[r['text'] for r in responses]}",
    )
    device = json.loads(text)["model"]["device"]

    name = json.loads(probe(container, "/v1/models")[1])["data"][0]["id"]
    chat = {"model": name, "n": 3, "messages": [{"role": "user", "content": "hi how are you"}]}
    status, text = probe(container, "/v1/chat/completions", chat)
    expect(status == 200, f"/v1/chat/completions: {status}")
    choices = [c["message"]["content"] for c in json.loads(text)["choices"]]
    expect(len(choices) == 3, f"/v1/chat/completions gave n=3 choices: {choices}")

    status, text = probe(container, "/metrics")
    expect(status == 200, f"/metrics: {status}")
    served = [line for line in text.splitlines() if line.startswith("bncvae_http_requests_total{")]
    counted = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in served}
    respond_ok = [v for k, v in counted.items() if 'route="/respond"' in k and 'status="200"' in k]
    expect(respond_ok == [1.0], f"/metrics counted the one /respond: {served}")

    uid = inspect(container, "{{.Config.User}}")
    status_lines = run("docker", "exec", container, "cat", "/proc/1/status").stdout
    real_uid = next(
        line.split()[1] for line in status_lines.splitlines() if line.startswith("Uid:")
    )
    expect(real_uid != "0", f"the service runs as uid {real_uid} (USER {uid}), not root")

    stop_started = time.monotonic()
    run("docker", "stop", "--time", str(int(STOP_LIMIT_S)), container)
    figures["stop_s"] = time.monotonic() - stop_started
    code = inspect(container, "{{.State.ExitCode}}")
    expect(
        code == "0" and figures["stop_s"] < STOP_LIMIT_S,
        f"docker stop: exit code {code} in {figures['stop_s']:.1f} s",
    )
    figures["device"] = device
    return figures


# --- the whole check ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base",
        metavar="IMAGE",
        help="build on this base image (left in place) instead of making one",
    )
    parser.add_argument(
        "--keep", action="store_true", help="leave the image (and base) in place for a look"
    )
    args = parser.parse_args(argv)
    run_id = secrets.token_hex(4)
    base, image, container = (
        f"bncvae-check-base:{run_id}",
        f"bncvae-check:{run_id}",
        f"bncvae-check-{run_id}",
    )
    with tempfile.TemporaryDirectory(prefix="docker-check-") as tmp:
        workdir = Path(tmp)
        try:
            with Engine(workdir):
                created = Created()
                try:
                    if args.base:
                        base, base_s = args.base, 0.0
                    else:
                        created.tags.append(base)
                        base_s = build_base(base, workdir)
                        log(f"base image {base} built in {base_s:.0f} s")
                    created.tags.append(image)
                    try:
                        build_s = build_image(image, base, workdir)
                    finally:
                        build_log = (workdir / "build.log").read_text(errors="replace")
                        created.images = images_built(build_log)
                    size = int(
                        run("docker", "image", "inspect", "--format", "{{.Size}}", image).stdout
                    )
                    rows = layers(image)
                    created.containers.append(container)
                    figures = check_container(container, image)
                    torch_bytes = torch_layer(rows)
                    print()
                    print(f"build time      {build_s:8.0f} s   (base image: {base_s:.0f} s)")
                    print(f"image size      {size / MB:8.0f} MB  ({len(rows)} layers)")
                    print(
                        f"torch layer     {torch_bytes / MB:8.0f} MB  "
                        f"(everything else: {(size - torch_bytes) / MB:.0f} MB)"
                    )
                    ready = figures["ready_s"]
                    target = (
                        f"target {READY_LIMIT_S:g} s: met"
                        if ready <= READY_LIMIT_S
                        else f"over the {READY_LIMIT_S:g} s target, with the load average at "
                        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
                    )
                    print(
                        f"ready after     {ready:8.1f} s   ({target}; healthy after "
                        f"{figures['healthy_s']:.1f} s; device {figures['device']})"
                    )
                    print(f"docker stop     {figures['stop_s']:8.1f} s")
                    print("inside (MB):   " + inside(image))
                    print("layers (MB, instruction):")
                    for size_bytes, created_by in rows:
                        if size_bytes:
                            print(f"  {size_bytes / MB:8.1f}  {created_by[:110]}")
                    expect(
                        size <= torch_bytes + SIZE_ALLOWANCE,
                        f"image size {size / MB:.0f} MB <= torch layer + "
                        f"{SIZE_ALLOWANCE / MB:.0f} MB ({(torch_bytes + SIZE_ALLOWANCE) / MB:.0f} MB)",
                    )
                finally:
                    if args.keep:
                        log(f"kept {image} and {base} (--keep)")
                        created.tags, created.images = [], []
                    created.remove()
        except NoEngine as e:
            print(f"docker-check: no Docker engine: {e}", file=sys.stderr)
            return NO_ENGINE
        except CheckFailed as e:
            print(f"docker-check: FAILED: {e}", file=sys.stderr)
            return 1
    log("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
