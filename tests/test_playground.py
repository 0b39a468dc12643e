"""The playground at / and the API docs at /docs, in a real headless browser: Debian's chromium
driven by Playwright's Python package (``.ci/run`` installs chromium; Playwright downloads no
browser of its own). The page talks only to the service: every request it makes is checked.

``python -m tests.test_playground docs/img/playground.png`` takes docs/service.md's screenshot.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.servers import SHIPPED_CHECKPOINT, running_service

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    *("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"),
    *("--disable-component-update", "--no-first-run"),
]


def require_browser() -> None:
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium; .ci/run does)")


@contextmanager
def browser_page() -> Iterator[tuple]:
    """A page of a fresh headless chromium, and the list of every URL it requests."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.set_default_timeout(60_000)  # the machine may be busy
            requested = []
            page.on("request", lambda request: requested.append(request.url))
            yield page, requested
        finally:
            browser.close()


def add_turn(page, speaker: str, text: str) -> None:
    page.select_option("#speaker", speaker)
    page.fill("#turn-text", text)
    page.press("#turn-text", "Enter")


def ask_for_responses(page, number: int, decoding: str = "greedy") -> list[str]:
    from playwright.sync_api import expect

    page.fill("#num-samples", str(number))
    page.select_option("#decoding", decoding)
    page.click("#respond")
    # A locator assertion, not wait_for_function: the page's Content-Security-Policy forbids
    # eval, which Playwright's string predicates need.
    expect(page.locator("#responses .response")).to_have_count(number, timeout=60_000)
    return page.locator("#responses .response .text").all_inner_texts()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    require_browser()
    log = tmp_path_factory.mktemp("playground") / "server.log"
    with running_service(SHIPPED_CHECKPOINT, log, "--torch-threads", "1") as base:
        yield base


@pytest.mark.slow
def test_type_a_turn_ask_for_three_responses_and_pick_one(service, tmp_path):
    with browser_page() as (page, requested):
        page.goto(f"{service}/")
        assert page.title() == "BN-CVAE playground"
        add_turn(page, "A", "Do you have any pets?")
        turns = page.locator("#conversation li")
        assert turns.count() == 1
        assert page.locator("#speaker").input_value() == "B"  # the other speaker is next

        texts = ask_for_responses(page, 3)
        assert len(texts) == 3 and all(texts)
        status = page.inner_text("#status")
        assert "3 responses as B" in status and "Read 5 tokens" in status

        page.locator("#responses .response").nth(1).click()
        assert turns.count() == 2
        assert turns.nth(1).locator(".who").inner_text() == "B"
        assert turns.nth(1).locator(".said").inner_text() == texts[1]
        assert page.locator("#responses .response").count() == 0  # asked again from here

        page.select_option("#decoding", "sample")  # temperature applies to sampling
        assert page.locator("#temperature").is_enabled()
        page.screenshot(path=str(tmp_path / "playground.png"))
        assert all(url.startswith(service) for url in requested), requested


@pytest.mark.slow
def test_a_warning_when_the_model_cannot_read_the_input(service):
    with browser_page() as (page, requested):
        page.goto(f"{service}/")
        add_turn(page, "A", "你好吗 🙂")
        ask_for_responses(page, 2)
        assert "most of the input could not be read" in page.inner_text("#warning")
        status = page.inner_text("#status")
        assert "2 pieces of text it cannot read" in status and "were dropped" in status


@pytest.mark.slow
def test_one_token_is_singular_and_lines_go_with_their_cards(service):
    with browser_page() as (page, requested):
        page.goto(f"{service}/")
        add_turn(page, "A", "Hi")
        ask_for_responses(page, 1)
        assert "1 response as B" in page.inner_text("#status")
        assert "Read 1 token from the last 1 turn of 1" in page.inner_text("#status")
        # each card says "N tokens", and "1 token" when N is 1 ("11 tokens" is fine)
        assert re.search(r"\b1 tokens\b", page.inner_text("#responses")) is None
        page.locator("#conversation .remove").first.click()  # the conversation changed
        assert page.locator("#responses .response").count() == 0
        assert page.locator("#status").is_hidden() and page.locator("#warning").is_hidden()
        add_turn(page, "A", "Hi")
        ask_for_responses(page, 2)
        page.locator("#clear").click()
        assert page.locator("#status").is_hidden()


def take_screenshot(path: Path) -> None:
    """docs/service.md's picture: a short conversation, then four responses from the shipped model."""
    log = Path(os.devnull)
    with running_service(SHIPPED_CHECKPOINT, log) as base, browser_page() as (page, _):
        page.goto(f"{base}/")
        add_turn(page, "A", "So do you have any pets?")
        add_turn(page, "B", "Yeah, we have a dog. She's about ten years old now.")
        texts = ask_for_responses(page, 3)
        longest = max(range(3), key=lambda i: len(texts[i]))
        page.locator("#responses .response").nth(longest).click()
        ask_for_responses(page, 4)
        page.screenshot(path=str(path), full_page=True)


if __name__ == "__main__":
    take_screenshot(Path(sys.argv[1]))
