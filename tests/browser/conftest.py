"""A live server on loopback and headless Chromium (Debian's), driven by Playwright.

The browser comes from the operating system (``apt-get install chromium``), never from
``playwright install``. Without it these tests skip — or fail when ``VEILBILL_REQUIRE_ALL=1``.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from playwright.sync_api import Browser, sync_playwright

from api.app import create_app
from api.settings import Settings

from ..conftest import require_or_skip

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
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings, configure_logs=False), host="127.0.0.1", port=port, log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the live server did not start within 15 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser() -> Iterator[Browser]:
    path = _chromium_path()
    if path is None:
        require_or_skip("Chromium is not installed (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()
