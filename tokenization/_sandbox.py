"""localstripe, the sandbox gateway, as a child process: :class:`LocalStripeSandbox`.

localstripe is GPL-3.0, so Veilbill never imports it: it runs the ``localstripe`` console script
(from the ``sandbox`` extra) as a separate process and talks to it over HTTP, as it would to
Stripe. Every wait is bounded; a sandbox that does not answer is stopped and reported with
:class:`SandboxUnavailable`.

What to know about it (besides ``/work/shared/SANDBOX.md``):

- It keeps its objects in memory and rewrites ``/tmp/localstripe.pickle`` after every change,
  whichever port it serves, test card numbers included. ``--from-scratch`` (always passed here)
  only stops it from *loading* that file. Use test cards only.
- Webhook registrations live in memory and survive :meth:`LocalStripeSandbox.wipe`; registering
  a name again replaces the earlier registration.
- It ignores ``Idempotency-Key`` and ``Stripe-Version``, sends no ``Request-Id``, refuses the
  ``customer`` filter on payment-intent lists and the refund ``reason``, lets a card attached to one
  customer be attached to another, and does not cap refunds at the amount paid.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

import httpx

from tokenization.errors import SandboxUnavailable

__all__ = ["LocalStripeSandbox"]

_SCRIPT: Final = "localstripe"
_HOST: Final = "localhost"
_PROBE_KEY: Final = "sk_test_sandbox_probe"
_POLL_INTERVAL: Final = 0.05
_STOP_TIMEOUT: Final = 5.0
_REQUEST_TIMEOUT: Final = 5.0
_WEBHOOK_NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


class LocalStripeSandbox:
    """A localstripe process serving the Stripe API on ``http://localhost:<port>``.

    ``executable`` defaults to the ``localstripe`` script next to the running interpreter, else
    the one on ``PATH``. Its output goes to ``log_path`` (created 0600, appended to) or nowhere.
    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, port: int, *, executable: str | None = None, log_path: Path | None = None) -> None:
        if not 0 < port < 65536:
            raise ValueError("port must be 1-65535")
        self.port = port
        self._executable = executable
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __repr__(self) -> str:
        return f"LocalStripeSandbox(port={self.port}, running={self.running})"

    @property
    def api_base(self) -> str:
        """The URL to give the Stripe SDK instead of ``https://api.stripe.com``."""
        return f"http://{_HOST}:{self.port}"

    @property
    def js_url(self) -> str:
        """The URL of the sandbox's Stripe.js stand-in, for ``<script src>``."""
        return f"{self.api_base}/js.stripe.com/v3/"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def executable(self) -> str:
        """The path of the ``localstripe`` script that :meth:`start` runs.

        Raises:
            SandboxUnavailable: it is not installed.
        """
        if self._executable is not None:
            found = shutil.which(self._executable)
            if found is None:
                raise SandboxUnavailable(
                    f"{self._executable} is not an executable: install veilbill[sandbox]"
                )
            return found
        beside = Path(sys.executable).parent / _SCRIPT
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
        found = shutil.which(_SCRIPT)
        if found is None:
            raise SandboxUnavailable("localstripe is not installed: install veilbill[sandbox]")
        return found

    def start(self, timeout: float = 20) -> None:
        """Start the process and wait, at most ``timeout`` seconds, until it answers.

        Does nothing if it is already running.

        Raises:
            SandboxUnavailable: not installed, the port is taken, it exited, or it did not answer
                in time (it is then stopped).
        """
        if self.running:
            return
        executable = self.executable()
        if _port_answers(self.port):
            raise SandboxUnavailable(f"port {self.port} is already in use")
        self._log = self._open_log()
        try:
            self._process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
                [executable, "--port", str(self.port), "--from-scratch"],
                stdin=subprocess.DEVNULL,
                stdout=self._log if self._log is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        except OSError as error:
            self._close_log()
            raise SandboxUnavailable(f"localstripe could not be started: {error.strerror}") from None
        try:
            self.wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_until_ready(self, timeout: float = 20) -> None:
        """Wait, at most ``timeout`` seconds, until the API answers.

        Raises:
            SandboxUnavailable: it was not started, it exited, or it did not answer in time.
        """
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:
            while True:
                if self._process is None:
                    raise SandboxUnavailable("localstripe was not started")
                status = self._process.poll()
                if status is not None:
                    raise SandboxUnavailable(f"localstripe exited with status {status}")
                try:
                    response = client.get(
                        f"{self.api_base}/v1/customers",
                        params={"limit": "1"},
                        headers={"Authorization": f"Bearer {_PROBE_KEY}"},
                    )
                    if response.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() >= deadline:
                    raise SandboxUnavailable(f"localstripe did not answer within {timeout:g} s")
                time.sleep(_POLL_INTERVAL)

    def stop(self) -> None:
        """Terminate the process (kill it after 5 s) and wait for it. Safe to call twice."""
        process, self._process = self._process, None
        try:
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=_STOP_TIMEOUT)
        finally:
            self._close_log()

    def register_webhook(self, name: str, url: str, secret: str, events: Sequence[str] | None = None) -> None:
        """Have the sandbox deliver events to ``url``, signed with ``secret``.

        ``events`` limits the event types (all when ``None``). Registering ``name`` again
        replaces it.

        Raises:
            ValueError: ``name`` is not 1-64 of ``A-Za-z0-9_-``, ``url`` is not http(s), the
                secret is empty, or ``events`` is empty (pass ``None`` for all events).
            SandboxUnavailable: the sandbox did not accept it.
        """
        if not _WEBHOOK_NAME_RE.fullmatch(name):
            raise ValueError("webhook name must be 1-64 of [A-Za-z0-9_-]")
        if not url.startswith(("http://", "https://")):
            raise ValueError("webhook url must be http(s)")
        if not secret:
            raise ValueError("refusing to register a webhook without a secret")
        if isinstance(events, str):
            raise TypeError("events must be a sequence of event types, not a single string")
        fields: dict[str, str | list[str]] = {"url": url, "secret": secret}
        if events is not None:
            if not events:
                raise ValueError("events must not be empty; pass None for all events")
            fields["events[]"] = list(events)
        self._request("POST", f"/_config/webhooks/{name}", data=fields)

    def wipe(self) -> None:
        """Delete every object the sandbox holds (webhook registrations stay)."""
        self._request("DELETE", "/_config/data")

    def _request(self, method: str, path: str, *, data: dict[str, str | list[str]] | None = None) -> None:
        try:
            response = httpx.request(method, f"{self.api_base}{path}", data=data, timeout=_REQUEST_TIMEOUT)
        except httpx.HTTPError:
            raise SandboxUnavailable(f"localstripe is not answering on port {self.port}") from None
        if not response.is_success:
            raise SandboxUnavailable(f"localstripe refused {method} {path} (HTTP {response.status_code})")

    def _open_log(self) -> IO[bytes] | None:
        if self._log_path is None:
            return None
        descriptor = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(descriptor, "ab")

    def _close_log(self) -> None:
        log, self._log = self._log, None
        if log is not None:
            log.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _port_answers(port: int) -> bool:
    """Whether something already accepts connections on ``localhost:port`` (IPv4 or IPv6)."""
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.settimeout(0.5)
                if probe.connect_ex((address, port)) == 0:
                    return True
        except OSError:
            continue
    return False
