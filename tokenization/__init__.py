"""Veilbill tokenization package: the boundary to the payment gateway.

Public surface:

- card-number (PAN) detection and redaction: :func:`find_card_numbers`,
  :func:`contains_card_number`, :func:`redact_card_numbers`, :func:`luhn_valid`;
- card-data scans of decoded request bodies and query strings: :func:`find_card_data`,
  :func:`scan_query_params`, :data:`CARD_FIELD_NAMES`, :func:`is_card_field_name`;
- errors: :class:`GatewayError` (the root) and :class:`CardDataRejected`.
"""

from tokenization._pan import (
    CARD_FIELD_NAMES,
    PAN_REDACTION,
    contains_card_number,
    find_card_data,
    find_card_numbers,
    is_card_field_name,
    luhn_valid,
    normalize_field_name,
    redact_card_numbers,
    scan_query_params,
)
from tokenization.errors import CardDataRejected, GatewayError

__all__ = [
    "CARD_FIELD_NAMES",
    "PAN_REDACTION",
    "CardDataRejected",
    "GatewayError",
    "contains_card_number",
    "find_card_data",
    "find_card_numbers",
    "is_card_field_name",
    "luhn_valid",
    "normalize_field_name",
    "redact_card_numbers",
    "scan_query_params",
]
