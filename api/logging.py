"""Structured JSON logging in which every record is redacted before it is written.

One JSON object per line. Records from structlog loggers (:func:`get_logger`) and from
the standard library (uvicorn, litestar, sqlalchemy, anything using :mod:`logging`) run
through the same processors, in this order:

1. context variables, log level, logger name, ``%``-arguments, ISO 8601 UTC timestamp;
2. :func:`structlog.processors.format_exc_info`, so a traceback is a string *before*
   redaction and is redacted like any other value;
3. :func:`redact_pii_keys`: the value of every key named in :data:`PII_LOG_KEYS` (or
   ending in a credential or contact word, see :data:`_PII_KEY_SUFFIXES`), at any depth,
   becomes ``"[REDACTED]"``; so does the value of a ``(name, value)`` pair in a list,
   which is how headers often travel;
4. :func:`redact_card_numbers_processor`: every string at any depth (the message, keys,
   the traceback, ``repr()`` of any other object) loses its card numbers, and a number
   whose digits spell a card becomes ``"[REDACTED PAN]"``;
5. :func:`redact_email_addresses`: e-mail addresses in free text (typically exception
   messages) become ``"[REDACTED EMAIL]"``.

Security decisions:

- Redaction runs last, right before rendering, and copies nested containers instead of
  mutating them, so the caller's objects are never altered.
- Anything that is not a str, number, bool, None, dict, list or tuple is turned into its
  ``repr()`` *before* redaction, because that is what the JSON renderer would write.
- Containers nested deeper than :data:`_MAX_DEPTH` are replaced by ``"[TRUNCATED]"``
  rather than written unredacted.
- Free text is only scanned for card numbers and e-mail addresses. A name or a phone
  number written into a message is not caught: log ids and pass data as keyword
  arguments, whose names are redacted by key.
- Until :func:`configure_logging` has run, structlog's defaults apply and nothing is
  redacted; the composition root must call it before anything logs.

Nothing happens at import time.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Final, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from tokenization import CARD_FIELD_NAMES, normalize_field_name, redact_card_numbers

__all__ = [
    "PII_LOG_KEYS",
    "configure_logging",
    "get_logger",
    "redact_card_numbers_processor",
    "redact_email_addresses",
    "redact_pii_keys",
]

REDACTED: Final = "[REDACTED]"
_EMAIL_REDACTION: Final = "[REDACTED EMAIL]"
_PAN_REDACTION: Final = "[REDACTED PAN]"
_TRUNCATED: Final = "[TRUNCATED]"
_MAX_DEPTH: Final = 12
_HANDLER_NAME: Final = "veilbill"

PII_LOG_KEYS: Final[frozenset[str]] = (
    frozenset(
        {
            # Identity and contact.
            "name",
            "firstname",
            "lastname",
            "fullname",
            "email",
            "emailaddress",
            "phone",
            "phonenumber",
            "mobile",
            "address",
            "line1",
            "line2",
            "city",
            "postcode",
            "postalcode",
            "birthdate",
            "dateofbirth",
            "gender",
            # Free text that routinely carries personal data.
            "notes",
            "description",
            # Credentials.
            "authorization",
            "proxyauthorization",
            "cookie",
            "setcookie",
            "apikey",
            "key",
            "secret",
            "password",
            "token",
            "clientsecret",
        }
    )
    | CARD_FIELD_NAMES
)
"""Keys whose values are never logged, in :func:`tokenization.normalize_field_name` form
(so ``Set-Cookie``, ``set_cookie`` and ``setCookie`` all match ``setcookie``)."""

_PII_KEY_SUFFIXES: Final = ("email", "phone", "password", "secret", "token", "apikey")
"""A normalized key ending with one of these is redacted too: ``customer_email``,
``access_token``, ``stripe_secret``, ``x-api-key``."""

_META_KEYS: Final = frozenset({"_record", "_from_structlog"})
"""Keys structlog's ``ProcessorFormatter`` adds for itself; passed through as is."""

_FOREIGN_LOGGERS: Final = ("uvicorn", "uvicorn.error", "uvicorn.access", "litestar")
"""Loggers that install handlers of their own; theirs are removed so that their records
propagate to the root logger and through the redacting formatter."""

# Linear: a match can only start where the local part starts (the lookbehind), and the
# quantified classes are separated by characters they cannot match ("@", ".").
# "@" or its percent-encoding "%40" (an address copied from a URL or query string).
_EMAIL_RE: Final = re.compile(r"(?<![\w.%+-])[\w.%+-]+?(?:@|%40)[\w-]+(?:\.[\w-]+)+", re.IGNORECASE)

_CARD_INTEGER_LIMIT: Final = 10**19
"""Integers at or beyond this have more than 19 digits and cannot be card numbers."""


def _is_pii_key(key: object) -> bool:
    if isinstance(key, bytes):
        key = key.decode("latin-1")
    if not isinstance(key, str):
        return False
    normalized = normalize_field_name(key)
    return normalized in PII_LOG_KEYS or normalized.endswith(_PII_KEY_SUFFIXES)


def _is_pii_pair(item: object) -> bool:
    return isinstance(item, list | tuple) and len(item) == 2 and _is_pii_key(item[0])


