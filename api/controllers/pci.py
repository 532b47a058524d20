"""The PCI scope report for reviewers (auditor role): JSON, PDF, and the printable page ``/pci``.

Each call runs the card-data scan of the caller's tenant and the deployment checks, and is audited
(``pci.scan``). Findings are locations only; no response ever carries a card number. ``/pci`` is a
session page (:class:`api.pages.PageController`): auditors sign in once with their key at ``/signin``.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get
from litestar.response import Template

from api.auth import requires_role
from api.deps import ActorDep, BillingDep
from api.pages import PageController, requires_page_role
from api.pci import deployment_facts
from billing import ScopeReport, render_scope_report_pdf

__all__ = ["PciController", "PciPageController"]


class PciController(Controller):
    path = "/v1/pci"
    tags = ["pci"]
    guards = [requires_role("auditor")]

    @get(
        "/scope-report",
        sync_to_thread=True,
        summary="Card-data scope scan of this tenant, deployment checks and PCI DSS evidence (audited)",
    )
    def scope_report(
        self, request: Request[Any, Any, Any], billing: BillingDep, actor: ActorDep
    ) -> ScopeReport:
        return billing.pci.scope_report(deployment_facts(request.app), actor=actor)

    @get(
        "/scope-report.pdf",
        sync_to_thread=True,
        summary="The scope report as a PDF to file",
        media_type="application/pdf",
    )
    def scope_report_pdf(
        self, request: Request[Any, Any, Any], billing: BillingDep, actor: ActorDep
    ) -> Response[bytes]:
        report = billing.pci.scope_report(deployment_facts(request.app), actor=actor)
        name = f"pci-scope-report-{report.generated_at:%Y-%m-%d}.pdf"
        return Response(
            render_scope_report_pdf(report, now=billing.clock()),
            media_type="application/pdf",
            headers={
                "Content-Disposition": f'attachment; filename="{name}"',
                "Cache-Control": "no-store",
            },
        )


class PciPageController(PageController):
    """The printable scope report, behind an auditor's sign-in session (headers: the pages')."""

    path = "/pci"
    guards = [requires_page_role("auditor")]

    @get("/", sync_to_thread=True)
    def scope_page(self, request: Request[Any, Any, Any], billing: BillingDep, actor: ActorDep) -> Template:
        report = billing.pci.scope_report(deployment_facts(request.app), actor=actor)
        return Template(
            "pci/report.html",
            context={
                "report": report,
                "findings": report.scan.findings,
                "stats": report.scan.stats,
                "session": request.auth,
            },
        )
