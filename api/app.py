"""The composition root: ``create_app(settings)`` wires settings, storage, keys and HTTP."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from api.auth import ApiKeyAuthentication, current_actor
from api.controllers import (
    AdminController,
    AuditController,
    CardController,
    CustomerController,
    EventController,
    HealthController,
    InvoiceController,
    PaymentController,
    PciController,
    PciPageController,
    PrivacyController,
    ReportController,
    WebhookController,
    WebhookEndpointController,
)
from api.controllers.pay import HostedPaymentController, pay_assets_router
from api.controllers.reports_page import ReportsPageController
from api.controllers.signin import SignInController
from api.errors import EXCEPTION_HANDLERS
from api.idempotency import IdempotencyMiddleware
from api.logging import configure_logging, get_logger
from api.middleware import RequestIdMiddleware, StrictTransportSecurity, guard_request
from api.openapi import ProblemDocumentingJsonPlugin
from api.pages import page_assets_router
from api.settings import Settings
from billing import (
    Billing,
    Database,
    DatabaseConfig,
    DeliveryWorker,
    DestinationPolicy,
    HsmMigrationMasterKeys,
    KeyringFileMasterKeys,
    MasterKeyProvider,
    PageSessionPolicy,
    Pkcs11Config,
    Pkcs11MasterKeys,
    WebhookDelivery,
    WebhookSender,
    load_keyring,
    probe_master_keys,
    utcnow,
)
from tokenization import PaymentGateway, StripeGateway, make_stripe_client

__all__ = [
    "app_from_env",
    "create_app",
    "gateway_from_settings",
    "hsm_from_settings",
    "key_provider_from_settings",
    "webhook_delivery_for",
]

_ASSETS = "/schema/assets"
# Routes without bearer authentication. Session pages (api.pages.PageController: /signin, /reports,
# /pci…) are excluded through their ``exclude_from_auth`` opt and authenticate by their cookie.
_UNAUTHENTICATED = ["^/schema", "^/health/", "^/v1/webhooks/", "^/pay"]
_TEMPLATES = Path(__file__).resolve().parent / "templates"
_PCI_ASSETS = Path(__file__).resolve().parent / "static" / "pci"


def create_app(
    settings: Settings,
    *,
    clock: Callable[[], datetime] = utcnow,
    configure_logs: bool = True,
    gateway: PaymentGateway | None = None,
) -> Litestar:
    """Build the service for ``settings``.

    Loads the keyring (raises ``KeyringError`` when it is missing or unsafe) and opens the database
    engine; no connection is made until the first request. ``clock`` is the time of every service,
    page sessions included (tests move it to expire sessions). The payment gateway is the Stripe adapter
    when ``settings.stripe_api_key`` is set, unless ``gateway`` is given (tests pass a
    fault-injecting double that wraps the real adapter).
    """
    if configure_logs:
        configure_logging(level=settings.log_level, log_path=settings.log_path)
    keyring = load_keyring(settings.keyring_path)
    db = Database(DatabaseConfig(settings.database_url))
    token = hsm_from_settings(settings)
    billing = Billing(
        db=db,
        keyring=keyring,
        gateway=gateway or gateway_from_settings(settings),
        erasure_journal=settings.erasure_journal_path,
        key_provider=key_provider_from_settings(settings, token),
        webhook_destinations=DestinationPolicy(allow_private=settings.webhooks_allow_private),
        clock=clock,
        page_session_policy=PageSessionPolicy(
            idle=timedelta(minutes=settings.page_idle_minutes),
            lifetime=timedelta(hours=settings.page_max_hours),
        ),
        on_background_error=_log_claim_keeper_error,
    )
    worker = DeliveryWorker(webhook_delivery_for(billing, clock=clock), on_error=_log_worker_error)

    def start_worker() -> None:
        if settings.webhooks_worker:
            worker.start()

    def stop_worker() -> None:
        worker.stop()
        worker.delivery.close()

    def provide_billing() -> Billing:
        return billing

    return Litestar(
        route_handlers=[
            HealthController,
            CustomerController,
            InvoiceController,
            CardController,
            PaymentController,
            PrivacyController,
            ReportController,
            WebhookController,
            AdminController,
            WebhookEndpointController,
            EventController,
            AuditController,
            PciController,
            PciPageController,
            create_static_files_router(
                path="/pci/assets",
                directories=[_PCI_ASSETS],
                include_in_schema=False,
                opt={"exclude_from_auth": True},
            ),
            HostedPaymentController,
            pay_assets_router(),
            SignInController,
            ReportsPageController,
            page_assets_router(),
            create_static_files_router(
                path=_ASSETS,
                directories=[_swagger_ui_assets()],
                include_in_schema=False,
                opt={"exclude_from_auth": True},
            ),
        ],
        dependencies={
            "billing": Provide(provide_billing, sync_to_thread=False),
            "actor": Provide(current_actor, sync_to_thread=False),
        },
        middleware=[
            RequestIdMiddleware(),
            StrictTransportSecurity(),
            DefineMiddleware(ApiKeyAuthentication, exclude=_UNAUTHENTICATED),
            IdempotencyMiddleware(settings.max_body_bytes),
        ],
        before_request=guard_request,
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=_openapi(),
        template_config=TemplateConfig(directory=_TEMPLATES, engine=JinjaTemplateEngine),
        state=State(
            {
                "billing": billing,
                "settings": settings,
                "readiness": partial(_readiness, db, settings, billing.key_provider),
            }
        ),
        on_startup=[start_worker],
        on_shutdown=[stop_worker, db.dispose],
        logging_config=None,
        debug=False,
    )


def key_provider_from_settings(
    settings: Settings, token: Pkcs11MasterKeys | None = None
) -> MasterKeyProvider | None:
    """The master-key provider of ``settings``; None means the keyring file's master keys.

    With an HSM configured: the token's keys (:func:`hsm_from_settings`) — or, while
    ``hsm_migration`` is on, both the keyring file's and the token's (:class:`HsmMigrationMasterKeys`),
    so the service keeps serving while ``veilbill keys migrate-to-hsm`` moves the data keys.
    ``token`` is the provider of the configured token when the caller built it already.
    """
    token = token or hsm_from_settings(settings)
    if token is None or not settings.hsm_migration:
        return token
    return HsmMigrationMasterKeys(KeyringFileMasterKeys(settings.keyring_path), token, clock=utcnow)


def hsm_from_settings(settings: Settings) -> Pkcs11MasterKeys | None:
    """The PKCS#11 master-key provider when an HSM is configured (nothing is opened yet)."""
    if not settings.hsm_module:
        return None
    label, pin = settings.hsm_token_label or "", settings.hsm_pin or ""  # both required by Settings
    return Pkcs11MasterKeys(Pkcs11Config(settings.hsm_module, label, pin))


