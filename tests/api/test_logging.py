"""The logging pipeline: JSON lines with nothing secret in them, whatever their source.

Card numbers here are public gateway TEST numbers; the people are invented.
"""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from api.logging import (
    PII_LOG_KEYS,
    configure_logging,
    get_logger,
    redact_card_numbers_processor,
    redact_email_addresses,
    redact_pii_keys,
)
from tokenization import CARD_FIELD_NAMES

CARD = "4242424242424242"
CARD_SPACED = "4242 4242 4242 4242"
OTHER_CARD = "5555-5555-5555-4444"
EMAIL = "alice.martin@example.com"
NAME = "Alice Martin"
SECRETS = (CARD, CARD_SPACED, OTHER_CARD, "5555555555554444", EMAIL, NAME)


@pytest.fixture(autouse=True)
def _restore(restore_logging: None) -> None:
    """Every test here reconfigures logging; the shared fixture puts it back."""


def configured_stream(level: str = "INFO") -> io.StringIO:
    stream = io.StringIO()
    configure_logging(level=level, stream=stream)
    return stream


def json_lines(output: str) -> list[dict[str, Any]]:
    lines = output.splitlines()
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]


def assert_no_secret(output: str) -> None:
    for secret in SECRETS:
        assert secret not in output


def run(processor: Any, event_dict: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = processor(None, "info", event_dict)
    return result


# --- end to end -----------------------------------------------------------------------


def test_every_record_is_json_and_nothing_secret_is_written() -> None:
    stream = configured_stream()
    log = get_logger("veilbill.test")

    log.info("customer_created", email=EMAIL, name=NAME, customer_id="cus_1")
    log.warning(f"client pasted {CARD_SPACED} into the notes")
    try:
        raise ValueError(f"card {CARD} refused for {EMAIL}")
    except ValueError:
        log.exception("charge_failed", invoice_id="inv_1")
    logging.getLogger("uvicorn.error").error("bad request body: %s", OTHER_CARD)

    output = stream.getvalue()
    assert_no_secret(output)
    created, pasted, failed, foreign = json_lines(output)

    assert created["event"] == "customer_created"
    assert created["email"] == created["name"] == "[REDACTED]"
    assert created["customer_id"] == "cus_1"
    assert created["level"] == "info"
    assert created["logger"] == "veilbill.test"
    assert created["timestamp"].endswith("Z")

    assert pasted["event"] == "client pasted [REDACTED PAN] into the notes"

    assert failed["level"] == "error"
    assert failed["invoice_id"] == "inv_1"
    assert "Traceback" in failed["exception"]
    assert "ValueError: card [REDACTED PAN] refused for [REDACTED EMAIL]" in failed["exception"]

    assert foreign["logger"] == "uvicorn.error"
    assert foreign["level"] == "error"
    assert foreign["event"] == "bad request body: [REDACTED PAN]"


def test_standard_library_exceptions_are_redacted() -> None:
    stream = configured_stream()
    try:
        raise RuntimeError(f"lookup {EMAIL} {CARD}")
    except RuntimeError:
        logging.getLogger("sqlalchemy.engine").exception("query failed for %s", EMAIL)
    output = stream.getvalue()
    assert_no_secret(output)
    (record,) = json_lines(output)
    assert record["event"] == "query failed for [REDACTED EMAIL]"
    assert "RuntimeError: lookup [REDACTED EMAIL] [REDACTED PAN]" in record["exception"]


def test_uvicorn_handlers_are_detached_so_records_reach_the_redacting_handler() -> None:
    private = io.StringIO()
    server_log = logging.getLogger("uvicorn.error")
    server_log.addHandler(logging.StreamHandler(private))
    server_log.propagate = False
    stream = configured_stream()
    server_log.error("client sent %s", f"/v1?q={CARD}")
    assert private.getvalue() == ""
    (record,) = json_lines(stream.getvalue())
    assert record["event"] == "client sent /v1?q=[REDACTED PAN]"


def test_uvicorn_access_log_is_off_because_it_prints_query_strings() -> None:
    stream = configured_stream()
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "10.0.0.1", "GET", "/v1?q=x", "1.1", 200
    )
    assert stream.getvalue() == ""


def test_percent_encoded_emails_are_redacted() -> None:
    stream = configured_stream()
    get_logger("veilbill.test").info("lookup", url="/v1/customers?email=alice.martin%40example.com")
    (record,) = json_lines(stream.getvalue())
    assert "alice.martin" not in json.dumps(record)


def test_context_variables_and_positional_arguments_are_redacted() -> None:
    stream = configured_stream()
    structlog.contextvars.bind_contextvars(request_id="req_1", email=EMAIL)
    get_logger("veilbill.test").info("paid with %s", CARD)
    (record,) = json_lines(stream.getvalue())
    assert record["request_id"] == "req_1"
    assert record["email"] == "[REDACTED]"
    assert record["event"] == "paid with [REDACTED PAN]"


def test_configuring_twice_does_not_duplicate_output() -> None:
    first = configured_stream()
    second = configured_stream()
    get_logger("veilbill.test").info("once")
    logging.getLogger("litestar").warning("once too")
    assert first.getvalue() == ""
    assert [r["event"] for r in json_lines(second.getvalue())] == ["once", "once too"]
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "veilbill"]
    assert len(ours) == 1


def test_level_filters_both_kinds_of_records() -> None:
    stream = configured_stream("warning")
    get_logger("veilbill.test").info("hidden")
    logging.getLogger("uvicorn.error").info("hidden too")
    get_logger("veilbill.test").warning("shown")
    assert [r["event"] for r in json_lines(stream.getvalue())] == ["shown"]


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging(level="chatty", stream=io.StringIO())


