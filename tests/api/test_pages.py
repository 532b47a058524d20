"""Browser sessions of the pages over HTTP: sign-in, cookie, limits, revocation, roles, CSRF, redirects.

The client talks to ``https://testserver.local`` because the session cookie is ``Secure`` (httpx, like
any client, keeps it off plain HTTP; browsers accept it on http://127.0.0.1 — see tests/browser).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from litestar.testing import TestClient
from sqlalchemy import text

from api.app import create_app
from api.pages import SESSION_COOKIE, SIGNIN_COOKIE, requires_page_role, safe_next
from api.settings import Settings
from billing import Actor, Billing

from ..conftest import FIXED_NOW
from .conftest import TenantKeys, make_tenant

BASE_URL = "https://testserver.local"
_FORM_TOKEN = r'<form[^>]*id="{form}".*?name="csrf_token" value="([^"]+)"'


@dataclass
class Clock:
    now: datetime = FIXED_NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def web(settings: Settings, clock: Clock) -> Iterator[TestClient]:  # type: ignore[type-arg]
    with TestClient(create_app(settings, clock=clock, configure_logs=False), base_url=BASE_URL) as client:
        yield client


@pytest.fixture
def keys(web: TestClient, app_billing: Billing) -> TenantKeys:  # type: ignore[type-arg]
    return make_tenant(web, app_billing, "Cabinet Morel")


def csrf_token(html: str, form: str = "signout-form") -> str:
    """The CSRF token of the form with id ``form`` (the sign-out form by default)."""
    match = re.search(_FORM_TOKEN.format(form=form), html, re.DOTALL)
    assert match, f"no CSRF token in #{form}"
    return match.group(1)


def sign_in(client: TestClient, key: str, next_path: str = "/reports") -> httpx.Response:  # type: ignore[type-arg]
    form = client.get("/signin", params={"next": next_path})
    assert form.status_code == 200
    return client.post(
        "/signin",
        data={"api_key": key, "csrf_token": csrf_token(form.text, "signin-form"), "next": next_path},
        follow_redirects=False,
    )


def events(billing: Billing, tenant_id: str, action: str) -> list[dict[str, object]]:
    found = billing.audit_events(Actor(tenant_id=tenant_id, role="auditor"), limit=500)
    return [json.loads(e.detail or "{}") | {"_key": e.actor_key_id} for e in found if e.action == action]


def key_id(client: TestClient, keys: TenantKeys, role: str) -> str:  # type: ignore[type-arg]
    listed = client.get("/v1/admin/api-keys", headers=keys.headers("admin"))
    assert listed.status_code == 200
    return next(k["id"] for k in listed.json()["data"] if k["role"] == role)


def assert_sent_to_signin(response: httpx.Response, next_path: str, *, ended: bool) -> None:
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("/signin?")
    assert httpx.URL(location).params["next"] == next_path
    assert (httpx.URL(location).params.get("notice") == "ended") is ended


def test_sign_in_sets_a_strict_host_only_cookie_and_returns_to_next(
    web: TestClient,  # type: ignore[type-arg]
    keys: TenantKeys,
    app_billing: Billing,
) -> None:
    assert_sent_to_signin(
        web.get("/reports?from=2026-01-01", follow_redirects=False), "/reports?from=2026-01-01", ended=False
    )

    signed_in = sign_in(web, keys.accountant, "/reports?from=2026-01-01")

    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/reports?from=2026-01-01"
    cookie = next(c for c in signed_in.headers.get_list("set-cookie") if c.startswith(f"{SESSION_COOKIE}="))
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite", "path"} <= attributes
    assert "samesite=strict" in cookie.lower()
    assert "path=/" in cookie.lower()
    assert not attributes & {"domain", "max-age", "expires"}, "a host-only browser-session cookie"
    assert any(
        c.startswith(f'{SIGNIN_COOKIE}=""') and "Max-Age=0" in c
        for c in signed_in.headers.get_list("set-cookie")
    )
    page = web.get("/reports?from=2026-01-01&to=2026-12-31")
    assert page.status_code == 200
    assert '<h1 class="page-title">Reports' in page.text
    assert "accountant" in page.text
    started = events(app_billing, keys.tenant_id, "page_session.started")
    assert [e["role"] for e in started] == ["accountant"]
    assert started[0]["_key"] == key_id(web, keys, "accountant")


def test_the_session_ends_after_15_idle_minutes_and_each_request_restarts_the_clock(
    web: TestClient,  # type: ignore[type-arg]
    keys: TenantKeys,
    clock: Clock,
    app_billing: Billing,
) -> None:
    sign_in(web, keys.accountant)
    for _ in range(3):
        clock.advance(minutes=14, seconds=59)
        assert web.get("/reports/download/tax?from=2026-01-01&to=2026-12-31").status_code == 200
    clock.advance(minutes=15)

    expired = web.get("/reports", follow_redirects=False)

    assert_sent_to_signin(expired, "/reports", ended=True)
    cleared = [c for c in expired.headers.get_list("set-cookie") if c.startswith(f"{SESSION_COOKIE}=")]
    assert cleared and "Max-Age=0" in cleared[0]
    assert [e["reason"] for e in events(app_billing, keys.tenant_id, "page_session.expired")] == ["idle"]
    notice = web.get(expired.headers["location"])
    assert "Your session has ended" in notice.text
    clock.now = FIXED_NOW  # going back in time does not revive it
    assert web.get("/reports", follow_redirects=False).status_code == 303


def test_the_session_ends_at_its_lifetime_however_active(
    settings: Settings, clock: Clock, app_billing: Billing
) -> None:
    short = replace(settings, page_max_hours=1)
    with TestClient(create_app(short, clock=clock, configure_logs=False), base_url=BASE_URL) as web:
        keys = make_tenant(web, app_billing, "Clinique du Lac")
        sign_in(web, keys.accountant)
        for _ in range(4):
            clock.advance(minutes=14)
            assert web.get("/signin").text.count("You are already signed in") == 1
        clock.advance(minutes=4)

        assert_sent_to_signin(web.get("/reports", follow_redirects=False), "/reports", ended=True)
        assert [e["reason"] for e in events(app_billing, keys.tenant_id, "page_session.expired")] == [
            "lifetime"
        ]


def test_the_default_limits_are_15_minutes_idle_and_8_hours() -> None:
    settings = Settings()
    assert (settings.page_idle_minutes, settings.page_max_hours) == (15, 8)
    configured = Settings.from_env({"VEILBILL_PAGE_IDLE_MINUTES": "5", "VEILBILL_PAGE_MAX_HOURS": "2"})
    assert (configured.page_idle_minutes, configured.page_max_hours) == (5, 2)
    assert configured.as_env()["VEILBILL_PAGE_IDLE_MINUTES"] == "5"
    for bad in (
        {"page_idle_minutes": 0},
        {"page_max_hours": 0},
        {"page_idle_minutes": 200, "page_max_hours": 3},
    ):
        with pytest.raises(ValueError, match="page_"):
            Settings(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["revoked", "suspended"])
def test_a_revoked_or_suspended_key_ends_its_session(
    web: TestClient,  # type: ignore[type-arg]
    keys: TenantKeys,
    app_billing: Billing,
    how: str,
) -> None:
    sign_in(web, keys.accountant)
    assert web.get("/reports/download/tax?from=2026-01-01&to=2026-01-31").status_code == 200
    accountant = key_id(web, keys, "accountant")
    if how == "revoked":
        assert (
            web.delete(f"/v1/admin/api-keys/{accountant}", headers=keys.headers("admin")).status_code == 200
        )
    else:
        with app_billing.db.transaction() as session:
            session.execute(
                text("UPDATE api_keys SET suspended_at = created_at WHERE id = :id"), {"id": accountant}
            )

    assert_sent_to_signin(web.get("/reports", follow_redirects=False), "/reports", ended=True)
    assert [e["reason"] for e in events(app_billing, keys.tenant_id, "page_session.expired")] == [
        "key_unusable"
    ]


def test_a_wrong_role_gets_403_and_roles_without_pages_cannot_sign_in(
    web: TestClient,  # type: ignore[type-arg]
    keys: TenantKeys,
    app_billing: Billing,
) -> None:
    assert sign_in(web, keys.auditor).status_code == 303
    forbidden = web.get("/reports", follow_redirects=False)
    assert forbidden.status_code == 403
    assert forbidden.headers["content-type"].startswith("text/html")
    assert "forbidden_role" in forbidden.text
    assert web.get("/reports/download/tax?from=2026-01-01&to=2026-01-31").status_code == 403

    for role in ("booking", "admin"):
        web.cookies.clear()
        refused = sign_in(web, getattr(keys, role))
        assert refused.status_code == 403
        assert "Keys of this role have no pages here" in refused.text
        assert not web.cookies.get(SESSION_COOKIE)
    assert sorted(e["role"] for e in events(app_billing, keys.tenant_id, "page_session.refused")) == [
        "admin",
        "booking",
    ]


def test_an_unknown_key_is_refused_audited_and_never_echoed(
    web: TestClient,  # type: ignore[type-arg]
    app_billing: Billing,
) -> None:
    wrong = "vb_" + "Q" * 43
    refused = sign_in(web, wrong)
    assert refused.status_code == 401
    assert "That key was not accepted" in refused.text
    assert wrong not in refused.text
    assert not web.cookies.get(SESSION_COOKIE)
    system = app_billing.audit_events(Actor(tenant_id="system", role="auditor"), limit=500)
    assert any(e.action == "auth.failed" for e in system)


def test_sign_out_needs_the_sessions_csrf_token(
    web: TestClient,  # type: ignore[type-arg]
    keys: TenantKeys,
    app_billing: Billing,
) -> None:
    sign_in(web, keys.accountant)
    other_token = csrf_token(web.get("/reports?from=2026-01-01&to=2026-01-31").text)
    web.cookies.clear()  # another browser, another session
    sign_in(web, keys.accountant)
    token = csrf_token(web.get("/reports?from=2026-01-01&to=2026-01-31").text)
    assert other_token != token, "each session has its own token"

    for data, headers in (
        ({}, {}),
        ({"csrf_token": ""}, {}),
        ({"csrf_token": other_token}, {}),
        ({"csrf_token": token[:-1] + ("A" if token[-1] != "A" else "B")}, {}),
        ({"csrf_token": token}, {"Sec-Fetch-Site": "cross-site"}),
        ({"csrf_token": token}, {"Sec-Fetch-Site": "same-site"}),
    ):
        refused = web.post("/signout", data=data, headers=headers, follow_redirects=False)
        assert refused.status_code == 403, data
        assert "csrf_token_invalid" in refused.text
        assert web.get("/reports/download/tax?from=2026-01-01&to=2026-01-31").status_code == 200, (
            "still signed in"
        )
    assert events(app_billing, keys.tenant_id, "page_session.ended") == []

    signed_out = web.post("/signout", data={"csrf_token": token}, follow_redirects=False)

    assert signed_out.status_code == 303
    assert signed_out.headers["location"] == "/signin?notice=signed_out"
    assert any(c.startswith(f'{SESSION_COOKIE}=""') for c in signed_out.headers.get_list("set-cookie"))
    assert [e["reason"] for e in events(app_billing, keys.tenant_id, "page_session.ended")] == ["signout"]
    web.cookies.set(SESSION_COOKIE, "x" * 43)  # a stale or forged cookie is no session
    assert_sent_to_signin(web.get("/reports", follow_redirects=False), "/reports", ended=True)


def test_sign_in_needs_its_own_csrf_token(
    web: TestClient,  # type: ignore[type-arg]
    keys: TenantKeys,
) -> None:
    form = web.get("/signin")
    token = csrf_token(form.text, "signin-form")
    attempts = [
        ({"api_key": keys.accountant, "csrf_token": ""}, {}),
        ({"api_key": keys.accountant, "csrf_token": token + "x"}, {}),
        ({"api_key": keys.accountant, "csrf_token": token}, {"Sec-Fetch-Site": "cross-site"}),
    ]
    for data, headers in attempts:
        refused = web.post("/signin", data=data, headers=headers, follow_redirects=False)
        assert refused.status_code == 403
        assert "The sign-in form had expired" in refused.text
        assert not web.cookies.get(SESSION_COOKIE)
    web.cookies.delete(SIGNIN_COOKIE)
    without_cookie = web.post(
        "/signin", data={"api_key": keys.accountant, "csrf_token": token}, follow_redirects=False
    )
    assert without_cookie.status_code == 403


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/reports",
        "https://evil.example/",
        "/\\evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "evil.example",
        "/reports\r\nSet-Cookie: x=y",
        "",
    ],
)
def test_next_never_leaves_the_origin(
    web: TestClient,  # type: ignore[type-arg]
    keys: TenantKeys,
    target: str,
) -> None:
    form = web.get("/signin", params={"next": target})
    assert 'name="next" value=""' in form.text
    signed_in = web.post(
        "/signin",
        data={"api_key": keys.accountant, "csrf_token": csrf_token(form.text, "signin-form"), "next": target},
        follow_redirects=False,
    )
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/reports"


def test_the_csrf_token_may_come_in_a_header_and_unknown_roles_are_a_programming_error(
    web: TestClient,  # type: ignore[type-arg]
    keys: TenantKeys,
) -> None:
    sign_in(web, keys.accountant)
    token = csrf_token(web.get("/signin").text)
    assert web.post("/signout", headers={"X-CSRF-Token": "nope"}, follow_redirects=False).status_code == 403
    signed_out = web.post("/signout", headers={"X-CSRF-Token": token}, follow_redirects=False)
    assert signed_out.status_code == 303
    with pytest.raises(ValueError, match="unknown roles"):
        requires_page_role("accountant", "owner")
    with pytest.raises(ValueError, match="unknown roles"):
        requires_page_role()


def test_safe_next_keeps_same_origin_paths_only() -> None:
    assert safe_next("/reports?from=2026-01-01&to=2026-03-31") == "/reports?from=2026-01-01&to=2026-03-31"
    assert safe_next("/pci") == "/pci"
    for unsafe in ("//x", "/\\x", "/a\\b", "http://x/", "x", "/\x00", "/" + "a" * 600, None):
        assert safe_next(unsafe) is None


def test_pages_take_no_bearer_key_and_the_api_takes_no_cookie(
    web: TestClient,  # type: ignore[type-arg]
    keys: TenantKeys,
) -> None:
    bearer = web.get("/reports", headers=keys.headers("accountant"), follow_redirects=False)
    assert bearer.status_code == 303
    sign_in(web, keys.accountant)
    api = web.get("/v1/reports/tax?from=2026-01-01&to=2026-01-31")
    assert api.status_code == 401
    assert api.json()["code"] == "invalid_api_key"


def test_a_new_sign_in_replaces_the_browsers_session(
    web: TestClient,  # type: ignore[type-arg]
    keys: TenantKeys,
    app_billing: Billing,
) -> None:
    sign_in(web, keys.accountant)
    first = web.cookies.get(SESSION_COOKIE)
    sign_in(web, keys.accountant)
    second = web.cookies.get(SESSION_COOKIE)
    assert first and second and first != second
    assert [e["reason"] for e in events(app_billing, keys.tenant_id, "page_session.ended")] == ["replaced"]
    web.cookies.set(SESSION_COOKIE, first)
    assert web.get("/reports", follow_redirects=False).status_code == 303


def test_no_key_or_session_token_in_logs_pages_or_the_database(
    settings: Settings, clock: Clock, app_billing: Billing, tmp_path: Path, restore_logging: None
) -> None:
    log_path = tmp_path / "veilbill.log"
    logged = replace(settings, log_path=str(log_path), log_level="DEBUG")
    bodies: list[str] = []
    with TestClient(create_app(logged, clock=clock, configure_logs=True), base_url=BASE_URL) as web:
        keys = make_tenant(web, app_billing, "Hotel des Alpes")
        bodies.append(sign_in(web, "vb_" + keys.accountant[3:][::-1]).text)
        signed_in = sign_in(web, keys.accountant)
        token = web.cookies.get(SESSION_COOKIE)
        assert token
        bodies += [
            signed_in.text,
            web.get("/reports?from=2026-01-01&to=2026-01-31").text,
            web.get("/signin").text,
        ]
        clock.advance(minutes=16)
        bodies.append(web.get("/reports", follow_redirects=True).text)
    log = log_path.read_text()
    assert "/reports" in log, "the log saw the requests"
    for secret in (keys.accountant, token, keys.accountant[3:][::-1]):
        assert secret not in log
        assert all(secret not in body for body in bodies)
    with app_billing.db.read() as session:
        rows = session.execute(text("SELECT token_hash FROM page_sessions")).all()
    assert rows and all(token not in row[0] for row in rows)
