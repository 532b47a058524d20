"""The one place that turns errors into RFC 9457 ``application/problem+json`` responses.

Every problem has ``type``, ``title``, ``status``, ``detail``, ``code`` (stable, documented in
``docs/errors.md``) and ``request_id``. Nothing the client sent is echoed: validation problems name
the JSON path of the offending field (from the schema, not the input) and a fixed description.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    SerializationException,
    ValidationException,
)
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from api.logging import get_logger
from billing.errors import (
    AmountOutOfRange,
    ApiKeyInvalid,
    BillingError,
    ConcurrentUpdate,
    CustomerErased,
    DatabaseUnavailable,
    DecryptionError,
    GatewayNotConfigured,
    IdempotencyInProgress,
    IdempotencyKeyRequired,
    IdempotencyKeyReused,
    InvalidStateTransition,
    KeyringError,
    NotFound,
    PageSessionInvalid,
    PaymentDeclined,
    PaymentInProgress,
    PaymentSessionInvalid,
    RecordExpired,
    RecordRestricted,
    RefundExceedsPaid,
    RoleForbidden,
    UnknownCurrency,
    ValidationFailed,
    WebhookUrlInvalid,
    WebhookUrlRefused,
)
from tokenization.errors import (
    CardDataRejected,
    CardDeclined,
    GatewayError,
    GatewayTimeout,
    GatewayUnavailable,
    PaymentMethodInvalid,
    SandboxUnavailable,
    WebhookPayloadInvalid,
    WebhookSignatureInvalid,
)

__all__ = ["EXCEPTION_HANDLERS", "PROBLEM_MEDIA_TYPE", "ProblemError", "problem_response"]

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TYPE_BASE = "https://veilbill.dev/problems/"

_BILLING_STATUS: dict[type[BillingError], int] = {
    UnknownCurrency: 422,
    AmountOutOfRange: 422,
    ValidationFailed: 422,
    NotFound: 404,
    InvalidStateTransition: 409,
    ConcurrentUpdate: 409,
    ApiKeyInvalid: 401,
    RoleForbidden: 403,
    KeyringError: 503,
    DatabaseUnavailable: 503,
    DecryptionError: 500,
    PaymentDeclined: 402,
    PaymentInProgress: 409,
    RefundExceedsPaid: 422,
    GatewayNotConfigured: 503,
    IdempotencyKeyRequired: 400,
    IdempotencyKeyReused: 422,
    IdempotencyInProgress: 409,
    PaymentSessionInvalid: 404,
    PageSessionInvalid: 401,
    CustomerErased: 410,
    RecordRestricted: 403,
    RecordExpired: 410,
    WebhookUrlInvalid: 422,
    WebhookUrlRefused: 422,
}

# ids that are safe to show a caller: ids and codes chosen by the service, never input values.
_PUBLIC_IDS = {
    "field",
    "resource",
    "current_status",
    "action",
    "line",
    "reason",
    "decline_code",
    "payment_id",
}

_log = get_logger("api.errors")


class ProblemError(Exception):
    """An API-level refusal that is not a domain error (bad cursor syntax, oversized body…)."""

    def __init__(self, status: int, code: str, title: str, **extra: Any) -> None:
        super().__init__(title)
        self.status = status
        self.code = code
        self.title = title
        self.extra = extra


def problem_response(
    request: Request[Any, Any, Any],
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    **extra: Any,
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": _TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail or title,
        "code": code,
        "request_id": request.scope.get("state", {}).get("request_id") or f"req_{secrets.token_hex(12)}",
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    headers = {"X-Request-Id": body["request_id"]}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="veilbill"'
    if code == "database_unavailable":
        headers["Retry-After"] = "1"
    return Response(content=body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _billing_error(request: Request[Any, Any, Any], exc: BillingError) -> Response[dict[str, Any]]:
    status = next((s for cls, s in _BILLING_STATUS.items() if isinstance(exc, cls)), 422)
    extra: dict[str, Any] = {k: v for k, v in exc.ids.items() if k in _PUBLIC_IDS}
    if isinstance(exc, ApiKeyInvalid):
        extra = {}  # do not tell an attacker whether a key exists, expired or was revoked
    if isinstance(exc, DecryptionError | KeyringError):
        _log.error("crypto_failure", error=exc.code, path=request.url.path)
    return problem_response(request, status, exc.code, exc.message, **extra)


def _card_data(request: Request[Any, Any, Any], exc: CardDataRejected) -> Response[dict[str, Any]]:
    return problem_response(
        request,
        422,
        exc.code,
        "Card data is never accepted by this service; use the gateway's card element.",
        fields=exc.paths,
    )


def _gateway_error(request: Request[Any, Any, Any], exc: GatewayError) -> Response[dict[str, Any]]:
    """Gateway failures: the caller learns what to do (retry, fix the card), never the gateway's text."""
    request_id = getattr(exc, "request_id", None)
    if isinstance(exc, CardDeclined):
        return problem_response(
            request,
            402,
            "card_declined",
            "The card was declined.",
            decline_code=exc.decline_code or "generic_decline",
        )
    if isinstance(exc, PaymentMethodInvalid):
        return problem_response(
            request, 422, exc.code, "The payment method token is not usable.", field="token"
        )
    if isinstance(exc, GatewayTimeout):
        title = "The payment gateway did not answer in time; retry with the same Idempotency-Key."
        return problem_response(request, 504, "gateway_unavailable", title, gateway_request_id=request_id)
    if isinstance(exc, GatewayUnavailable | SandboxUnavailable):
        title = "The payment gateway is unavailable; retry with the same Idempotency-Key."
        return problem_response(request, 503, "gateway_unavailable", title, gateway_request_id=request_id)
    if isinstance(exc, WebhookSignatureInvalid):
        return problem_response(request, 400, exc.code, "The webhook signature is not valid.")
    if isinstance(exc, WebhookPayloadInvalid):
        return problem_response(request, 400, exc.code, "The webhook payload is not a gateway event.")
    _log.error("gateway_rejected", error=exc.code, gateway_request_id=request_id)
    return problem_response(request, 502, "gateway_error", "The payment gateway refused the request.")