def _redact_by_key(value: object, depth: int) -> object:
    """``value`` copied, with the values of PII keys (and of PII pairs) redacted."""
    if isinstance(value, Mapping):
        if depth >= _MAX_DEPTH:
            return _TRUNCATED
        return {
            key: REDACTED if _is_pii_key(key) else _redact_by_key(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        if depth >= _MAX_DEPTH:
            return _TRUNCATED
        items = [
            (item[0], REDACTED) if _is_pii_pair(item) else _redact_by_key(item, depth + 1) for item in value
        ]
        return items if isinstance(value, list) else tuple(items)
    return value


def redact_pii_keys(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Replace the value of every PII key of ``event_dict``, at any depth, by REDACTED.

    A key is PII when its normalized name is in :data:`PII_LOG_KEYS` or ends with one of
    :data:`_PII_KEY_SUFFIXES`. A two-element list or tuple whose first element is such a
    name (a header pair) has its second element redacted.
    """
    for key in list(event_dict):
        if key in _META_KEYS:
            continue
        if _is_pii_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_by_key(event_dict[key], 1)
    return event_dict


def _map_text(value: object, scrub: Callable[[str], str], depth: int) -> object:
    """``value`` copied, with ``scrub`` applied to every string, key and ``repr()``.

    An integral number is checked through its decimal digits and replaced by the
    scrubbed text only if scrubbing changed it.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, int | float):
        if isinstance(value, float) and not value.is_integer():
            return value
        if not -_CARD_INTEGER_LIMIT < value < _CARD_INTEGER_LIMIT:
            return value
        text = str(value)
        scrubbed = scrub(text)
        return value if scrubbed == text else scrubbed
    if isinstance(value, Mapping):
        if depth >= _MAX_DEPTH:
            return _TRUNCATED
        return {
            _map_text(key, scrub, depth + 1): _map_text(item, scrub, depth + 1) for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        if depth >= _MAX_DEPTH:
            return _TRUNCATED
        items = [_map_text(item, scrub, depth + 1) for item in value]
        return items if isinstance(value, list) else tuple(items)
    return scrub(repr(value))


def _map_event_text(event_dict: EventDict, scrub: Callable[[str], str]) -> EventDict:
    for key in list(event_dict):
        if key in _META_KEYS:
            continue
        value = _map_text(event_dict.pop(key), scrub, 1)
        event_dict[scrub(key)] = value
    return event_dict


def redact_card_numbers_processor(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """Pass each string of ``event_dict`` through ``tokenization.redact_card_numbers``.

    That covers the ``event`` message, the ``exception`` traceback, keys, nested values
    and the ``repr()`` of other objects; an integer spelling a card number is replaced.
    """
    return _map_event_text(event_dict, redact_card_numbers)


def _redact_emails_in(text: str) -> str:
    if "@" not in text and "%40" not in text:
        return text
    return _EMAIL_RE.sub(_EMAIL_REDACTION, text)


def redact_email_addresses(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Replace every e-mail address in every string of ``event_dict``, free text too."""
    return _map_event_text(event_dict, _redact_emails_in)


def _processors() -> list[Processor]:
    """The chain shared by structlog and standard-library records, redaction last."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_pii_keys,
        redact_card_numbers_processor,
        redact_email_addresses,
    ]


def _open_private(log_path: str) -> logging.Handler:
    """A handler appending to ``log_path``, created readable by its owner only."""
    os.close(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    return logging.FileHandler(log_path, encoding="utf-8")


def configure_logging(
    *, level: str = "INFO", stream: TextIO | None = None, log_path: str | None = None
) -> None:
    """Send structlog and standard-library logs, redacted, as JSON lines to one place.

    The destination is ``log_path`` (appended to; created with mode 0600) if given, else
    ``stream``, else standard error. Idempotent: a second call replaces the handler the
    first one installed on the root logger instead of adding another; handlers that
    others installed on the root logger (pytest's, for instance) are left alone. The
    handlers of uvicorn's and litestar's own loggers are removed so their records
    propagate to ours.

    Raises:
        ValueError: ``level`` is not a standard level name (``DEBUG`` … ``CRITICAL``).
    """
    levels = logging.getLevelNamesMapping()
    level_name = level.upper()
    if level_name not in levels:
        raise ValueError(f"unknown log level {level!r}")
    level_number = levels[level_name]

    handler: logging.Handler
    if log_path is not None:
        handler = _open_private(log_path)
    else:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_processors(),
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )

    root = logging.getLogger()
    for previous in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(previous)
        previous.close()
    root.addHandler(handler)
    root.setLevel(level_number)
    for name in _FOREIGN_LOGGERS:
        foreign = logging.getLogger(name)
        for own in list(foreign.handlers):
            foreign.removeHandler(own)
        foreign.propagate = True
    # uvicorn's access log prints the raw request line, query string included (``?email=…``);
    # the service writes its own access log without it (``veilbill.access``).
    logging.getLogger("uvicorn.access").disabled = True

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a logger first used before configuration must not keep the
        # unredacting defaults.
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A structlog logger named ``name`` (default: the calling module's name).

    Lazy: it follows whatever :func:`configure_logging` set up, even if obtained before.
    """
    if name is None:
        return structlog.stdlib.get_logger()
    return structlog.stdlib.get_logger(name)
