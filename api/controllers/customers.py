"""``/v1/customers``: clients of the business (booking role)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, get, patch, post
from litestar.params import FromPath, JSONBody, QueryParameter

from api.auth import requires_role
from api.deps import ActorDep, BillingDep
from api.errors import ProblemError
from billing import CustomerInput, CustomerPatch, CustomerView


class CustomerList(msgspec.Struct, kw_only=True):
    data: list[CustomerView]


class CustomerController(Controller):
    path = "/v1/customers"
    tags = ["customers"]
    guards = [requires_role("booking")]

    @post(sync_to_thread=True, summary="Create a client (PII is sealed before it is stored)")
    def create_customer(
        self, data: JSONBody[CustomerInput], billing: BillingDep, actor: ActorDep
    ) -> CustomerView:
        return billing.customers.create(actor, data)

    @get("/{customer_id:str}", sync_to_thread=True, summary="Read a client (decrypts; audited)")
    def read_customer(self, customer_id: FromPath[str], billing: BillingDep, actor: ActorDep) -> CustomerView:
        return billing.customers.read(actor, customer_id)

    @patch("/{customer_id:str}", sync_to_thread=True, summary="Rectify a client's data")
    def rectify_customer(
        self, customer_id: FromPath[str], data: JSONBody[CustomerPatch], billing: BillingDep, actor: ActorDep
    ) -> CustomerView:
        return billing.customers.rectify(actor, customer_id, data)

    @get(sync_to_thread=True, summary="Look clients up by email or external reference (blind index)")
    def find_customers(
        self,
        billing: BillingDep,
        actor: ActorDep,
        email: Annotated[str | None, QueryParameter(max_length=320)] = None,
        external_ref: Annotated[str | None, QueryParameter(max_length=100)] = None,
    ) -> CustomerList:
        if (email is None) == (external_ref is None):
            raise ProblemError(400, "invalid_query", "Give exactly one of email or external_ref.")
        if email is not None:
            return CustomerList(data=billing.customers.find_by_email(actor, email))
        assert external_ref is not None
        return CustomerList(data=billing.customers.find_by_external_ref(actor, external_ref))