def _problem(request: Request[Any, Any, Any], exc: ProblemError) -> Response[dict[str, Any]]:
    return problem_response(request, exc.status, exc.code, exc.title, **exc.extra)


_AT_PATH = re.compile(r" - at `(\$[^`]*)`$")


def _validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    errors = exc.extra if isinstance(exc.extra, list) else []
    problems = [_describe_validation(e) for e in errors if isinstance(e, dict)] or [
        {"code": "invalid_request", "pointer": None}
    ]
    first = problems[0]
    titles = {
        "unknown_field": "The request has a field this operation does not accept.",
        "invalid_type": "A field has the wrong type.",
        "missing_field": "A required field is missing.",
        "invalid_value": "A field has a value outside what this operation accepts.",
        "invalid_request": "The request is not valid.",
    }
    return problem_response(request, 400, first["code"], titles[first["code"]], errors=problems)


def _describe_validation(error: dict[str, Any]) -> dict[str, Any]:
    message = str(error.get("message", ""))
    match = _AT_PATH.search(message)
    source = error.get("source")
    key = error.get("key")
    if match:
        pointer = match.group(1)
    elif source == "body":
        pointer = "$" if key in (None, "data") else f"$.{key}"
    else:
        pointer = f"{source}:{key}" if source else None
    if message.startswith("Object contains unknown field"):
        code = "unknown_field"
    elif (
        message.startswith("Object missing required field")
        or "is missing" in message
        or "Missing required" in message
    ):
        code = "missing_field"
    elif re.match(r"^Expected `[^`]+`, got `[^`]+`", message):
        code = "invalid_type"
    else:
        code = "invalid_value"
    return {"code": code, "pointer": pointer}


def _http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    if isinstance(exc, NotAuthorizedException):
        return problem_response(request, 401, "invalid_api_key", "A valid API key is required.")
    if isinstance(exc, PermissionDeniedException):
        return problem_response(
            request, 403, "forbidden_role", "This key's role does not allow this operation."
        )
    if isinstance(exc, NotFoundException):
        return problem_response(request, 404, "route_not_found", "No such route.")
    if isinstance(exc, MethodNotAllowedException):
        return problem_response(request, 405, "method_not_allowed", "This route does not accept that method.")
    if status == 413:
        return problem_response(
            request, 413, "body_too_large", "The request body is larger than this service accepts."
        )
    if status == 400 and _is_decode_error(exc):
        return problem_response(request, 400, "malformed_json", "The request body is not valid JSON.")
    if status == 415:
        return problem_response(request, 415, "unsupported_media_type", "Send the body as application/json.")
    if status >= 500:
        return _internal(request, exc)
    return problem_response(request, status, "bad_request", "The request could not be processed.")


def _is_decode_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, msgspec.DecodeError | SerializationException):
            return True
        seen = seen.__cause__ or seen.__context__
    return "JSON is malformed" in str(getattr(exc, "detail", ""))


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    _log.exception("unhandled_error", path=request.url.path, error_type=type(exc).__name__)
    return problem_response(
        request, HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "Something went wrong on our side."
    )


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    BillingError: _billing_error,
    CardDataRejected: _card_data,
    GatewayError: _gateway_error,
    ProblemError: _problem,
    ValidationException: _validation,
    HTTPException: _http_exception,
    Exception: _internal,
}
