"""HTTP controllers: parse, call one billing method, shape the response."""

from api.controllers.admin import AdminController
from api.controllers.audit import AuditController
from api.controllers.customers import CustomerController
from api.controllers.events import EventController, WebhookEndpointController
from api.controllers.health import HealthController
from api.controllers.invoices import InvoiceController
from api.controllers.payments import CardController, PaymentController
from api.controllers.pci import PciController, PciPageController
from api.controllers.privacy import PrivacyController
from api.controllers.reports import ReportController
from api.controllers.webhooks import WebhookController

__all__ = [
    "AdminController",
    "AuditController",
    "CardController",
    "CustomerController",
    "EventController",
    "HealthController",
    "InvoiceController",
    "PaymentController",
    "PciController",
    "PciPageController",
    "PrivacyController",
    "ReportController",
    "WebhookController",
    "WebhookEndpointController",
]
