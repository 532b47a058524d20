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
from billing._event_models import EventDelivery, EventRecord, WebhookEndpoint
from billing._events import (
    EVENT_TYPES,
    PAYLOAD_FIELDS,
    DeliveryView,
    EndpointView,
    EventOutbox,
    EventPage,
    EventService,
    EventView,
)
from billing._hsm import HsmMigrationMasterKeys, Pkcs11Config, Pkcs11MasterKeys, migrate_to_hsm
from billing._idempotency import CLAIM_LEASE, IdempotencyStore, StoredResponse
from billing._inventory import (
    Inventory,
    InventoryEntry,
    Sealed,
    inventory_entries,
    inventory_markdown,
)
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
    probe_master_keys,
    write_keyring,
)
from billing._migrations import current_revision, downgrade, head_revision, upgrade
from billing._models import utcnow
from billing._money import Money, compute_line, compute_totals, currency_exponent
from billing._monitoring import PII_READ_ACTIONS, AccessPolicy
from billing._page_sessions import (
    IssuedPageSession,
    PageSessionPolicy,
    PageSessionService,
    PageSessionView,
)
from billing._payments import (
    HANDLED_EVENT_TYPES,
    CardView,
    PaymentService,
    PaymentView,
    RefundView,
    SetupIntentView,
)
from billing._pci import (
    PCI_REQUIREMENTS,
    CardDerivedField,
    ConfigCheck,
    DeploymentFacts,
    Finding,
    Location,
    PciService,
    RequirementEvidence,
    ScanResult,
    ScanStats,
    ScopeReport,
)
from billing._pci_pdf import render_scope_report_pdf
from billing._privacy import DATA_CATEGORIES, ErasureReceipt, PrivacyService, SubjectExport
from billing._reconcile import Discrepancy, Reconciler, ReconciliationReport
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
from billing._subject_rotation import (
    SUBJECT_KEY_PURPOSES,
    SubjectKeyRotation,
    SubjectKeyRotationService,
    SubjectPurpose,
)
from billing._tenants import ApiKeyView, BusinessDetails, IssuedApiKey, TenantService
from billing._webhook_delivery import (
    AttemptOutcome,
    DeliveryWorker,
    RetryPolicy,
    WebhookDelivery,
    WebhookSender,
)
from billing._webhook_signing import SigningSecret, generate_secret, sign, signature_header
from billing._webhook_urls import Destination, DestinationPolicy, address_allowed

__all__ = [
    "CLAIM_LEASE",
    "DATA_CATEGORIES",
    "DEFAULT_ROTATION_BATCH_SIZE",
    "EVENT_TYPES",
    "HANDLED_EVENT_TYPES",
    "PAYLOAD_FIELDS",
    "PCI_REQUIREMENTS",
    "PII_READ_ACTIONS",
    "REPORT_PROFILES",
    "RETENTION_PRESETS",
    "REVENUE_GROUPINGS",
    "ROLES",
    "SUBJECT_KEY_PURPOSES",
    "AccessPolicy",
    "Actor",
    "Address",
    "ApiKeyView",
    "AttemptOutcome",
    "AuditBreak",
    "AuditTrail",
    "AuditVerification",
    "Billing",
    "BreachInput",
    "BreachView",
    "BusinessDetails",
    "CardDerivedField",
    "CardView",
    "ConfigCheck",
    "CustomerInput",
    "CustomerPatch",
    "CustomerService",
    "CustomerView",
    "DataKey",
    "Database",
    "DatabaseConfig",
    "Dataset",
    "DeliveryView",
    "DeliveryWorker",
    "DeploymentFacts",
    "Destination",
    "DestinationPolicy",
    "Discrepancy",
    "EndpointView",
    "ErasureReceipt",
    "EventDelivery",
    "EventOutbox",
    "EventPage",
    "EventRecord",
    "EventService",
    "EventView",
    "FieldContext",
    "Finding",
    "HostedInvoice",
    "HsmMigrationMasterKeys",
    "IdempotencyStore",
    "Inventory",
    "InventoryEntry",
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
    "IssuedPageSession",
    "IssuedPaymentSession",
    "KeyRotationService",
    "KeyStatus",
    "Keyring",
    "KeyringFileMasterKeys",
    "KeyringMasterKeys",
    "Location",
    "MasterKeyProvider",
    "MasterKeyState",
    "MasterKeyVersion",
    "Money",
    "PageSessionPolicy",
    "PageSessionService",
    "PageSessionView",
    "PaymentService",
    "PaymentSessionService",
    "PaymentView",
    "PciService",
    "Pkcs11Config",
    "Pkcs11MasterKeys",
    "PrivacyService",
    "Reconciler",
    "ReconciliationReport",
    "RefundView",
    "ReportExport",
    "ReportService",
    "RequirementEvidence",
    "RetentionPolicy",
    "RetentionPolicyInput",
    "RetentionReport",
    "RetirementReport",
    "RetryPolicy",
    "RevenueGrouping",
    "RotationProgress",
    "RotationReport",
    "ScanResult",
    "ScanStats",
    "ScopeReport",
    "Sealed",
    "SetupIntentView",
    "SigningSecret",
    "StoredResponse",
    "SubjectExport",
    "SubjectKeyRotation",
    "SubjectKeyRotationService",
    "SubjectPurpose",
    "TenantService",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookSender",
    "address_allowed",
    "blind_index",
    "compute_line",
    "compute_totals",
    "create_keyring",
    "currency_exponent",
    "current_revision",
    "downgrade",
    "generate_secret",
    "head_revision",
    "inventory_entries",
    "inventory_markdown",
    "load_keyring",
    "migrate_to_hsm",
    "normalize_database_url",
    "normalize_email",
    "normalize_ref",
    "open_sealed",
    "open_sealed_text",
    "probe_master_keys",
    "render_scope_report_pdf",
    "seal",
    "seal_text",
    "sign",
    "signature_header",
    "upgrade",
    "utcnow",
    "write_keyring",
]
