"""``/reports``: the charts match the API's revenue reports, the guarantee matches the invoice release,
downloads are the API's files for the same key, and the page runs no script."""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections.abc import Iterator
from datetime import datetime

import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest
from faker import Faker
from litestar.testing import TestClient

from api.charts import display_amount
from api.settings import Settings
from billing import Billing, Database, DatabaseConfig, load_keyring

from .conftest import TenantKeys, make_tenant
from .test_pages import BASE_URL, Clock, events, sign_in
from .test_reports import Clock as SeedClock
from .test_reports import Seeded, seed

H1 = {"from": "2026-01-01", "to": "2026-06-30"}
_BAR = re.compile(
    r'<rect class="bar[^"]*"[^>]*data-label="([^"]*)" data-amount="(-?\d+)" aria-label="([^"]*)"'
)


@pytest.fixture
def web(settings: Settings) -> Iterator[TestClient]:  # type: ignore[type-arg]
    from api.app import create_app

    with TestClient(create_app(settings, clock=Clock(), configure_logs=False), base_url=BASE_URL) as client:
        yield client


@pytest.fixture
def keys(web: TestClient, app_billing: Billing) -> TenantKeys:  # type: ignore[type-arg]
    return make_tenant(web, app_billing, "Institut Lumière")


@pytest.fixture
def seeded(settings: Settings, keys: TenantKeys, fake: Faker) -> Iterator[Seeded]:
    billing = Billing(
        db=Database(DatabaseConfig(settings.database_url)),
        keyring=load_keyring(settings.keyring_path),
        clock=(clock := SeedClock()),
    )
    yield seed(billing, clock, keys, fake)
    billing.db.dispose()


def bars(page: str, figure: str) -> list[tuple[str, int, str]]:
    start = page.index(f'id="{figure}"')
    end = page.index("</figure>", start)
    return [(html.unescape(a), int(b), html.unescape(c)) for a, b, c in _BAR.findall(page[start:end])]


def api_csv(client: TestClient, keys: TenantKeys, path: str, **params: str) -> list[dict[str, str]]:  # type: ignore[type-arg]
    response = client.get(path, params={**H1, **params}, headers=keys.headers("accountant"))
    assert response.status_code == 200, response.text
    return list(csv.DictReader(io.StringIO(response.text)))


def test_the_charts_draw_the_revenue_reports(
    web: TestClient,  # type: ignore[type-arg]
    keys: TenantKeys,
    seeded: Seeded,
) -> None:
    sign_in(web, keys.accountant)
    page = web.get("/reports", params=H1)
    assert page.status_code == 200

    months = api_csv(web, keys, "/v1/reports/revenue", group_by="month")
    month_bars = bars(page.text, "chart-month-EUR")
    assert len(month_bars) == len(months) >= 2
    assert {amount for _, amount, _ in month_bars} == {int(row["net"]) for row in months}
    for label, amount, aria in month_bars:
        assert aria == f"{label}: {display_amount(amount, 'EUR')}"
    named = sorted(row["month"] for row in months if row["month"] != "other")
    expected = [datetime.strptime(m, "%Y-%m").strftime("%b %Y") for m in named]
    assert [label for label, _, _ in month_bars] == expected + ["Other"] * (len(months) - len(named))
    categories = api_csv(web, keys, "/v1/reports/revenue", group_by="category")
    category_bars = bars(page.text, "chart-category-EUR")
    assert sorted((label.lower(), amount) for label, amount, _ in category_bars) == sorted(
        (row["category"], int(row["net"])) for row in categories
    )
    assert [amount for _, amount, _ in category_bars] == sorted(
        (amount for label, amount, _ in category_bars if label != "Other"), reverse=True
    ) + [amount for label, amount, _ in category_bars if label == "Other"]
    assert sum(amount for _, amount, _ in month_bars) == seeded.totals["net"]
    assert f'id="kpi-net-EUR">{display_amount(seeded.totals["net"], "EUR")}<' in page.text
    assert f'id="kpi-invoices-EUR">{60}<' in page.text
    for pii in seeded.pii + seeded.postcodes:
        assert html.escape(pii) not in page.text, "no client data on the page"


def test_the_page_shows_the_guarantee_of_the_invoice_dataset(
    web: TestClient,  # type: ignore[type-arg]
    keys: TenantKeys,
    seeded: Seeded,
) -> None:
    sign_in(web, keys.accountant)
    page = web.get("/reports", params=H1).text
    guarantee = web.get(
        "/v1/reports/invoices", params={**H1, "format": "guarantee"}, headers=keys.headers("accountant")
    ).json()

    assert f'id="g-k">{guarantee["k"]}<' in page
    assert f'id="g-l">{guarantee["l"]}<' in page
    assert f'id="g-suppressed">{guarantee["suppressed"]} of {guarantee["rows"]}<' in page
    assert f'id="g-loss">{guarantee["loss"] * 100:.1f} %<' in page
    assert f'id="g-risk">{guarantee["max_risk"] * 100:.1f} %<' in page


