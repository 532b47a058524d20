"""The sandbox as a child process: start, readiness, stop, configuration, and every bounded failure."""

from __future__ import annotations

import socket
import stat
import uuid
from pathlib import Path

import httpx
import pytest

from tokenization import LocalStripeSandbox, SandboxUnavailable

from ..conftest import API_KEY, free_port


def _answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_urls() -> None:
    box = LocalStripeSandbox(8420)
    assert box.api_base == "http://localhost:8420"
    assert box.js_url == "http://localhost:8420/js.stripe.com/v3/"
    assert not box.running
    with pytest.raises(ValueError, match="port"):
        LocalStripeSandbox(0)


def test_a_missing_executable_says_what_to_install(tmp_path: Path) -> None:
    box = LocalStripeSandbox(free_port(), executable=str(tmp_path / "no-such-localstripe"))
    with pytest.raises(SandboxUnavailable, match=r"install veilbill\[sandbox\]"):
        box.start()
    assert not box.running


def test_start_serve_and_stop(sandbox: LocalStripeSandbox, tmp_path: Path) -> None:
    log_path = tmp_path / "sandbox.log"
    port = free_port()

    with LocalStripeSandbox(port, log_path=log_path) as box:
        assert box.running
        assert "Stripe" in httpx.get(box.js_url, timeout=5).text
        answer = httpx.get(
            f"{box.api_base}/v1/customers", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5
        )
        assert answer.json()["data"] == []  # from scratch, whatever the other sandbox holds
        box.start()  # already running: nothing happens

    assert not box.running
    assert not _answers(port)
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
    box.stop()  # twice is fine


def test_a_taken_port_is_refused(sandbox: LocalStripeSandbox) -> None:
    with pytest.raises(SandboxUnavailable, match="in use"):
        LocalStripeSandbox(sandbox.port).start()


def test_an_executable_that_exits_is_reported(tmp_path: Path) -> None:
    script = tmp_path / "exits"
    script.write_text("#!/bin/sh\nexit 3\n")
    script.chmod(0o700)

    box = LocalStripeSandbox(free_port(), executable=str(script))
    with pytest.raises(SandboxUnavailable, match="exited with status 3"):
        box.start(timeout=5)
    assert not box.running


def test_an_executable_that_never_answers_is_stopped(tmp_path: Path) -> None:
    script = tmp_path / "silent"
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(0o700)

    box = LocalStripeSandbox(free_port(), executable=str(script))
    with pytest.raises(SandboxUnavailable, match=r"did not answer within 0\.5 s"):
        box.start(timeout=0.5)
    assert not box.running


def test_wait_until_ready_needs_a_started_sandbox() -> None:
    with pytest.raises(SandboxUnavailable, match="not started"):
        LocalStripeSandbox(free_port()).wait_until_ready(timeout=0.1)


@pytest.mark.parametrize(
    ("name", "url", "secret", "events"),
    [
        ("../config", "http://127.0.0.1:1/", "whsec_x", None),
        ("", "http://127.0.0.1:1/", "whsec_x", None),
        ("ok", "ftp://127.0.0.1/", "whsec_x", None),
        ("ok", "http://127.0.0.1:1/", "", None),
        ("ok", "http://127.0.0.1:1/", "whsec_x", []),
    ],
)
def test_register_webhook_refuses_bad_registrations(
    sandbox: LocalStripeSandbox, name: str, url: str, secret: str, events: list[str] | None
) -> None:
    with pytest.raises(ValueError, match=r"name|url|secret|events"):
        sandbox.register_webhook(name, url, secret, events)


def test_register_webhook_refuses_one_string_as_events(sandbox: LocalStripeSandbox) -> None:
    with pytest.raises(TypeError):
        sandbox.register_webhook("ok", "http://127.0.0.1:1/", "whsec_x", "customer.created")


def test_wipe_forgets_every_object(tmp_path: Path) -> None:
    with LocalStripeSandbox(free_port()) as box:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        created = httpx.post(f"{box.api_base}/v1/customers", headers=headers, timeout=5).json()["id"]

        box.wipe()

        assert (
            httpx.get(f"{box.api_base}/v1/customers/{created}", headers=headers, timeout=5).status_code == 404
        )


def test_a_stopped_sandbox_cannot_be_configured() -> None:
    box = LocalStripeSandbox(free_port())
    with pytest.raises(SandboxUnavailable, match="not answering"):
        box.wipe()
    with pytest.raises(SandboxUnavailable, match="not answering"):
        box.register_webhook(f"w{uuid.uuid4().hex[:6]}", "http://127.0.0.1:1/", "whsec_x")
