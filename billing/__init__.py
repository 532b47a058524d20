"""The billing domain and its storage.

Tenants and API keys, customers with PII sealed per data subject, invoices with gapless numbering,
money and tax, the keyring and envelope encryption, blind indexes and the audit chain. Nothing here
knows about HTTP; errors live in :mod:`billing.errors`.
"""

from billing._actor import ROLES, Actor
from billing._audit import AuditBreak, AuditTrail, AuditVerification
from billing._blind_index import blind_index, normalize_email, normalize_ref
from billing._breaches import BreachInput, BreachView
from billing._customers import (
    Address,
    CustomerInput,
    CustomerPatch,
    CustomerService,
    CustomerView,
)
from billing._db import Database, DatabaseConfig, normalize_database_url
from billing._envelope import (
    DataKey,
    FieldContext,
    open_sealed,
    open_sealed_text,
    seal,
    seal_text,
)
from billing._hsm import Pkcs11Config, Pkcs11MasterKeys
from billing._idempotency import IdempotencyStore, StoredResponse
from billing._invoices import (
    InvoiceInput,
    InvoiceLineInput,
    InvoiceLineView,
    InvoicePage,
    InvoicePatch,
    InvoiceQuery,
    InvoiceService,
    InvoiceStatus,
    InvoiceSummary,
    InvoiceView,
)
from billing._keyring import (
    Keyring,
    KeyringFileMasterKeys,
    KeyringMasterKeys,
    MasterKeyProvider,
    MasterKeyVersion,
    create_keyring,
    load_keyring,
    write_keyring,
)
from billing._migrations import current_revision, downgrade, head_revision, upgrade
from billing._models import utcnow
from billing._money import Money, compute_line, compute_totals, currency_exponent
from billing._monitoring import PII_READ_ACTIONS, AccessPolicy
from billing._payments import (
    HANDLED_EVENT_TYPES,
    CardView,
    PaymentService,
    PaymentView,
    RefundView,
    SetupIntentView,
)
from billing._privacy import DATA_CATEGORIES, ErasureReceipt, PrivacyService, SubjectExport
from billing._reports import PROFILES as REPORT_PROFILES
from billing._reports import REVENUE_GROUPINGS, Dataset, ReportExport, ReportService, RevenueGrouping
from billing._retention import RETENTION_PRESETS, RetentionPolicy, RetentionPolicyInput, RetentionReport
from billing._rotation import (
    DEFAULT_ROTATION_BATCH_SIZE,
    KeyRotationService,
    KeyStatus,
    MasterKeyState,
    RetirementReport,
    RotationProgress,
    RotationReport,
)
from billing._service import Billing
from billing._sessions import HostedInvoice, IssuedPaymentSession, PaymentSessionService
from billing._tenants import ApiKeyView, BusinessDetails, IssuedApiKey, TenantService

__all__ = [
    "DATA_CATEGORIES",
    "DEFAULT_ROTATION_BATCH_SIZE",
    "HANDLED_EVENT_TYPES",
    "PII_READ_ACTIONS",
    "REPORT_PROFILES",
    "RETENTION_PRESETS",
    "REVENUE_GROUPINGS",
    "ROLES",
    "AccessPolicy",
    "Actor",
    "Address",
    "ApiKeyView",
    "AuditBreak",
    "AuditTrail",
    "AuditVerification",
    "Billing",
    "BreachInput",
    "BreachView",
    "BusinessDetails",
    "CardView",
    "CustomerInput",
    "CustomerPatch",
    "CustomerService",
    "CustomerView",
    "DataKey",
    "Database",
    "DatabaseConfig",
    "Dataset",
    "ErasureReceipt",
    "FieldContext",
    "HostedInvoice",
    "IdempotencyStore",
    "InvoiceInput",
    "InvoiceLineInput",
    "InvoiceLineView",
    "InvoicePage",
    "InvoicePatch",
    "InvoiceQuery",
    "InvoiceService",
    "InvoiceStatus",
    "InvoiceSummary",
    "InvoiceView",
    "IssuedApiKey",
    "IssuedPaymentSession",
    "KeyRotationService",
    "KeyStatus",
    "Keyring",
    "KeyringFileMasterKeys",
    "KeyringMasterKeys",
    "MasterKeyProvider",
    "MasterKeyState",
    "MasterKeyVersion",
    "Money",
    "PaymentService",
    "PaymentSessionService",
    "PaymentView",
    "Pkcs11Config",
    "Pkcs11MasterKeys",
    "PrivacyService",
    "RefundView",
    "ReportExport",
    "ReportService",
    "RetentionPolicy",
    "RetentionPolicyInput",
    "RetentionReport",
    "RetirementReport",
    "RevenueGrouping",
    "RotationProgress",
    "RotationReport",
    "SetupIntentView",
    "StoredResponse",
    "SubjectExport",
    "TenantService",
    "blind_index",
    "compute_line",
    "compute_totals",
    "create_keyring",
    "currency_exponent",
    "current_revision",
    "downgrade",
    "head_revision",
    "load_keyring",
    "normalize_database_url",
    "normalize_email",
    "normalize_ref",
    "open_sealed",
    "open_sealed_text",
    "seal",
    "seal_text",
    "upgrade",
    "utcnow",
    "write_keyring",
]
