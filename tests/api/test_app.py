"""Probes, OpenAPI, request ids."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from litestar.testing import TestClient

from api.app import create_app
from api.settings import Settings
from billing import Pkcs11MasterKeys

from ..conftest import FIXED_NOW, SoftHsm


def test_health(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "live"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "keyring": "ok"}}


def test_ready_reports_a_lost_keyring(client: TestClient, settings: Settings) -> None:
    Path(settings.keyring_path).chmod(0o644)
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"]["keyring"] == "unavailable"


def test_ready_reports_an_unreachable_database(keyring_path: Path, tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/missing-dir/x.db", keyring_path=keyring_path)
    with TestClient(create_app(settings, configure_logs=False)) as client:
        response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "unreachable"


def test_ready_checks_the_hsm_round_trip_and_fails_when_the_token_goes(
    settings: Settings, softhsm: SoftHsm
) -> None:
    config = softhsm.new_token()
    token = Pkcs11MasterKeys(config)
    token.add_version(now=FIXED_NOW)
    token.close()
    on_hsm = replace(
        settings, hsm_module=config.module_path, hsm_token_label=config.token_label, hsm_pin=config.user_pin
    )
    with TestClient(create_app(on_hsm, configure_logs=False)) as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "keyring": "ok", "hsm": "ok"}

        softhsm.delete_token(config.token_label)
        gone = client.get("/health/ready")
        assert gone.status_code == 503
        assert gone.json() == {
            "status": "not_ready",
            "checks": {"database": "ok", "keyring": "ok", "hsm": "unavailable"},
        }
        assert config.user_pin not in gone.text


def test_ready_fails_for_a_token_that_holds_no_master_key_or_does_not_exist(
    settings: Settings, softhsm: SoftHsm
) -> None:
    empty = softhsm.new_token()
    for label in (empty.token_label, "vb-no-such-token"):
        on_hsm = replace(
            settings, hsm_module=empty.module_path, hsm_token_label=label, hsm_pin=empty.user_pin
        )
        with TestClient(create_app(on_hsm, configure_logs=False)) as client:
            ready = client.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["hsm"] == "unavailable"


def test_openapi_lists_every_v1_route(client: TestClient) -> None:
    schema = client.get("/schema/openapi.json").json()
    paths = set(schema["paths"])
    for expected in (
        "/v1/customers",
        "/v1/invoices/{invoice_id}/finalize",
        "/v1/admin/api-keys",
        "/v1/audit/verify",
    ):
        assert expected in paths
    assert "ApiKey" in schema["components"]["securitySchemes"]


def test_swagger_ui_is_served_locally(client: TestClient) -> None:
    page = client.get("/schema/swagger")
    assert page.status_code == 200
    assert "/schema/assets/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower()
    assert client.get("/schema/assets/swagger-ui-bundle.js").status_code == 200


def test_request_id_is_echoed_when_safe(client: TestClient) -> None:
    assert (
        client.get("/health/live", headers={"X-Request-Id": "abc-12345678"}).headers["x-request-id"]
        == "abc-12345678"
    )
    generated = client.get("/health/live", headers={"X-Request-Id": "<script>"}).headers["x-request-id"]
    assert generated.startswith("req_")


def test_hsm_migration_mode_needs_the_hsm_settings(keyring_path: Path) -> None:
    with pytest.raises(ValueError, match="VEILBILL_HSM_MIGRATION"):
        Settings(keyring_path=keyring_path, hsm_migration=True)
    env = {
        "VEILBILL_HSM_MODULE": "/usr/lib/softhsm/libsofthsm2.so",
        "VEILBILL_HSM_TOKEN_LABEL": "veilbill",
        "VEILBILL_HSM_PIN": "1234",
        "VEILBILL_HSM_MIGRATION": "1",
    }
    settings = Settings.from_env(env)
    assert settings.hsm_migration and settings.as_env()["VEILBILL_HSM_MIGRATION"] == "1"
    assert "1234" not in repr(settings)


@pytest.mark.parametrize("secret", ["whsec_\udcff", "whsec_é", "whsec_a\nb"])
def test_a_webhook_secret_that_is_not_printable_ascii_stops_the_service_at_start(secret: str) -> None:
    with pytest.raises(ValueError, match="printable ASCII") as caught:
        Settings.from_env({"VEILBILL_STRIPE_API_KEY": "sk_test_x", "VEILBILL_STRIPE_WEBHOOK_SECRET": secret})
    assert secret not in str(caught.value)
