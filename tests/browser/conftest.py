"""A live server on loopback and headless Chromium (Debian's), driven by Playwright.

The browser comes from the operating system (``apt-get install chromium``), never from
``playwright install``. Without it these tests skip — or fail when ``VEILBILL_REQUIRE_ALL=1``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright

from api.app import create_app
from api.settings import Settings

from ..conftest import require_or_skip, serve_in_thread

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium_path() -> str | None:
    explicit = os.environ.get("VEILBILL_CHROMIUM")
    return explicit or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def live_server(settings: Settings) -> Iterator[str]:
    """The app served by uvicorn in a background thread; yields its base URL."""
    with serve_in_thread(create_app(settings, configure_logs=False)) as base_url:
        yield base_url


@pytest.fixture
def browser() -> Iterator[Browser]:
    path = _chromium_path()
    if path is None:
        require_or_skip("Chromium is not installed (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()
