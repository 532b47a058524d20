"""Settings: the only place that reads ``VEILBILL_*`` environment variables.

``Settings.from_env()`` is called once, by the composition root (``create_app`` callers, the CLI);
nothing reads the environment at import time, so tests build ``Settings`` directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["Settings"]

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True, slots=True)
class Settings:
    """Service configuration; validated on construction.

    Attributes:
        database_url: ``sqlite:///path`` or ``postgresql://user@host/db``.
        keyring_path: the keyring file (mode 0600) of master and audit keys.
        max_body_bytes: requests with a larger body are refused with ``body_too_large``.
        public_url: where the service is reached, for links it hands out.
        log_path: JSON log file; ``None`` logs to stderr.
        page_idle_minutes: a page session ends after this long without a request (automatic logoff).
        page_max_hours: a page session ends this long after sign-in, however active.
        hsm_migration: while master keys move from the keyring file to the HSM (``veilbill keys
            migrate-to-hsm``), serve from both: unwrap with whichever store holds the version a
            data key names, wrap in the token once it holds the new version.
        tenant_admin_master_key_rotation: whether a tenant's admin may start or continue a master
            key rotation with ``POST /v1/admin/keys/rotate``. Off by default: master keys are shared
            by every tenant, so rotating them is the operator's decision (``veilbill keys rotate``);
            a deployment serving one business may turn it on.
        webhooks_allow_private: outbound webhooks may go to loopback and private addresses
            (development receivers); off by default, so receivers must be public hosts.
        webhooks_worker: the service delivers outbound webhooks from a background thread; tests
            and one-off commands turn it off (``veilbill webhooks deliver`` runs it on its own).
        pci_scan_paths: extra files and folders (backups, exports) the card-data scan reads,
            besides ``log_path``.
        master_key_max_age_days: the master-key cryptoperiod the scope report checks against.
        api_key_max_age_days, api_key_idle_days: API keys older, or unused for longer, are reported.
    """

    database_url: str = "sqlite:///var/veilbill.db"
    keyring_path: Path = Path("var/keyring.json")
    erasure_journal_path: Path = Path("var/erasures.jsonl")
    log_level: str = "INFO"
    log_path: str | None = None
    public_url: str = "http://127.0.0.1:8000"
    max_body_bytes: int = 256 * 1024
    debug: bool = False
    stripe_api_key: str | None = field(default=None, repr=False)
    stripe_api_base: str | None = None
    stripe_publishable_key: str | None = None
    stripe_webhook_secret: str | None = field(default=None, repr=False)
    webhooks_allow_private: bool = False
    webhooks_worker: bool = True
    hsm_module: str | None = None
    hsm_token_label: str | None = None
    hsm_pin: str | None = field(default=None, repr=False)
    page_idle_minutes: int = 15
    page_max_hours: int = 8
    tenant_admin_master_key_rotation: bool = False
    hsm_migration: bool = False
    pci_scan_paths: tuple[Path, ...] = ()
    master_key_max_age_days: int = 365
    api_key_max_age_days: int = 365
    api_key_idle_days: int = 90

    @property
    def hsm_configured(self) -> bool:
        return bool(self.hsm_module)

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be at least 1024")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("log_level must be DEBUG, INFO, WARNING or ERROR")
        if not 1 <= self.page_idle_minutes <= 24 * 60:
            raise ValueError("page_idle_minutes must be 1 to 1440")
        if not 1 <= self.page_max_hours <= 24 * 7:
            raise ValueError("page_max_hours must be 1 to 168")
        if self.page_idle_minutes > self.page_max_hours * 60:
            raise ValueError("page_idle_minutes cannot exceed page_max_hours")
        object.__setattr__(self, "keyring_path", Path(self.keyring_path))
        object.__setattr__(self, "erasure_journal_path", Path(self.erasure_journal_path))
        object.__setattr__(self, "pci_scan_paths", tuple(Path(p) for p in self.pci_scan_paths))
        for name in ("master_key_max_age_days", "api_key_max_age_days", "api_key_idle_days"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.hsm_module and not (self.hsm_token_label and self.hsm_pin):
            raise ValueError(
                "VEILBILL_HSM_TOKEN_LABEL and VEILBILL_HSM_PIN are required with VEILBILL_HSM_MODULE"
            )
        if self.hsm_migration and not self.hsm_module:
            raise ValueError("VEILBILL_HSM_MIGRATION needs the VEILBILL_HSM_* settings of the target token")
        if self.stripe_api_key and not self.webhook_secrets:
            raise ValueError(
                "VEILBILL_STRIPE_WEBHOOK_SECRET is required when a gateway is configured: "
                "webhooks are never accepted unsigned"
            )
        if not all(secret.isprintable() and secret.isascii() for secret in self.webhook_secrets):
            # The gateway's secrets are printable ASCII (whsec_…); a lone surrogate (from an
            # environment variable that was not UTF-8) would fail each webhook's HMAC instead.
            raise ValueError("VEILBILL_STRIPE_WEBHOOK_SECRET must be printable ASCII text")

    @property
    def webhook_secrets(self) -> tuple[str, ...]:
        """Every accepted webhook secret (comma-separated in the setting, for rotation)."""
        raw = self.stripe_webhook_secret or ""
        return tuple(part.strip() for part in raw.split(",") if part.strip())

    @property
    def scan_paths(self) -> tuple[Path, ...]:
        """What the card-data scan reads besides the database: the log file and the extra paths."""
        log = (Path(self.log_path),) if self.log_path else ()
        return (*log, *self.pci_scan_paths)

    @property
    def serves_https(self) -> bool:
        return urlsplit(self.public_url).scheme == "https"

    @property
    def gateway_configured(self) -> bool:
        return bool(self.stripe_api_key)

    @property
    def gateway_is_sandbox(self) -> bool:
        """True when the gateway API is on loopback: the local sandbox, whose gaps the adapter absorbs."""
        host = urlsplit(self.stripe_api_base or "").hostname or ""
        return host in {"localhost", "127.0.0.1", "::1"}

    @property
    def gateway_js_url(self) -> str:
        """Where the browser loads the gateway's card element (the sandbox serves a stand-in)."""
        if self.stripe_api_base and self.gateway_is_sandbox:
            return f"{self.stripe_api_base.rstrip('/')}/js.stripe.com/v3/"
        return "https://js.stripe.com/v3/"

    def as_env(self) -> dict[str, str]:
        """The ``VEILBILL_*`` variables that reproduce these settings (for worker processes)."""
        values = {
            "VEILBILL_DATABASE_URL": self.database_url,
            "VEILBILL_KEYRING_PATH": str(self.keyring_path),
            "VEILBILL_ERASURE_JOURNAL": str(self.erasure_journal_path),
            "VEILBILL_LOG_LEVEL": self.log_level,
            "VEILBILL_PUBLIC_URL": self.public_url,
            "VEILBILL_MAX_BODY_BYTES": str(self.max_body_bytes),
            "VEILBILL_LOG_PATH": self.log_path,
            "VEILBILL_STRIPE_API_KEY": self.stripe_api_key,
            "VEILBILL_STRIPE_API_BASE": self.stripe_api_base,
            "VEILBILL_STRIPE_PUBLISHABLE_KEY": self.stripe_publishable_key,
            "VEILBILL_STRIPE_WEBHOOK_SECRET": self.stripe_webhook_secret,
            "VEILBILL_WEBHOOKS_ALLOW_PRIVATE": "1" if self.webhooks_allow_private else "0",
            "VEILBILL_WEBHOOKS_WORKER": "1" if self.webhooks_worker else "0",
            "VEILBILL_HSM_MODULE": self.hsm_module,
            "VEILBILL_HSM_TOKEN_LABEL": self.hsm_token_label,
            "VEILBILL_HSM_PIN": self.hsm_pin,
            "VEILBILL_PAGE_IDLE_MINUTES": str(self.page_idle_minutes),
            "VEILBILL_PAGE_MAX_HOURS": str(self.page_max_hours),
            "VEILBILL_HSM_MIGRATION": "1" if self.hsm_migration else None,
            "VEILBILL_TENANT_ADMIN_MASTER_KEY_ROTATION": (
                "1" if self.tenant_admin_master_key_rotation else None
            ),
            "VEILBILL_PCI_SCAN_PATHS": ",".join(str(p) for p in self.pci_scan_paths),
            "VEILBILL_MASTER_KEY_MAX_AGE_DAYS": str(self.master_key_max_age_days),
            "VEILBILL_API_KEY_MAX_AGE_DAYS": str(self.api_key_max_age_days),
            "VEILBILL_API_KEY_IDLE_DAYS": str(self.api_key_idle_days),
        }
        return {k: v for k, v in values.items() if v}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``VEILBILL_*`` variables (``environ`` defaults to the process environment)."""
        env = os.environ if environ is None else environ
        base = cls()
        values: dict[str, object] = {}
        text_vars = {
            "VEILBILL_DATABASE_URL": "database_url",
            "VEILBILL_KEYRING_PATH": "keyring_path",
            "VEILBILL_ERASURE_JOURNAL": "erasure_journal_path",
            "VEILBILL_LOG_LEVEL": "log_level",
            "VEILBILL_LOG_PATH": "log_path",
            "VEILBILL_PUBLIC_URL": "public_url",
            "VEILBILL_STRIPE_API_KEY": "stripe_api_key",
            "VEILBILL_STRIPE_API_BASE": "stripe_api_base",
            "VEILBILL_STRIPE_PUBLISHABLE_KEY": "stripe_publishable_key",
            "VEILBILL_STRIPE_WEBHOOK_SECRET": "stripe_webhook_secret",
            "VEILBILL_HSM_MODULE": "hsm_module",
            "VEILBILL_HSM_TOKEN_LABEL": "hsm_token_label",
            "VEILBILL_HSM_PIN": "hsm_pin",
        }
        for var, name in text_vars.items():
            if env.get(var):
                values[name] = env[var]
        if env.get("VEILBILL_PCI_SCAN_PATHS"):
            parts = env["VEILBILL_PCI_SCAN_PATHS"].split(",")
            values["pci_scan_paths"] = tuple(Path(p.strip()) for p in parts if p.strip())
        int_vars = {
            "VEILBILL_MASTER_KEY_MAX_AGE_DAYS": "master_key_max_age_days",
            "VEILBILL_API_KEY_MAX_AGE_DAYS": "api_key_max_age_days",
            "VEILBILL_API_KEY_IDLE_DAYS": "api_key_idle_days",
            "VEILBILL_MAX_BODY_BYTES": "max_body_bytes",
            "VEILBILL_PAGE_IDLE_MINUTES": "page_idle_minutes",
            "VEILBILL_PAGE_MAX_HOURS": "page_max_hours",
        }
        for var, name in int_vars.items():
            if env.get(var):
                values[name] = int(env[var])
        flag_vars = {
            "VEILBILL_DEBUG": "debug",
            "VEILBILL_WEBHOOKS_ALLOW_PRIVATE": "webhooks_allow_private",
            "VEILBILL_HSM_MIGRATION": "hsm_migration",
            "VEILBILL_TENANT_ADMIN_MASTER_KEY_ROTATION": "tenant_admin_master_key_rotation",
            "VEILBILL_WEBHOOKS_WORKER": "webhooks_worker",
        }
        for var, name in flag_vars.items():
            if var in env:
                values[name] = env[var].lower() in _TRUE
        return replace(base, **values)  # type: ignore[arg-type]
