"""The example outputs shown in README.md and docs/, produced by running them.

``python scripts/examples.py`` rewrites each example's output between its markers
(``<!-- example:NAME -->`` ... ``<!-- /example:NAME -->``); ``--check`` exits 1 naming every
example whose text is not what the code gives now (tests/test_examples.py runs it). Each example
is sent to the app in-process with the default checkpoint and the service's default settings,
which is what ``make serve`` answers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The request of README's curl example (the JSON in its -d argument).
RESPOND_REQUEST = {
    "conversation": [
        {"speaker": "A", "text": "Do you have any pets?"},
        {"speaker": "B", "text": "Yes, we have a dog."},
    ],
    "num_samples": 5,
    "seed": 1,
}
# The service's default; on a CPU without native bfloat16 the vocabulary projection runs in
# float32 and log-probabilities differ in the second decimal, so --check allows LOG_PROB_TOLERANCE.
DECODE_DTYPE = "auto"
LOG_PROB_TOLERANCE = 0.05
FILES = ("README.md", "docs/service.md")


def curl(request: dict) -> str:
    """The request as the curl command shown in the docs."""
    turns = ",\n                   ".join(json.dumps(t) for t in request["conversation"])
    rest = ", ".join(f'"{k}": {json.dumps(v)}' for k, v in request.items() if k != "conversation")
    return (
        "curl -s localhost:8000/respond -H 'content-type: application/json' -d '{\n"
        f'  "conversation": [{turns}],\n  {rest}}}\''
    )


def render(response: dict) -> str:
    """A /respond answer as JSON, one response or report per line."""
    lines = ["{"]
    items = list(response.items())
    for i, (key, value) in enumerate(items):
        end = "," if i < len(items) - 1 else ""
        if isinstance(value, list):
            inner = ",\n  ".join("  " + json.dumps(v) for v in value)
            lines.append(f'  "{key}": [\n  {inner}\n  ]{end}')
        else:
            lines.append(f'  "{key}": {json.dumps(value)}{end}')
    lines.append("}")
    return "\n".join(lines)


def respond_example() -> str:
    with warnings.catch_warnings():  # starlette's note that its TestClient will move
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    import time

    from service.app import create_app
    from service.config import ServiceConfig, resolve_checkpoint
    from service.engine import InferenceEngine

    config = ServiceConfig(
        checkpoint=resolve_checkpoint(None, {}), torch_threads=1, decode_dtype=DECODE_DTYPE
    )
    with TestClient(create_app(InferenceEngine.from_checkpoint(config))) as client:
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the default checkpoint did not load within 60 s")
            time.sleep(0.05)
        answer = client.post("/respond", json=RESPOND_REQUEST)
        answer.raise_for_status()
    return respond_example_text(answer.json())


def respond_example_text(body: dict) -> str:
    """The curl command and the answer ``body``, as the docs show them."""
    for r in body["responses"]:
        r["log_prob"] = round(r["log_prob"], 2)
        if r.get("fit") is not None:
            r["fit"] = round(r["fit"], 2)
    return f"```bash\n{curl(RESPOND_REQUEST)}\n```\n\n```json\n{render(body)}\n```"


EXAMPLES = {"respond": respond_example}


def same(shown: str, made: str) -> bool:
    """Whether an example's text in a file is what the code gives now: equal, but for
    log-probabilities within LOG_PROB_TOLERANCE (fits within 4 times that)."""
    if shown == made:
        return True
    fence = r"```json\n(.*?)```"
    a, b = re.search(fence, shown, re.S), re.search(fence, made, re.S)
    if a is None or b is None or shown[: a.start()] != made[: b.start()]:
        return False
    try:
        old, new = json.loads(a.group(1)), json.loads(b.group(1))
    except ValueError:
        return False
    if len(old.get("responses", [])) != len(new.get("responses", [])):
        return False
    for x, y in zip(old["responses"], new["responses"], strict=True):
        if abs(x.pop("log_prob") - y.pop("log_prob")) > LOG_PROB_TOLERANCE:
            return False
        # the fit adds up several log-probabilities (model/reranking.py): a wider tolerance
        if abs((x.pop("fit", None) or 0) - (y.pop("fit", None) or 0)) > 4 * LOG_PROB_TOLERANCE:
            return False
    return old == new


def blocks(text: str):
    pattern = r"(<!-- example:(\w+) -->\n)(.*?)(<!-- /example:\2 -->)"
    return re.finditer(pattern, text, flags=re.S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    made: dict[str, str] = {}
    stale = []
    for name in FILES:
        path = ROOT / name
        text = path.read_text()
        new = text
        for m in reversed(list(blocks(text))):
            key = m.group(2)
            if key not in EXAMPLES:
                print(f"{name}: unknown example {key!r}")
                return 1
            if key not in made:
                made[key] = EXAMPLES[key]() + "\n"
            if not same(m.group(3), made[key]):
                new = new[: m.start(3)] + made[key] + new[m.end(3) :]
        if new != text:
            stale.append(name)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"stale examples in {', '.join(stale)}: run python scripts/examples.py")
        return 1
    print(("rewrote " + ", ".join(stale)) if stale else "every example is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
