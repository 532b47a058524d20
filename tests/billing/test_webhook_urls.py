"""Which webhook URLs are accepted: http(s) to public hosts only, unless private hosts are allowed."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from billing import DestinationPolicy, address_allowed
from billing.errors import WebhookUrlInvalid, WebhookUrlRefused

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


def resolving_to(*addresses: str) -> DestinationPolicy:
    def resolve(host: str, port: int) -> Sequence[str]:
        return addresses

    return DestinationPolicy(resolver=resolve)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://127.1.2.3:8080/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://10.0.0.7/hook",
        "http://172.16.5.4/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data",  # cloud metadata
        "http://100.64.0.1/hook",  # carrier-grade NAT
        "http://0.0.0.0/hook",
        "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped loopback
        "http://[fd00::1]/hook",  # unique local
        "http://[fe80::1]/hook",  # link-local
        "http://224.0.0.1/hook",  # multicast
        "http://192.0.2.10/hook",  # documentation
        "http://240.0.0.1/hook",  # reserved
    ],
)
def test_non_public_addresses_are_refused(url: str) -> None:
    with pytest.raises(WebhookUrlRefused) as refused:
        DestinationPolicy().check(url)
    assert refused.value.code == "webhook_url_refused"
    assert url not in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.org/hook",
        "file:///etc/passwd",
        "gopher://example.org/",
        "https://user:pass@example.org/hook",
        "https://example.org/hook#fragment",
        "https:///hook",
        "https://example.org:99999/hook",
        "https://example.org:0/hook",
        "https://exa mple.org/hook",
        "//example.org/hook",
        "https://example.org/" + "a" * 2000,
    ],
)
def test_malformed_urls_are_invalid(url: str) -> None:
    with pytest.raises(WebhookUrlInvalid) as invalid:
        resolving_to(PUBLIC_V4).check(url)
    assert invalid.value.code == "webhook_url_invalid"


def test_a_public_host_is_accepted_and_pinned_to_the_checked_address() -> None:
    destination = resolving_to(PUBLIC_V4).check("https://hooks.example.org/veilbill?tenant=1")
    assert destination.address == PUBLIC_V4
    assert destination.connect_url == f"https://{PUBLIC_V4}:443/veilbill?tenant=1"
    assert destination.host_header == "hooks.example.org"
    v6 = resolving_to(PUBLIC_V6).check("http://hooks.example.org:8080")
    assert v6.connect_url == f"http://[{PUBLIC_V6}]:8080/" and v6.host_header == "hooks.example.org:8080"


def test_one_private_answer_among_public_ones_is_refused() -> None:
    with pytest.raises(WebhookUrlRefused):
        resolving_to(PUBLIC_V4, "10.1.2.3").check("https://hooks.example.org/")


def test_an_unresolvable_host_is_refused() -> None:
    def fail(host: str, port: int) -> Sequence[str]:
        raise OSError("no such host")

    with pytest.raises(WebhookUrlRefused):
        DestinationPolicy(resolver=fail).check("https://nowhere.invalid/")
    with pytest.raises(WebhookUrlRefused):
        resolving_to().check("https://empty.example.org/")


def test_allow_private_admits_loopback_but_never_multicast_or_unspecified() -> None:
    allowing = DestinationPolicy(allow_private=True)
    assert allowing.check("http://127.0.0.1:9/hook").address == "127.0.0.1"
    assert allowing.check("http://localhost:9/hook").address in {"127.0.0.1", "::1"}
    for url in ("http://0.0.0.0/hook", "http://224.0.0.1/hook", "http://[ff02::1]/hook"):
        with pytest.raises(WebhookUrlRefused):
            allowing.check(url)


def test_address_allowed_refuses_garbage() -> None:
    assert not address_allowed("not-an-ip", allow_private=True)
    assert address_allowed(PUBLIC_V4, allow_private=False)
    assert address_allowed(PUBLIC_V6, allow_private=False)
