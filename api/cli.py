"""The ``veilbill`` command: serve the API and operate it.

Every command reads its configuration from the same ``VEILBILL_*`` variables as the service, once,
through :meth:`Settings.from_env`. The group is also registered as a Litestar CLI plugin, so
``litestar --app api.app:app_from_env veilbill …`` works too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import msgspec
from litestar.plugins import CLIPluginProtocol

from anonymize import RELEASE_FORMATS, AnonymizationError, ReleaseFormat, encode_release
from api.app import (
    gateway_from_settings,
    hsm_from_settings,
    key_provider_from_settings,
    webhook_delivery_for,
)
from api.settings import Settings
from billing import (
    DEFAULT_ROTATION_BATCH_SIZE,
    REPORT_PROFILES,
    REVENUE_GROUPINGS,
    STALE_PENDING_REFUND,
    Actor,
    Billing,
    BreachInput,
    Database,
    DatabaseConfig,
    DeliveryWorker,
    DestinationPolicy,
    HsmMigrationMasterKeys,
    InvoiceQuery,
    KeyringFileMasterKeys,
    KeyStatus,
    MasterKeyProvider,
    RotationProgress,
    RotationReport,
    ScopeReport,
    SubjectPurpose,
    create_keyring,
    current_revision,
    downgrade,
    head_revision,
    inventory_markdown,
    load_keyring,
    migrate_to_hsm,
    upgrade,
    utcnow,
    write_keyring,
)
from billing.errors import BillingError, KeyringError
from tokenization import GatewayError, LocalStripeSandbox, SandboxUnavailable

__all__ = ["VeilbillCLIPlugin", "main", "veilbill"]

SANDBOX_PORT = 8420
# The sandbox accepts any key; these only have to look like test-mode keys.
SANDBOX_API_KEY = "sk_test_veilbill_sandbox"
SANDBOX_PUBLISHABLE_KEY = "pk_test_veilbill_sandbox"


class _Context:
    """What every command needs, built lazily so ``--help`` touches nothing."""

    def __init__(self) -> None:
        self.settings = Settings.from_env()

    def database(self) -> Database:
        return Database(DatabaseConfig(self.settings.database_url))

    def billing(self, key_provider: MasterKeyProvider | None = None) -> Billing:
        """The services; master keys from the settings (HSM or keyring file) unless given."""
        try:
            keyring = load_keyring(self.settings.keyring_path)
        except KeyringError as exc:
            raise click.ClickException(f"{exc.message} Run `veilbill keys init` first.") from None
        return Billing(
            db=self.database(),
            keyring=keyring,
            gateway=gateway_from_settings(self.settings),
            erasure_journal=self.settings.erasure_journal_path,
            key_provider=key_provider or key_provider_from_settings(self.settings),
            webhook_destinations=DestinationPolicy(allow_private=self.settings.webhooks_allow_private),
        )


pass_context = click.make_pass_decorator(_Context, ensure=True)


@click.group(help="Veilbill: privacy-preserving billing for booking businesses.")
def veilbill() -> None:
    pass


WORKER_START_TIMEOUT = 60
"""Seconds a worker process of ``serve --workers N`` may take to import the app and answer."""


@veilbill.command(help="Serve the HTTP API (uvicorn).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="worker processes")
@click.option(
    "--sandbox",
    "with_sandbox",
    is_flag=True,
    help=f"also start the local gateway sandbox on 127.0.0.1:{SANDBOX_PORT} and use it (development)",
)
@pass_context
def serve(ctx: _Context, host: str, port: int, workers: int, with_sandbox: bool) -> None:
    import uvicorn

    db = ctx.database()
    try:
        current = current_revision(db.engine)
    finally:
        db.dispose()
    if current != head_revision():
        raise click.ClickException("The database schema is not up to date; run `veilbill db upgrade`.")
    with contextlib.ExitStack() as stack:
        if with_sandbox:
            settings = stack.enter_context(_sandbox_for(ctx.settings, public_url=f"http://{host}:{port}"))
            # Worker processes build their settings from the environment: hand these over.
            os.environ.update(settings.as_env())
        uvicorn.run(
            "api.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=None,
            access_log=False,  # our own access log (api.middleware) leaves out query strings
            proxy_headers=False,
            # With --workers > 1 the supervisor pings each spawned worker and replaces one that
            # has not answered within this many seconds. A worker answers only once it has
            # imported the app, which took more than uvicorn's default 5 s on a busy 2-core
            # machine: the workers were then killed and respawned forever, and nothing listened.
            timeout_worker_healthcheck=WORKER_START_TIMEOUT,
        )


@veilbill.command(help="Run the local gateway sandbox (localstripe) in the foreground.")
@click.option("--port", default=SANDBOX_PORT, show_default=True, type=int)
def sandbox(port: int) -> None:
    box = LocalStripeSandbox(port)
    try:
        box.start()
    except SandboxUnavailable as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"sandbox gateway at {box.api_base} (Stripe.js stand-in at {box.js_url}); Ctrl-C stops it")
    try:
        while box.running:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        box.stop()


@contextlib.contextmanager
def _sandbox_for(settings: Settings, *, public_url: str) -> Iterator[Settings]:
    """Start the sandbox, point the gateway settings at it and register our webhook endpoint."""
    box = LocalStripeSandbox(SANDBOX_PORT)
    try:
        box.start()
    except SandboxUnavailable as error:
        raise click.ClickException(f"{error} (pip install 'veilbill[sandbox]')") from None
    try:
        secret = "whsec_" + secrets.token_urlsafe(24)
        box.register_webhook("veilbill", f"{public_url}/v1/webhooks/stripe", secret)
        click.echo(f"sandbox gateway at {box.api_base}; its events are signed and sent to {public_url}")
        yield replace(
            settings,
            stripe_api_key=SANDBOX_API_KEY,
            stripe_api_base=box.api_base,
            stripe_publishable_key=SANDBOX_PUBLISHABLE_KEY,
            stripe_webhook_secret=secret,
            public_url=public_url,
        )
    finally:
        box.stop()


@veilbill.group(help="Database schema migrations.")
def db() -> None:
    pass


@db.command("upgrade", help="Migrate the schema to the newest revision.")
@click.option("--revision", default="head", show_default=True)
@pass_context
def db_upgrade(ctx: _Context, revision: str) -> None:
    database = ctx.database()
    if ctx.settings.database_url.startswith("sqlite:///"):
        Path(ctx.settings.database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    upgrade(database.engine, revision)
    click.echo(f"schema at revision {current_revision(database.engine)}")
    database.dispose()


@db.command("downgrade", help="Migrate the schema down (base drops every table).")
@click.option("--revision", required=True)
@pass_context
def db_downgrade(ctx: _Context, revision: str) -> None:
    database = ctx.database()
    downgrade(database.engine, revision)
    click.echo(f"schema at revision {current_revision(database.engine)}")
    database.dispose()


@veilbill.group(help="Master and audit keys.")
def keys() -> None:
    pass


@keys.command("init", help="Create the keyring file (mode 0600).")
@click.option("--if-missing", is_flag=True, help="do nothing when the keyring already exists")
@pass_context
def keys_init(ctx: _Context, if_missing: bool) -> None:
    path = ctx.settings.keyring_path
    if path.exists():
        if if_missing:
            load_keyring(path)
            click.echo(f"keyring already present at {path}")
            return
        raise click.ClickException(f"a keyring already exists at {path}; refusing to overwrite it")
    keyring = create_keyring(now=utcnow())
    write_keyring(path, keyring)
    click.echo(f"keyring created at {path} (mode 0600); back it up separately from the database")
    billing = ctx.billing()
    if current_revision(billing.db.engine) == head_revision():
        with billing.db.transaction() as session:
            billing.audit.record(
                session, action="keys.initialized", detail={"master_key": keyring.active_master_id}
            )
    else:
        click.echo("(schema not migrated yet: the key creation is not in the audit chain)")
    billing.db.dispose()


@keys.command("status", help="Show key versions, ages, live data keys per version and rotation progress.")
@click.option("--json", "as_json", is_flag=True, help="print the status as JSON")
@pass_context
def keys_status(ctx: _Context, as_json: bool) -> None:
    billing = ctx.billing()
    status = billing.rotation.key_status()
    keyring = billing.keyring
    if as_json:
        click.echo(json.dumps(_key_status_document(status)))
        return
    for version in status.versions:
        active = " (active)" if version.active else ""
        created = f"created {version.created_at:%Y-%m-%d}, " if version.created_at else ""
        age = f"{version.age_days} days old, " if version.age_days is not None else ""
        click.echo(f"master {version.key_id}{active}: {created}{age}{version.live_deks} live data keys")
    for audit_key in keyring.audit_keys:
        active = " (active)" if audit_key.key_id == keyring.active_audit_id else ""
        click.echo(f"audit  {audit_key.key_id}{active}: created {audit_key.created_at:%Y-%m-%d}")
    if status.rotation_in_progress:
        done = status.live_deks - status.pending_deks
        click.echo(
            f"rotation: in progress, {done} of {status.live_deks} live data keys under "
            f"{status.active_key_id} ({status.progress:.0%}); run `veilbill keys rotate` to finish"
        )
    else:
        click.echo(f"rotation: complete, all {status.live_deks} live data keys under {status.active_key_id}")
    if status.orphaned_deks:
        click.echo(f"warning: {status.orphaned_deks} live data keys name a master key that no longer exists")


def _key_status_document(status: KeyStatus) -> dict[str, Any]:
    return {
        "active": status.active_key_id,
        "versions": [
            {
                "id": version.key_id,
                "created_at": version.created_at.isoformat() if version.created_at else None,
                "age_days": version.age_days,
                "active": version.active,
                "live_deks": version.live_deks,
            }
            for version in status.versions
        ],
        "live_deks": status.live_deks,
        "pending_deks": status.pending_deks,
        "orphaned_deks": status.orphaned_deks,
        "rotation_in_progress": status.rotation_in_progress,
        "progress": round(status.progress, 4),
    }


@keys.command(
    "rotate",
    help="Add a master key version and re-wrap every data key under it, online; resumes an "
    "interrupted rotation instead of adding another version.",
)
@click.option(
    "--batch-size", default=DEFAULT_ROTATION_BATCH_SIZE, show_default=True, type=click.IntRange(1, 10_000)
)
@click.option(
    "--pause",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 60),
    help="seconds to wait between batches, to spare a busy database",
)
@pass_context
def keys_rotate(ctx: _Context, batch_size: int, pause: float) -> None:
    billing = ctx.billing()
    try:
        report = billing.rotation.rotate_master_key(batch_size=batch_size, on_batch=_progress_printer(pause))
    except BillingError as error:
        raise click.ClickException(error.message) from None
    click.echo(json.dumps(_rotation_summary(report)))
    if not report.complete:
        click.echo("rotation incomplete: run `veilbill keys rotate` again to resume", err=True)
        sys.exit(1)


def _progress_printer(pause: float) -> Callable[[RotationProgress], None]:
    """Prints each committed batch on stderr, then waits ``pause`` seconds."""

    def progress(step: RotationProgress) -> None:
        failed = f", {step.failed} failed" if step.failed else ""
        click.echo(
            f"batch {step.batches}: {step.rewrapped} data keys re-wrapped under {step.to_version}{failed}",
            err=True,
        )
        if pause:
            time.sleep(pause)

    return progress


def _rotation_summary(report: RotationReport) -> dict[str, Any]:
    return {
        "from": list(report.from_versions),
        "to": report.to_version,
        "resumed": report.resumed,
        "rewrapped": report.rewrapped,
        "failed": report.failed,
        "remaining": report.remaining,
        "complete": report.complete,
    }


@keys.command(
    "migrate-to-hsm",
    help="Move master keys from the keyring file to the PKCS#11 token of the VEILBILL_HSM_* settings: "
    "a new version in the token re-wraps every data key, online and resumably (rerun after an "
    "interruption). --retire-file-keys then destroys the file's master keys.",
)
@click.option(
    "--batch-size", default=DEFAULT_ROTATION_BATCH_SIZE, show_default=True, type=click.IntRange(1, 10_000)
)
@click.option("--pause", default=0.0, show_default=True, type=click.FloatRange(0, 60))
@click.option(
    "--retire-file-keys",
    is_flag=True,
    help="once every data key is in the token, destroy the file's master keys "
    "(database backups taken before then become unreadable)",
)
@pass_context
def keys_migrate_to_hsm(ctx: _Context, batch_size: int, pause: float, retire_file_keys: bool) -> None:
    token = hsm_from_settings(ctx.settings)
    if token is None:
        raise click.ClickException(
            "Set VEILBILL_HSM_MODULE, VEILBILL_HSM_TOKEN_LABEL and VEILBILL_HSM_PIN to the target token."
        )
    migration = HsmMigrationMasterKeys(KeyringFileMasterKeys(ctx.settings.keyring_path), token, clock=utcnow)
    billing = ctx.billing(key_provider=migration)
    try:
        report = migrate_to_hsm(
            billing.rotation, migration, batch_size=batch_size, on_batch=_progress_printer(pause)
        )
        retired = []
        if report.complete and retire_file_keys:
            retired = [billing.rotation.retire_master_key(v).key_id for v in migration.source_versions()]
    except BillingError as error:
        raise click.ClickException(error.message) from None
    click.echo(json.dumps({**_rotation_summary(report), "file_keys_retired": retired}))
    if not report.complete:
        click.echo("migration incomplete: run `veilbill keys migrate-to-hsm` again to resume", err=True)
        sys.exit(1)


@keys.command(
    "rotate-subject",
    help="Give one client new data keys: re-encrypt their values, destroy the old keys (one transaction).",
)
@click.argument("tenant_id")
@click.argument("customer_id")
@click.option("--purpose", type=click.Choice(["profile", "record", "all"]), default="all", show_default=True)
@pass_context
def keys_rotate_subject(ctx: _Context, tenant_id: str, customer_id: str, purpose: SubjectPurpose) -> None:
    billing = ctx.billing()
    result = billing.subject_rotation.rotate_subject_keys(
        Actor.operator(tenant_id), customer_id, purpose=purpose
    )
    click.echo(
        json.dumps(
            {
                "customer_id": result.customer_id,
                "rotated": result.rotated,
                "skipped": list(result.skipped),
                "values_reencrypted": result.values,
            }
        )
    )


@keys.command(
    "retire",
    help="Destroy old master key versions (in the order given) once no live data key needs them.",
)
@click.argument("key_ids", metavar="KEY_ID...", nargs=-1, required=True)
@pass_context
def keys_retire(ctx: _Context, key_ids: tuple[str, ...]) -> None:
    rotation = ctx.billing().rotation
    for key_id in key_ids:
        try:
            report = rotation.retire_master_key(key_id)
        except BillingError as error:
            raise click.ClickException(error.message) from None
        click.echo(json.dumps({"retired": report.key_id, "retired_at": report.retired_at.isoformat()}))


@veilbill.group(help="Tenants (businesses).")
def tenants() -> None:
    pass


@tenants.command("create", help="Create a tenant and print its first admin key (shown once).")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="print {tenant_id, admin_key} as JSON")
@pass_context
def tenants_create(ctx: _Context, name: str, as_json: bool) -> None:
    issued = ctx.billing().tenants.create_tenant(name)
    if as_json:
        click.echo(json.dumps({"tenant_id": issued.tenant_id, "admin_key": issued.key}))
    else:
        click.echo(f"tenant {issued.tenant_id} created")
        click.echo(f"admin key (shown once, store it now): {issued.key}")


@veilbill.group(help="The tamper-evident audit chain.")
def audit() -> None:
    pass


@veilbill.command(
    help="Compare local payments with the gateway's and the books with themselves; exit 1 on any difference."
)
@click.option("--tenant", "tenant_id", default=None, help="only this tenant (default: every tenant)")
@click.option(
    "--stale-refund-minutes",
    type=click.IntRange(min=0),
    default=int(STALE_PENDING_REFUND.total_seconds() // 60),
    show_default=True,
    help="report refunds still pending this many minutes after they were requested",
)
@pass_context
def reconcile(ctx: _Context, tenant_id: str | None, stale_refund_minutes: int) -> None:
    report = ctx.billing().reconciler.reconcile(
        tenant_id=tenant_id, stale_refund_after=timedelta(minutes=stale_refund_minutes)
    )
    click.echo(
        json.dumps(
            {
                "clean": report.clean,
                "gateway_checked": report.gateway_checked,
                "payments_checked": report.payments_checked,
                "invoices_checked": report.invoices_checked,
                "discrepancies": [dataclasses.asdict(found) for found in report.discrepancies],
            }
        )
    )
    if not report.clean:
        sys.exit(1)


@audit.command("verify", help="Verify every chain; exit 1 and name the first broken link.")
@click.option("--tenant", "tenant_id", default=None, help="verify only this tenant's chain")
@pass_context
def audit_verify(ctx: _Context, tenant_id: str | None) -> None:
    result = ctx.billing().verify_audit(chain=tenant_id)
    broken = result.first_break
    report: dict[str, Any] = {"ok": result.ok, "chains": result.chains, "events": result.events}
    if broken:
        report["first_break"] = {
            "chain": broken.chain,
            "seq": broken.seq,
            "event_id": broken.event_id,
            "reason": broken.reason,
        }
    click.echo(json.dumps(report))
    if not result.ok:
        sys.exit(1)


@veilbill.group(help="PCI DSS scope evidence.")
def pci() -> None:
    pass


@pci.command(
    "scan",
    help="Scan every table (encrypted values opened in memory), the log file and VEILBILL_PCI_SCAN_PATHS "
    "for card numbers and card field names, and check the deployment. Prints locations, never numbers. "
    "Exit 0: clean; 1: card data found or a check failed; 2: the scan could not run or was incomplete.",
)
@click.option("--json", "as_json", is_flag=True, help="print the whole scope report as JSON")
@pass_context
def pci_scan(ctx: _Context, as_json: bool) -> None:
    from api.app import create_app
    from api.pci import deployment_facts

    billing: Billing | None = None
    try:
        app = create_app(ctx.settings, configure_logs=False)
        billing = app.state.billing
        report = billing.pci.scope_report(deployment_facts(app))
    except Exception as error:  # exit 2 for any failure; print only what cannot carry data
        detail = f"{error.code}: {error.message}" if isinstance(error, BillingError) else type(error).__name__
        click.echo(f"Error: the scan did not complete ({detail})", err=True)
        sys.exit(2)
    finally:
        if billing is not None:
            billing.db.dispose()
    if as_json:
        click.echo(msgspec.json.encode(report).decode())
    else:
        _print_scan(report)
    if report.scan.stats.errors:
        sys.exit(2)
    sys.exit(0 if report.passed else 1)


def _print_scan(report: ScopeReport) -> None:
    stats = report.scan.stats
    click.echo(
        f"Scanned {stats.rows} rows in {stats.tables} tables ({stats.values_decrypted} encrypted values "
        f"opened, {stats.unreadable} unreadable: shredded) and {stats.lines} lines in {stats.files} files."
    )
    for missing in stats.files_missing:
        click.echo(f"  not found (skipped): {missing}")
    for unreadable in stats.errors:
        click.echo(f"  could not read: {unreadable}", err=True)
    if report.scan.findings:
        click.echo(f"{len(report.scan.findings)} finding(s) of card data:")
        for finding in report.scan.findings:
            what = "card number" if finding.kind == "pan" else f"card field name {finding.field!r}"
            how = finding.detector + (", with separators" if finding.separators else "")
            click.echo(f"  {finding.location.describe()}: {what} x{finding.count} [{how}]")
    else:
        click.echo("No card data found.")
    click.echo("Configuration checks:")
    for check in report.checks:
        click.echo(f"  {check.status.upper():<4} {check.id} ({check.requirement}): {check.evidence[0]}")
        for line in check.evidence[1:]:
            click.echo(f"         {line}")


@veilbill.group(help="Personal data held: the data inventory.")
def privacy() -> None:
    pass


@privacy.command(
    "inventory", help="Every stored field: category, purpose, lawful basis, protection, retention."
)
@click.option("--markdown", is_flag=True, help="print docs/data-inventory.md")
def privacy_inventory(markdown: bool) -> None:
    if markdown:
        click.echo(inventory_markdown(), nl=False)
        return
    from api.controllers.privacy import data_inventory_document

    click.echo(msgspec.json.encode(data_inventory_document()).decode())


@veilbill.command(
    help="Anonymize any CSV: k-anonymity, l-diversity, optimal generalization; prints the guarantee."
)
@click.argument("input_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--sep", default=";", show_default=True, help="field separator of the input and the output")
@click.option(
    "--qi",
    "qi_options",
    multiple=True,
    required=True,
    help="COLUMN=HIERARCHY.csv (ARX format) or COLUMN=builtin:postcode|age|date|interval:5,10,20|flat",
)
@click.option("--sensitive", default=None, help="the sensitive column (for l-diversity)")
@click.option("--entity", default=None, help="count k in distinct values of this column (e.g. a person id)")
@click.option("--k", "k", type=int, default=5, show_default=True)
@click.option("--l", "l_value", type=int, default=None, help="distinct l-diversity on --sensitive")
@click.option("--l-kind", type=click.Choice(["distinct", "entropy"]), default="distinct", show_default=True)
@click.option(
    "--suppression", type=float, default=0.0, show_default=True, help="largest fraction of rows suppressed"
)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
def anonymize(
    input_path: Path,
    sep: str,
    qi_options: tuple[str, ...],
    sensitive: str | None,
    entity: str | None,
    k: int,
    l_value: int | None,
    l_kind: str,
    suppression: float,
    out_path: Path,
) -> None:
    import anonymize as engine

    specs = dict(engine.parse_qi_option(option) for option in qi_options)
    guarantee = engine.anonymize_csv(
        input_path,
        qi_specs=specs,
        out_path=out_path,
        sep=sep,
        sensitive=sensitive,
        k=k,
        l=l_value,
        l_kind="entropy" if l_kind == "entropy" else "distinct",
        suppression=suppression,
        entity=entity,
    )
    click.echo(json.dumps(guarantee.to_dict()))


@veilbill.group(help="Accountants' reports, exported by an operator.")
def report() -> None:
    pass


@report.command(
    "export",
    help="Write an anonymized report of a tenant's period to a file (mode 0600), plus FILE.guarantee.json "
    "for csv and jsonl; print the guarantee. Audited as the operator.",
)
@click.option("--tenant", "tenant_id", required=True)
@click.option("--dataset", type=click.Choice(["invoices", "revenue", "tax"]), required=True)
@click.option("--from", "date_from", type=click.DateTime(formats=["%Y-%m-%d"]), required=True)
@click.option("--to", "date_to", type=click.DateTime(formats=["%Y-%m-%d"]), required=True)
@click.option(
    "--format", "output_format", type=click.Choice(list(RELEASE_FORMATS)), default="csv", show_default=True
)
@click.option("--k", "k", type=click.IntRange(2, 1000), default=5, show_default=True)
@click.option("--l", "l_value", type=click.IntRange(1, 1000), default=2, show_default=True, help="invoices")
@click.option(
    "--suppression", type=click.FloatRange(0.0, 1.0), default=0.05, show_default=True, help="invoices"
)
@click.option("--profile", type=click.Choice(list(REPORT_PROFILES)), default=None, help="invoices")
@click.option(
    "--group-by",
    type=click.Choice(list(REVENUE_GROUPINGS)),
    default="month",
    show_default=True,
    help="revenue",
)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@pass_context
def report_export(
    ctx: _Context,
    tenant_id: str,
    dataset: str,
    date_from: datetime,
    date_to: datetime,
    output_format: ReleaseFormat,
    k: int,
    l_value: int,
    suppression: float,
    profile: str | None,
    group_by: str,
    out_path: Path,
) -> None:
    billing = ctx.billing()
    billing.tenants.business_details(tenant_id)  # NotFound for an unknown tenant
    actor = Actor.operator(tenant_id)
    start, end = date_from.date(), date_to.date()
    if dataset == "invoices":
        export = billing.reports.export_invoices(
            actor, start, end, k=k, l=l_value, suppression=suppression, profile=profile
        )
    elif dataset == "revenue":
        export = billing.reports.export_revenue(actor, start, end, group_by=group_by, k=k)
    else:
        export = billing.reports.export_tax(actor, start, end)
    document = json.dumps(dict(export.guarantee), sort_keys=True)
    with export:
        chunks = encode_release(
            export.chunks(),
            schema=export.schema,
            output_format=output_format,
            metadata={"veilbill.guarantee": document},
        )
        _write_private(out_path, chunks)
    if output_format != "parquet":
        _write_private(out_path.with_name(out_path.name + ".guarantee.json"), [document.encode() + b"\n"])
    click.echo(document)


def _write_private(path: Path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to ``path`` (mode 0600) through a temporary file renamed at the end, so a
    failed export leaves no partial file and an existing file never keeps wider permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@veilbill.group(help="The breach register (GDPR 72 hours, HIPAA 60 days).")
def breach() -> None:
    pass


@breach.command("open", help="Record a breach: the moment of awareness starts the deadlines.")
@click.option("--nature", required=True, help="what happened (no personal data)")
@click.option("--tenant", "tenant_id", default=None)
@click.option(
    "--aware-at", type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M%z"]), default=None
)
@click.option("--categories", default=None, help="categories of data and of data subjects")
@click.option(
    "--subjects", "approx_subjects", type=int, default=None, help="approximate number of data subjects"
)
@click.option("--records", "approx_records", type=int, default=None, help="approximate number of records")
@click.option("--consequences", default=None)
@click.option("--measures", default=None)
@click.option("--key", "suspected_key_id", default=None, help="the API key suspected")
@pass_context
def breach_open(ctx: _Context, /, **fields: Any) -> None:
    view = ctx.billing().breaches.open(BreachInput(**fields))
    click.echo(msgspec.json.encode(view).decode())


@breach.command("affected", help="The clients whose data a key read since a moment (from the audit chain).")
@click.option("--key", "key_id", required=True)
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d"]), required=True)
@pass_context
def breach_affected(ctx: _Context, key_id: str, since: datetime) -> None:
    since = since if since.tzinfo else since.replace(tzinfo=UTC)
    subjects = ctx.billing().breaches.affected(key_id, since)
    click.echo(
        json.dumps(
            {"key_id": key_id, "since": since.isoformat(), "subjects": subjects, "count": len(subjects)}
        )
    )


@breach.command("export", help="The notification fields of a breach, as JSON.")
@click.argument("breach_id")
@pass_context
def breach_export(ctx: _Context, breach_id: str) -> None:
    click.echo(msgspec.json.encode(ctx.billing().breaches.get(breach_id)).decode())


@veilbill.group(help="Retention of invoices, events and audit trails.")
def retention() -> None:
    pass


@retention.command("run", help="Enforce every tenant's retention policy (--dry-run only lists).")
@click.option("--dry-run", is_flag=True)
@click.option("--tenant", "tenant_id", default=None)
@pass_context
def retention_run(ctx: _Context, dry_run: bool, tenant_id: str | None) -> None:
    report = ctx.billing().retention.run(dry_run=dry_run, tenant_id=tenant_id)
    click.echo(msgspec.json.encode(report).decode())


@veilbill.group(help="Clients (data subjects).")
def customers() -> None:
    pass


@customers.command("erase", help="Erase a client: crypto-shred their profile, restrict their invoices.")
@click.argument("tenant_id")
@click.argument("customer_id")
@pass_context
def customers_erase(ctx: _Context, tenant_id: str, customer_id: str) -> None:
    billing = ctx.billing()
    receipt = billing.privacy.erase_customer(Actor.operator(tenant_id), customer_id)
    click.echo(msgspec.json.encode(receipt).decode())


@veilbill.group(help="The erasure journal (kept outside the database).")
def erasures() -> None:
    pass


@erasures.command("replay", help="Re-apply journaled erasures, e.g. after restoring a database backup.")
@click.option(
    "--journal", type=click.Path(path_type=Path), default=None, help="defaults to the configured journal"
)
@pass_context
def erasures_replay(ctx: _Context, journal: Path | None) -> None:
    billing = ctx.billing()
    applied = billing.privacy.replay_erasures(journal)
    click.echo(json.dumps({"reapplied": applied}))


@veilbill.group(
    invoke_without_command=True,
    help="Outbound webhooks: list deliveries (the default), or deliver them (`webhooks deliver`).",
)
@click.option("--tenant", "tenant_id", default=None, help="only this tenant's deliveries")
@click.option(
    "--status",
    type=click.Choice(["pending", "delivered", "failed", "canceled"]),
    default=None,
    help="only deliveries in this state",
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="one JSON document per line")
@click.pass_context
def webhooks(
    click_ctx: click.Context, tenant_id: str | None, status: str | None, limit: int, as_json: bool
) -> None:
    if click_ctx.invoked_subcommand is not None:
        return
    ctx = click_ctx.ensure_object(_Context)
    deliveries = ctx.billing().events.list_deliveries(tenant_id=tenant_id, status=status, limit=limit)
    for delivery in deliveries:
        if as_json:
            click.echo(msgspec.json.encode(delivery).decode())
            continue
        code = delivery.last_status_code if delivery.last_status_code is not None else "-"
        click.echo(
            f"{delivery.id}  {delivery.event_id}  {delivery.event_type:<24} {delivery.endpoint_id}  "
            f"{delivery.status:<9} attempts={delivery.attempts} last={code}/{delivery.last_error or '-'}"
        )


@webhooks.command("deliver", help="Deliver due webhooks until interrupted (--once: one pass, then exit).")
@click.option("--once", is_flag=True, help="deliver what is due now and exit")
@click.option("--poll", default=1.0, show_default=True, type=click.FloatRange(0.1, 60.0), help="seconds")
@pass_context
def webhooks_deliver(ctx: _Context, once: bool, poll: float) -> None:
    delivery = webhook_delivery_for(ctx.billing())
    try:
        if once:
            total = 0
            while sent := delivery.deliver_due():
                total += sent
            click.echo(json.dumps({"attempts": total}))
            return
        worker = DeliveryWorker(delivery, poll_interval=poll)
        with contextlib.suppress(KeyboardInterrupt):
            worker.run()
    finally:
        delivery.close()


@veilbill.command(help="Seed a demo tenant with Faker clients and invoices; print its keys.")
@click.option("--customers", default=12, show_default=True, type=int)
@click.option("--invoices", default=30, show_default=True, type=int)
@click.option("--keys-file", default="var/demo-keys.json", show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--if-empty", is_flag=True, help="only seed when no demo keys file exists; print the keys either way"
)
@click.option("--seed", default=None, type=int, help="Faker seed, for a reproducible demo")
@pass_context
def demo(
    ctx: _Context, customers: int, invoices: int, keys_file: Path, if_empty: bool, seed: int | None
) -> None:
    from api._demo import seed_demo

    if if_empty and keys_file.exists():
        keys_doc = json.loads(keys_file.read_text())
    else:
        keys_doc = seed_demo(ctx.billing(), customers=customers, invoices=invoices, seed=seed)
        keys_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(keys_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(keys_doc, handle, indent=2)
    base = ctx.settings.public_url.rstrip("/")
    click.echo(f"Demo tenant {keys_doc['tenant_id']} — keys (also in {keys_file}, mode 0600):")
    for role in ("admin", "booking", "accountant", "auditor"):
        click.echo(f"  {role:<10} {keys_doc['keys'][role]}")
    link = _demo_payment_link(ctx.billing(), keys_doc["tenant_id"], base)
    if link:
        click.echo(f"Pay page:  {link}  (an open demo invoice; the link lasts 30 minutes)")
    click.echo(f"Reports:   {base}/reports  (sign in with the accountant key)")
    click.echo(f"PCI scope: {base}/pci  (sign in with the auditor key)")
    click.echo(f"API docs:  {base}/schema/swagger")
    click.echo(f"Ready:     {base}/health/ready")
    click.echo(f'Try:       curl -H "Authorization: Bearer {keys_doc["keys"]["booking"]}" {base}/v1/invoices')


def _demo_payment_link(billing: Billing, tenant_id: str, base_url: str) -> str | None:
    """A fresh hosted-payment link for one of the demo tenant's open invoices, if any."""
    actor = Actor(tenant_id=tenant_id, role="booking")
    page = billing.invoices.list_invoices(actor, InvoiceQuery(status="open", limit=1))
    if not page.data:
        return None
    return billing.sessions.create(actor, page.data[0].id, base_url=base_url).url


class VeilbillCLIPlugin(CLIPluginProtocol):
    """Adds the ``veilbill`` group to Litestar's own CLI."""

    def on_cli_init(self, cli: click.Group) -> None:
        cli.add_command(veilbill, name="veilbill")


def main() -> None:
    # Files this process creates (SQLite database and WAL, logs, exports) are for its owner only.
    os.umask(0o077)
    try:
        veilbill.main(prog_name="veilbill", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.exceptions.Abort:
        sys.exit(1)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except (BillingError, GatewayError, AnonymizationError) as error:
        # Domain errors carry a stable code and no input or personal data: safe to print.
        message = getattr(error, "message", None) or str(error)
        code = getattr(error, "code", type(error).__name__)
        click.echo(f"Error: {code}: {message}", err=True)
        sys.exit(1)
