"""The browsable OpenAPI UI renders in a real browser from local assets only."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_swagger_ui_renders_every_operation_offline(
    live_server: str, browser: Browser, tmp_path: Path
) -> None:
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{live_server}/schema/swagger")
    page.wait_for_selector(".swagger-ui .info .title", timeout=15_000)
    assert "Veilbill API" in page.inner_text(".swagger-ui .info .title")
    page.wait_for_selector(".opblock", timeout=15_000)
    summaries = page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/v1/invoices/{invoice_id}/finalize" in s.replace("\u200b", "") for s in summaries)
    page.screenshot(path=str(tmp_path / "swagger.png"), full_page=False)
    foreign = {urlsplit(url).netloc for url in requested} - {urlsplit(live_server).netloc}
    assert foreign == set(), f"the UI reached out to {foreign}"
