"""Errors raised at the boundary to the payment gateway.

None of them carries card data: only ids (gateway request id, decline code) and field paths.
"""

from __future__ import annotations

__all__ = ["CardDataRejected", "GatewayError"]


class GatewayError(Exception):
    """Root of every error raised by :mod:`tokenization`."""

    code = "gateway_error"


class CardDataRejected(GatewayError):
    """A request carried something that looks like card data; it is refused and never stored.

    ``paths`` lists where it was found (``$.notes``, ``query:q``), never the value.
    """

    code = "card_data_rejected"

    def __init__(self, paths: list[str]) -> None:
        super().__init__("The request contains card data, which this service never accepts.")
        self.paths = paths