def webhook_delivery_for(billing: Billing, *, clock: Callable[[], datetime] = utcnow) -> WebhookDelivery:
    """The outbound-webhook deliverer of ``billing``: same database, keys and destination policy."""
    return WebhookDelivery(
        billing.db, billing.keyring, WebhookSender(billing.webhook_destinations), clock=clock
    )


def _log_worker_error(error: Exception) -> None:
    get_logger("api.webhooks").error("webhook_worker_error", error_type=type(error).__name__)


def _log_claim_keeper_error(error: Exception) -> None:
    get_logger("api.idempotency").error("idempotency_claim_keeper_error", error_type=type(error).__name__)


def gateway_from_settings(settings: Settings) -> PaymentGateway | None:
    """The Stripe adapter for ``settings``, or None when no gateway key is configured."""
    if not settings.stripe_api_key:
        return None
    client = make_stripe_client(settings.stripe_api_key, api_base=settings.stripe_api_base)
    return StripeGateway(client, localstripe=settings.gateway_is_sandbox)


def app_from_env() -> Litestar:
    """Factory for ``uvicorn --factory``: settings come from the environment, read once here."""
    return create_app(Settings.from_env())


def _swagger_ui_assets() -> Path:
    """Swagger UI 5 (OpenAPI 3.1) as shipped by the ``swagger-ui-py`` wheel, served by us.

    Located without importing the package (its ``__init__`` loads Jinja and YAML for other
    frameworks). Serving the assets ourselves keeps the docs working offline and keeps third-party
    script origins out of the page.
    """
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def _openapi() -> OpenAPIConfig:
    swagger = SwaggerRenderPlugin(
        path="/swagger",
        js_url=f"{_ASSETS}/swagger-ui-bundle.js",
        css_url=f"{_ASSETS}/swagger-ui.css",
        standalone_preset_js_url=f"{_ASSETS}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{_ASSETS}/favicon-32x32.png'>",
    )
    return OpenAPIConfig(
        title="Veilbill API",
        version="1",
        description=(
            "Privacy-preserving billing for booking businesses. Authenticate with "
            "`Authorization: Bearer vb_…`. Errors are RFC 9457 problem+json with a stable `code`."
        ),
        path="/schema",
        render_plugins=[swagger, ProblemDocumentingJsonPlugin()],
        components=Components(
            security_schemes={
                "ApiKey": SecurityScheme(type="http", scheme="bearer", description="Veilbill API key")
            }
        ),
        security=[{"ApiKey": []}],
    )


def _readiness(db: Database, settings: Settings, key_provider: MasterKeyProvider | None) -> dict[str, str]:
    """``database``, ``keyring`` and, with an HSM configured, ``hsm``: a wrap and unwrap round trip
    of a throwaway key in the token (``unavailable`` when the token is unreachable, locked or holds
    no master key). While ``hsm_migration`` is on, the round trip goes through the store that
    wraps now — the file's until the token holds the new version — and the token must answer."""
    checks = {}
    try:
        db.ping()
        checks["database"] = "ok"
    except Exception:
        checks["database"] = "unreachable"
    try:
        load_keyring(settings.keyring_path)
        checks["keyring"] = "ok"
    except Exception:
        checks["keyring"] = "unavailable"
    if settings.hsm_configured and key_provider is not None:
        try:
            probe_master_keys(key_provider)
            checks["hsm"] = "ok"
        except Exception:
            checks["hsm"] = "unavailable"
    return checks