def test_log_file_is_private_and_redacted(tmp_path: Path) -> None:
    path = tmp_path / "veilbill.log"
    configure_logging(log_path=str(path))
    get_logger("veilbill.test").info("stored", phone="+33 6 12 34 56 78", note=CARD)
    for handler in logging.getLogger().handlers:
        handler.flush()
    output = path.read_text(encoding="utf-8")
    assert_no_secret(output)
    (record,) = json_lines(output)
    assert record["phone"] == "[REDACTED]"
    assert record["note"] == "[REDACTED PAN]"
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_logger_obtained_before_configuration_follows_it() -> None:
    early = get_logger("veilbill.early")
    early.info("before")  # structlog defaults; not captured here
    stream = configured_stream()
    early.info("after", email=EMAIL)
    (record,) = json_lines(stream.getvalue())
    assert record["email"] == "[REDACTED]"


# --- processors, through capture_logs -------------------------------------------------


def test_capture_logs_with_the_redacting_processors() -> None:
    processors = [
        redact_pii_keys,
        redact_card_numbers_processor,
        redact_email_addresses,
    ]
    with capture_logs(processors=processors) as logs:
        get_logger().info(
            f"refund for {EMAIL}",
            customer={
                "first_name": "Alice",
                "address": {"city": "Paris"},
                "id": "cus_1",
            },
            headers=[("Authorization", "Bearer vb_secret"), ("Accept", "json")],
            amount=4242,
            pan_as_int=int(CARD),
        )
    (entry,) = logs
    assert entry["event"] == "refund for [REDACTED EMAIL]"
    assert entry["customer"] == {
        "first_name": "[REDACTED]",
        "address": "[REDACTED]",
        "id": "cus_1",
    }
    assert entry["headers"] == [("Authorization", "[REDACTED]"), ("Accept", "json")]
    assert entry["amount"] == 4242
    assert entry["pan_as_int"] == "[REDACTED PAN]"


# --- processors, directly -------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "email",
        "Email",
        "first_name",
        "lastName",
        "Set-Cookie",
        "authorization",
        "api_key",
        "client_secret",
        "card_number",
        "CVC",
        "customer_email",
        "access_token",
        "x-api-key",
        "webhook_secret",
    ],
)
def test_pii_keys_are_redacted_at_any_depth(key: str) -> None:
    event = run(redact_pii_keys, {"event": "e", key: "v", "nested": [{"deep": {key: "v"}}]})
    assert event == {
        "event": "e",
        key: "[REDACTED]",
        "nested": [{"deep": {key: "[REDACTED]"}}],
    }


@pytest.mark.parametrize(
    "key",
    ["event", "customer_id", "invoice_id", "level", "brand", "last4", "exp_month"],
)
def test_other_keys_are_kept(key: str) -> None:
    assert run(redact_pii_keys, {key: "v"}) == {key: "v"}


def test_pii_key_set_is_normalized_and_includes_card_fields() -> None:
    assert CARD_FIELD_NAMES <= PII_LOG_KEYS
    assert {"email", "setcookie", "postalcode", "dateofbirth", "apikey"} <= PII_LOG_KEYS
    assert all(name == name.lower() and "_" not in name for name in PII_LOG_KEYS)


def test_byte_header_pairs_are_redacted() -> None:
    event = run(redact_pii_keys, {"headers": ((b"cookie", b"session=1"), (b"host", b"x"))})
    assert event["headers"] == ((b"cookie", "[REDACTED]"), (b"host", b"x"))


def test_caller_objects_are_not_mutated() -> None:
    customer = {"email": EMAIL, "tags": [CARD]}
    run(redact_pii_keys, {"customer": customer})
    run(redact_card_numbers_processor, {"customer": customer})
    assert customer == {"email": EMAIL, "tags": [CARD]}


def test_card_numbers_are_redacted_everywhere() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return f"Opaque({CARD})"

    event = run(
        redact_card_numbers_processor,
        {
            "event": f"got {CARD_SPACED}",
            CARD: "as key",
            "values": (1, 2.5, None, True, float(CARD), OTHER_CARD.encode()),
            "object": Opaque(),
        },
    )
    rendered = json.dumps(event, default=repr)
    assert_no_secret(rendered)
    assert event["event"] == "got [REDACTED PAN]"
    assert event["[REDACTED PAN]"] == "as key"
    assert event["values"][:4] == (1, 2.5, None, True)
    assert event["object"] == "Opaque([REDACTED PAN])"


def test_integers_too_long_to_print_are_left_alone() -> None:
    assert run(redact_card_numbers_processor, {"huge": 10**5000}) == {"huge": 10**5000}


def test_deeply_nested_values_are_truncated_not_leaked() -> None:
    value: Any = CARD
    for _ in range(50):
        value = [value]
    for processor in (redact_pii_keys, redact_card_numbers_processor):
        assert CARD not in json.dumps(run(processor, {"deep": value}))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"mail {EMAIL}.", "mail [REDACTED EMAIL]."),
        ("<bob+tag@sub.example.co.uk>", "<[REDACTED EMAIL]>"),
        (
            "no address @ here, a@b, user@localhost",
            "no address @ here, a@b, user@localhost",
        ),
    ],
)
def test_email_addresses_in_free_text(text: str, expected: str) -> None:
    assert run(redact_email_addresses, {"event": text}) == {"event": expected}


def test_email_redaction_is_linear() -> None:
    hostile = "a" * 200_000 + "@" + "b" * 200_000 + " " + ("x." * 100_000)
    started = time.perf_counter()
    run(redact_email_addresses, {"event": hostile})
    assert time.perf_counter() - started < 1.0
