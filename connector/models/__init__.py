"""All models, imported so that ``Base.metadata`` knows every table.

Each domain keeps its tables in a module of its own here.
"""

from connector.models.catalog import WATERMARKS, Product, ProductFile
from connector.models.download_events import DOWNLOAD_OUTCOMES, DownloadEvent, WatermarkCopy
from connector.models.downloads import DownloadGrant
from connector.models.licensing import LICENSE_STATUSES, License
from connector.models.licensing_api import (
    Activation,
    BindingChange,
    LicenseFlag,
    Release,
    SecurityEvent,
    SigningKey,
)
from connector.models.orders import GrantExtension, LicenseRenewal, LineItem, Order
from connector.models.records import AuditEvent, BrevoRemoval, Job, Mail, WebhookDelivery
from connector.models.store import AdminUser, Store
from connector.models.vault import (
    CREDENTIAL_KINDS,
    Credential,
    KeyCheck,
    ShopConnection,
    ShopNote,
    WebhookRegistration,
)

__all__ = [
    "CREDENTIAL_KINDS",
    "DOWNLOAD_OUTCOMES",
    "LICENSE_STATUSES",
    "WATERMARKS",
    "Activation",
    "AdminUser",
    "AuditEvent",
    "BindingChange",
    "BrevoRemoval",
    "Credential",
    "DownloadEvent",
    "DownloadGrant",
    "GrantExtension",
    "Job",
    "KeyCheck",
    "License",
    "LicenseFlag",
    "LicenseRenewal",
    "LineItem",
    "Mail",
    "Order",
    "Product",
    "ProductFile",
    "Release",
    "SecurityEvent",
    "ShopConnection",
    "ShopNote",
    "SigningKey",
    "Store",
    "WatermarkCopy",
    "WebhookDelivery",
    "WebhookRegistration",
]
