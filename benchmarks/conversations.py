"""Twenty everyday conversations, sent to a running server: do its responses answer them?

Each conversation (pets, weather, work, travel, food, films, a question, a greeting, a
complaint; long and short ones; written for this check, not taken from Switchboard) goes to
``POST /respond`` once; the replies are printed with three measures over all of them:

* one-word share: replies of one word ("yeah", "uh-huh");
* distinct share: requests whose replies are pairwise distinct;
* mean length: words per reply.

    python -m service --port 18300 &
    python benchmarks/conversations.py --url http://127.0.0.1:18300
    python benchmarks/conversations.py --url ... --field rerank=none     # any request field
"""

from __future__ import annotations

import argparse
import json
import sys

import httpx

CONVERSATIONS: list[tuple[str, list[str]]] = [
    ("pets", ["Do you have any pets?", "Yeah, we have two dogs and a cat."]),
    ("pets, long", [
        "So what kind of pets do you have?",
        "Well right now just a cat. We used to have a golden retriever.",
        "Oh, I love golden retrievers. What happened to him?",
        "He got old, he was fourteen. We still miss him a lot.",
        "That's hard. Are you thinking about getting another dog?",
    ]),
    ("weather", ["What's the weather been like where you are?"]),
    ("weather, rain", [
        "It has been raining here for a week straight.",
        "Wow, we haven't had any rain at all this month.",
        "Lucky you. My garden is flooded.",
    ]),
    ("work", ["So what do you do for a living?"]),
    ("work, long", [
        "I just started a new job last month.",
        "Oh congratulations, what kind of work is it?",
        "I'm an engineer at a company that builds bridges.",
        "That sounds interesting. Do you like it so far?",
        "I do, but the commute is about an hour each way.",
    ]),
    ("travel", ["Have you traveled anywhere interesting lately?"]),
    ("travel, plans", [
        "We're going to Colorado this summer.",
        "Oh nice, are you going to do any hiking?",
        "Yes, we want to camp in the mountains for a few days.",
    ]),
    ("food", ["What's your favorite kind of food?"]),
    ("food, cooking", [
        "Do you cook much at home?",
        "Not really, we eat out a lot. How about you?",
        "I cook almost every night. I make a lot of Mexican food.",
    ]),
    ("films", ["Did you see any good movies lately?"]),
    ("films, long", [
        "Pretty good. Did you see any good movies lately?",
        "We saw a comedy last weekend but it wasn't very funny.",
        "That's too bad. I mostly watch movies on TV now.",
        "Me too, the theaters are so expensive.",
    ]),
    ("a question", ["How many kids do you have?"]),
    ("a question, school", [
        "Where did you go to college?",
        "I went to a small school in Texas.",
        "What did you study there?",
    ]),
    ("a greeting", ["Hi, how are you doing today?"]),
    ("a greeting, names", ["Hello, this is Mary.", "Hi Mary, I'm John. Where are you calling from?"]),
    ("a complaint", ["I'm so tired of paying these high taxes every year."]),
    ("a complaint, car", [
        "My car broke down again this morning.",
        "Oh no, what's wrong with it this time?",
        "The transmission, I think. It's going to cost a fortune.",
    ]),
    ("sports", ["Do you follow any sports teams?"]),
    ("a long chat about music", [
        "What kind of music do you listen to?",
        "Mostly country, and some old rock and roll.",
        "I like country too. Have you been to any concerts?",
        "We saw Willie Nelson a couple of years ago.",
        "Oh I bet that was great. I've never seen him live.",
        "It was, he played for almost three hours.",
    ]),
]  # fmt: skip


def conversation_turns(texts: list[str]) -> list[dict]:
    """Alternating speakers A, B, A, ... (the server answers as the other one)."""
    return [{"speaker": "AB"[i % 2], "text": t} for i, t in enumerate(texts)]


def parse_field(text: str) -> tuple[str, object]:
    """``name=value``, the value read as JSON when it is JSON (numbers, true), else a string."""
    name, _, value = text.partition("=")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--samples", type=int, default=5, help="responses per conversation")
    parser.add_argument(
        "--seed", type=int, default=0, help="conversation i is sent with seed SEED + i"
    )
    parser.add_argument(
        "--field", action="append", default=[], metavar="NAME=VALUE",
        help="another request field, e.g. rerank=none or candidates=20 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the replies as JSON lines")
    args = parser.parse_args(argv)
    extra = dict(parse_field(f) for f in args.field)

    replies: list[str] = []
    distinct_requests = drawn = 0
    with httpx.Client(base_url=args.url, timeout=120) as client:
        for i, (topic, texts) in enumerate(CONVERSATIONS):
            body = {
                "conversation": conversation_turns(texts),
                "num_samples": args.samples,
                "seed": args.seed + i,  # the same seed would give every conversation the same z
                **extra,
            }
            r = client.post("/respond", json=body)
            if r.status_code != 200:
                print(f"{topic}: HTTP {r.status_code} {r.text}", file=sys.stderr)
                return 1
            out = r.json()
            said = [x["text"] for x in out["responses"]]
            replies += said
            distinct_requests += len(set(said)) == len(said) == args.samples
            drawn += out.get("sampling", {}).get("drawn", len(said))
            if args.json:
                print(json.dumps({"topic": topic, "conversation": texts, "replies": said}))
            else:
                print(f"## {topic}")
                for i, t in enumerate(texts):
                    print(f"> {'AB'[i % 2]}: {t}")
                for s in said:
                    print(f"- {s or '(empty)'}")
                print()
    words = [len(t.split()) for t in replies]
    n = len(CONVERSATIONS)
    print(
        f"{n} conversations, {len(replies)} replies ({args.samples} asked per conversation; "
        f"fields {extra or 'the defaults'}): one-word {100 * sum(w == 1 for w in words) / len(words):.1f}%, "
        f"all distinct in {100 * distinct_requests / n:.0f}% of requests, "
        f"mean length {sum(words) / len(words):.1f} words, {drawn / n:.1f} draws per request"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