def test_downloads_are_the_apis_files_for_the_same_key_and_are_audited(
    web: TestClient,  # type: ignore[type-arg]
    keys: TenantKeys,
    seeded: Seeded,
    app_billing: Billing,
) -> None:
    sign_in(web, keys.accountant)
    page = web.get("/reports", params=H1).text
    links = {html.unescape(u) for u in re.findall(r'href="(/reports/download/[^"]+)"', page)}
    assert "/reports/download/invoices?from=2026-01-01&to=2026-06-30&format=csv" in links
    assert len(links) == 13
    before = len(events(app_billing, keys.tenant_id, "report.exported"))

    for dataset, params in (
        ("invoices", {}),
        ("revenue", {"group_by": "category"}),
        ("tax", {}),
    ):
        from_page = web.get(f"/reports/download/{dataset}", params={**H1, **params, "format": "csv"})
        from_api = web.get(
            f"/v1/reports/{dataset}",
            params={**H1, **params, "format": "csv"},
            headers=keys.headers("accountant"),
        )
        assert from_page.status_code == 200
        assert from_page.content == from_api.content, dataset
        assert from_page.headers["content-disposition"].startswith(
            f'attachment; filename="{dataset}-2026-01-01'
        )
        assert from_page.headers["x-veilbill-k"] == from_api.headers["x-veilbill-k"]
        assert from_page.headers["cache-control"] == "no-store"
    parquet = web.get("/reports/download/invoices", params={**H1, "format": "parquet"})
    table = pq.read_table(io.BytesIO(parquet.content))
    assert table.num_rows == 60
    assert json.loads(table.schema.metadata[b"veilbill.guarantee"])["k"] == 5

    exported = events(app_billing, keys.tenant_id, "report.exported")[before:]
    assert len(exported) == 7  # 3 page downloads, 3 API downloads, the Parquet file
    page_key = {e["_key"] for e in exported}
    assert len(page_key) == 1, "page downloads are attributed to the signed-in key, as API ones"
    assert web.get("/reports/download/customers", params=H1).status_code == 404


def test_the_page_runs_no_script_and_is_never_cached(
    web: TestClient,  # type: ignore[type-arg]
    keys: TenantKeys,
) -> None:
    sign_in(web, keys.accountant)
    for path in ("/reports", "/signin", "/pages/assets/pages.css"):
        response = web.get(path)
        assert response.status_code == 200
        policy = response.headers["content-security-policy"]
        assert "script-src" not in policy and "default-src 'none'" in policy
        assert "frame-ancestors 'none'" in policy and "form-action 'self'" in policy
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "<script" not in response.text
        assert " style=" not in response.text
    page = web.get("/reports").text
    assert '<meta http-equiv="refresh" content="905">' in page, "reloads itself after 15 idle minutes"


def test_bad_empty_and_too_small_periods(
    web: TestClient,  # type: ignore[type-arg]
    keys: TenantKeys,
    seeded: Seeded,
) -> None:
    sign_in(web, keys.accountant)
    backwards = web.get("/reports", params={"from": "2026-06-30", "to": "2026-01-01"})
    assert backwards.status_code == 422
    assert "The period starts after it ends." in backwards.text

    malformed = web.get("/reports", params={"from": "01/02/2026", "to": "2026-01-01"})
    assert malformed.status_code == 400
    assert malformed.headers["content-type"].startswith("text/html")
    assert "invalid_value" in malformed.text and "01/02/2026" not in malformed.text

    empty = web.get("/reports", params={"from": "2025-01-01", "to": "2025-12-31"})
    assert empty.status_code == 200
    assert 'id="no-data"' in empty.text
    assert "<rect" not in empty.text

    day = {"from": "2026-01-05", "to": "2026-01-05"}
    one_day = web.get("/reports", params=day)
    assert one_day.status_code == 200
    api = web.get(
        "/v1/reports/invoices", params={**day, "format": "guarantee"}, headers=keys.headers("accountant")
    )
    if api.status_code == 422:  # the page agrees with the API on whether a release exists
        assert 'id="g-none"' in one_day.text
        assert "/reports/download/invoices" not in one_day.text
    else:
        assert f'id="g-k">{api.json()["k"]}<' in one_day.text
