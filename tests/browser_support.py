"""Open a report in headless Chromium (the system's ``chromium``, driven by Playwright) and check it renders.

Skips when Playwright or a Chromium binary is missing (``ZDM_CHROMIUM`` names another binary). Playwright's
own browser download is never used: the page is opened by the distribution's Chromium.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]


def chromium_path() -> str:
    path = os.environ.get("ZDM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no chromium binary (Debian: apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    return path


@dataclass
class Rendered:
    console_errors: list[str]
    images: int
    broken_images: list[str]
    screenshot: Path


def render(page_path: Path, screenshot: Path, *, actions=None) -> Rendered:
    """Load ``page_path``, run ``actions(page)`` if given, and screenshot the whole page.

    Console errors and uncaught page errors are collected; an image counts as broken when it has not
    loaded or has no pixels (``naturalWidth == 0``).
    """
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=LAUNCH_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            result = page.evaluate("""() => {
                const imgs = Array.from(document.images);
                return {count: imgs.length,
                        broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt || i.src.slice(0, 40))};
            }""")
            if actions is not None:
                actions(page)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    artifacts = os.environ.get("ZDM_TEST_ARTIFACTS")
    if artifacts:  # keep the screenshot for a person to look at
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(artifacts) / screenshot.name)
    return Rendered(errors, int(result["count"]), list(result["broken"]), screenshot)
