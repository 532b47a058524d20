"""Tests for billing._hsm: master keys in a PKCS#11 token, against a real SoftHSM2 token.

Every test gets a fresh token in a temporary SoftHSM2 token directory. The SoftHSM2 library reads
its configuration (``SOFTHSM2_CONF``) and its token list when it is initialized, so the module
points ``SOFTHSM2_CONF`` at its own configuration once and re-initializes the library after each
new token (no other code in the test process uses PKCS#11). Without SoftHSM2 or python-pkcs11
these tests are skipped — or fail under ``VEILBILL_REQUIRE_ALL=1``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from faker import Faker
from sqlmodel import col, select

from billing import (
    Actor,
    Billing,
    CustomerInput,
    Database,
    HsmMigrationMasterKeys,
    Keyring,
    KeyringFileMasterKeys,
    Pkcs11Config,
    Pkcs11MasterKeys,
    RotationProgress,
    load_keyring,
    migrate_to_hsm,
)
from billing._envelope import DataKey, sealed_key_id
from billing._hsm import pkcs11_library
from billing._keyring import MasterKey, unwrap_data_key, wrap_data_key
from billing._models import DataKeyRecord
from billing.errors import DecryptionError, KeyringError

from ..conftest import FIXED_NOW, PIN, SoftHsm

if TYPE_CHECKING:
    from pkcs11 import Session

DEK = DataKey("dek_hsm", bytes(range(32)))
OPAQUE = str(DecryptionError())


@pytest.fixture
def config(softhsm: SoftHsm) -> Pkcs11Config:
    return softhsm.new_token()


@pytest.fixture
def hsm(config: Pkcs11Config) -> Iterator[Pkcs11MasterKeys]:
    provider = Pkcs11MasterKeys(config)
    provider.add_version(now=FIXED_NOW)
    yield provider
    provider.close()


def token_session(config: Pkcs11Config) -> Session:
    """A session of the test's own on the token (logged in already if a provider did it)."""
    from pkcs11.exceptions import UserAlreadyLoggedIn

    token = pkcs11_library(config.module_path).get_token(token_label=config.token_label)
    try:
        return token.open(rw=True, user_pin=config.user_pin)
    except UserAlreadyLoggedIn:
        return token.open(rw=True)


def test_wrap_and_unwrap_round_trip_in_the_token(hsm: Pkcs11MasterKeys) -> None:
    wrapped = hsm.wrap(DEK, tenant_id="tn_1", purpose="profile")
    assert sealed_key_id(wrapped) == "mk_0001" == hsm.active_key_id
    assert len(wrapped) == 2 + len("mk_0001") + 12 + 32 + 16  # the envelope layout, nothing else
    assert hsm.unwrap(wrapped, tenant_id="tn_1", purpose="profile", dek_id=DEK.key_id) == DEK
    assert hsm.wrap(DEK, tenant_id="tn_1", purpose="profile") != wrapped, "fresh nonce per wrap"
    assert [(v.key_id, v.created_at) for v in hsm.versions()] == [("mk_0001", FIXED_NOW)]


def test_every_bad_blob_or_context_fails_with_the_one_opaque_error(hsm: Pkcs11MasterKeys) -> None:
    wrapped = hsm.wrap(DEK, tenant_id="tn_1", purpose="profile")
    flipped = bytearray(wrapped)
    flipped[-1] ^= 1
    relabelled = b"\x01\x07mk_0002" + wrapped[9:]
    cases = [
        (bytes(flipped), "tn_1", "profile", DEK.key_id),  # tampered tag
        (wrapped[:-1], "tn_1", "profile", DEK.key_id),  # truncated
        (relabelled, "tn_1", "profile", DEK.key_id),  # names a version the token lacks
        (wrapped, "tn_2", "profile", DEK.key_id),  # wrong tenant
        (wrapped, "tn_1", "record", DEK.key_id),  # wrong purpose
        (wrapped, "tn_1", "profile", "dek_other"),  # moved to another key's row
        (b"", "tn_1", "profile", DEK.key_id),
    ]
    for blob, tenant, purpose, dek_id in cases:
        with pytest.raises(DecryptionError) as failure:
            hsm.unwrap(blob, tenant_id=tenant, purpose=purpose, dek_id=dek_id)
        assert str(failure.value) == OPAQUE
        assert failure.value.__cause__ is None and failure.value.__context__ is None


def test_master_keys_are_generated_non_extractable(hsm: Pkcs11MasterKeys, config: Pkcs11Config) -> None:
    from pkcs11 import Attribute, ObjectClass
    from pkcs11.exceptions import AttributeSensitive

    with token_session(config) as session:
        key = session.get_key(object_class=ObjectClass.SECRET_KEY, label="mk_0001")
        assert key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.SENSITIVE] is True
        assert key[Attribute.NEVER_EXTRACTABLE] is True
        with pytest.raises(AttributeSensitive):
            _ = key[Attribute.VALUE]


def test_the_format_is_the_software_envelope_byte_for_byte(softhsm: SoftHsm) -> None:
    """With a known (imported, test-only) key, token and software open each other's blobs."""
    from pkcs11 import Attribute, KeyType, ObjectClass

    config = softhsm.new_token()
    material = secrets.token_bytes(32)
    with token_session(config) as session:
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.AES,
                Attribute.VALUE: material,
                Attribute.LABEL: "mk_0001",
                Attribute.TOKEN: True,
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
            }
        )
    software = MasterKey("mk_0001", FIXED_NOW, material)
    hsm = Pkcs11MasterKeys(config)
    try:
        by_token = hsm.wrap(DEK, tenant_id="tn_1", purpose="record")
        opened = unwrap_data_key(software, by_token, tenant_id="tn_1", purpose="record", dek_id=DEK.key_id)
        assert opened == DEK
        by_software = wrap_data_key(software, DEK, tenant_id="tn_1", purpose="record")
        assert hsm.unwrap(by_software, tenant_id="tn_1", purpose="record", dek_id=DEK.key_id) == DEK
        assert hsm.versions()[0].created_at is None  # made by another tool: no creation time
    finally:
        hsm.close()


def test_versions_are_added_and_removed_in_the_token(hsm: Pkcs11MasterKeys, config: Pkcs11Config) -> None:
    old = hsm.wrap(DEK, tenant_id="tn_1", purpose="profile")
    assert hsm.add_version(now=FIXED_NOW) == "mk_0002"
    other_process = Pkcs11MasterKeys(config)  # its own session sees the new key
    try:
        assert other_process.active_key_id == "mk_0002"
        new = other_process.wrap(DEK, tenant_id="tn_1", purpose="profile")
        assert sealed_key_id(new) == "mk_0002"
        assert hsm.unwrap(new, tenant_id="tn_1", purpose="profile", dek_id=DEK.key_id) == DEK
        with pytest.raises(ValueError, match="active"):
            hsm.remove_version("mk_0002")
        hsm.remove_version("mk_0001")
        with pytest.raises(ValueError, match="no master key"):
            hsm.remove_version("mk_0001")
        for provider in (hsm, other_process):
            with pytest.raises(DecryptionError):
                provider.unwrap(old, tenant_id="tn_1", purpose="profile", dek_id=DEK.key_id)
        assert hsm.add_version(now=FIXED_NOW) == "mk_0003", "numbers are never reused"
    finally:
        other_process.close()


def test_versions_added_and_destroyed_by_another_process_are_seen_at_once(
    hsm: Pkcs11MasterKeys, config: Pkcs11Config
) -> None:
    wrapped = hsm.wrap(DEK, tenant_id="tn_1", purpose="profile")
    other_process = (
        "import os, sys; from datetime import UTC, datetime; "
        "from billing import Pkcs11Config, Pkcs11MasterKeys; "
        "keys = Pkcs11MasterKeys(Pkcs11Config(sys.argv[1], sys.argv[2], os.environ['TEST_PIN'])); "
        "print(keys.add_version(now=datetime.now(UTC))); keys.remove_version('mk_0001')"
    )
    result = subprocess.run(
        [sys.executable, "-c", other_process, config.module_path, config.token_label],
        env={**os.environ, "TEST_PIN": PIN},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.strip() == "mk_0002", result.stderr
    assert hsm.active_key_id == "mk_0002"
    with pytest.raises(DecryptionError):  # destroyed in the token: gone for this process too
        hsm.unwrap(wrapped, tenant_id="tn_1", purpose="profile", dek_id=DEK.key_id)


def test_an_unusable_token_is_a_keyring_error_that_never_shows_the_pin(
    softhsm: SoftHsm, config: Pkcs11Config
) -> None:
    wrong_pin = Pkcs11Config(
        module_path=config.module_path, token_label=config.token_label, user_pin="0000-x"
    )
    missing = Pkcs11Config(module_path=config.module_path, token_label="no-such-token", user_pin=PIN)
    no_module = Pkcs11Config(module_path="/nonexistent/libpkcs11.so", token_label="x", user_pin=PIN)
    empty = Pkcs11MasterKeys(config)  # a token without master keys
    for provider, message in (
        (Pkcs11MasterKeys(wrong_pin), "cannot log in"),
        (Pkcs11MasterKeys(missing), "cannot find"),
        (Pkcs11MasterKeys(no_module), "cannot load"),
        (empty, "holds no master key"),
    ):
        with pytest.raises(KeyringError, match=message) as failure:
            provider.wrap(DEK, tenant_id="tn_1", purpose="profile")
        assert PIN not in str(failure.value) and "0000-x" not in str(failure.value)
    empty.close()
    assert PIN not in repr(config) and PIN not in str(config) and PIN not in repr(empty)
    with pytest.raises(ValueError, match="token_label"):
        Pkcs11Config(module_path=config.module_path, token_label="x" * 33, user_pin=PIN)


def test_billing_on_the_hsm_creates_reads_rotates_and_retires(
    database: Database, keyring: Keyring, hsm: Pkcs11MasterKeys, fake: Faker
) -> None:
    billing = Billing(db=database, keyring=keyring, key_provider=hsm, clock=lambda: FIXED_NOW)
    issued = billing.tenants.create_tenant(fake.company())
    actor = Actor(tenant_id=issued.tenant_id, role="booking", key_id=issued.id)
    name, email = fake.name(), fake.email()
    customer = billing.customers.create(actor, CustomerInput(name=name, email=email))

    assert billing.customers.read(actor, customer.id).email == email
    with database.read() as session:
        records = list(session.exec(select(DataKeyRecord).where(col(DataKeyRecord.wrapped).is_not(None))))
    assert records and {record.master_key_id for record in records} == {"mk_0001"}
    software_only = Billing(db=database, keyring=keyring)  # the keyring file's keys cannot unwrap them
    with pytest.raises(DecryptionError):
        software_only.customers.read(actor, customer.id)

    report = billing.rotation.rotate_master_key(batch_size=2)
    assert (report.to_version, report.rewrapped, report.remaining) == ("mk_0002", len(records), 0)
    billing.rotation.retire_master_key("mk_0001")
    assert [v.key_id for v in hsm.versions()] == ["mk_0002"]
    assert billing.customers.read(actor, customer.id).name == name
    assert billing.rotation.key_status().versions[0].live_deks == len(records)


# --- migration from the keyring file to the token ------------------------------------------------


class Interrupted(Exception):
    """Raised by a batch callback to stop a migration the way a crash would."""


def _stop_after_first_batch(progress: RotationProgress) -> None:
    raise Interrupted


def _dek_versions(database: Database) -> dict[str, int]:
    with database.read() as session:
        rows = session.exec(
            select(DataKeyRecord.master_key_id).where(col(DataKeyRecord.wrapped).is_not(None))
        )
        versions: dict[str, int] = {}
        for key_id in rows:
            versions[key_id] = versions.get(key_id, 0) + 1
        return versions


def test_migration_to_the_hsm_rewraps_every_key_resumably_and_the_file_keys_can_be_retired(
    database: Database, keyring_path: Path, config: Pkcs11Config, fake: Faker
) -> None:
    from_file = Billing(db=database, keyring=load_keyring(keyring_path), clock=lambda: FIXED_NOW)
    issued = from_file.tenants.create_tenant(fake.company())
    actor = Actor(tenant_id=issued.tenant_id, role="booking", key_id=issued.id)
    names = {}
    for _ in range(3):
        customer = from_file.customers.create(actor, CustomerInput(name=fake.name(), email=fake.email()))
        names[customer.id] = customer.name
    from_file.rotation.rotate_master_key()  # the file now holds mk_0001 and mk_0002
    file_material = {key.key_id: key.material for key in load_keyring(keyring_path).master_keys}
    live = sum(_dek_versions(database).values())

    token = Pkcs11MasterKeys(config)
    migration = HsmMigrationMasterKeys(KeyringFileMasterKeys(keyring_path), token, clock=lambda: FIXED_NOW)
    migrating = Billing(
        db=database, keyring=load_keyring(keyring_path), key_provider=migration, clock=lambda: FIXED_NOW
    )
    with pytest.raises(Interrupted):
        migrate_to_hsm(migrating.rotation, migration, batch_size=2, on_batch=_stop_after_first_batch)
    assert [v.key_id for v in token.versions()] == ["mk_0003"], "numbered above the file's versions"
    assert _dek_versions(database) == {"mk_0003": 2, "mk_0002": live - 2}
    for customer_id, name in names.items():  # online: both stores serve while it runs
        assert migrating.customers.read(actor, customer_id).name == name

    report = migrate_to_hsm(migrating.rotation, migration, batch_size=2)
    assert (report.resumed, report.to_version, report.complete) == (True, "mk_0003", True)
    assert _dek_versions(database) == {"mk_0003": live}
    again = migrate_to_hsm(migrating.rotation, migration)
    assert (again.rewrapped, again.complete) == (0, True)
    assert [v.key_id for v in token.versions()] == ["mk_0003"], "a rerun adds no version"

    for key_id in migration.source_versions():
        migrating.rotation.retire_master_key(key_id)
    on_file = load_keyring(keyring_path)
    assert [key.key_id for key in on_file.master_keys] == ["mk_0000"]
    assert on_file.master_keys[0].material not in file_material.values()
    assert [key.key_id for key in on_file.audit_keys] == ["ak_0001"], "the audit keys stay"

    hsm_only = Billing(db=database, keyring=load_keyring(keyring_path), key_provider=Pkcs11MasterKeys(config))
    for customer_id, name in names.items():
        assert hsm_only.customers.read(actor, customer_id).name == name
    assert hsm_only.verify_audit().ok
    file_only = Billing(db=database, keyring=load_keyring(keyring_path))
    with pytest.raises(DecryptionError):
        file_only.customers.read(actor, next(iter(names)))
    token.close()


def test_migration_refuses_a_token_and_a_file_that_share_a_version_id(
    keyring_path: Path, hsm: Pkcs11MasterKeys
) -> None:
    migration = HsmMigrationMasterKeys(KeyringFileMasterKeys(keyring_path), hsm, clock=lambda: FIXED_NOW)
    with pytest.raises(KeyringError, match="mk_0001"):
        migration.versions()


def test_the_placeholder_file_key_cannot_be_retired_and_unknown_versions_are_refused(
    keyring_path: Path, config: Pkcs11Config
) -> None:
    token = Pkcs11MasterKeys(config)
    migration = HsmMigrationMasterKeys(KeyringFileMasterKeys(keyring_path), token, clock=lambda: FIXED_NOW)
    assert not migration.target_active and migration.active_key_id == "mk_0001"
    assert migration.add_version(now=FIXED_NOW) == "mk_0002"
    assert migration.target_active and migration.active_key_id == "mk_0002"
    migration.remove_version("mk_0001")
    assert [v.key_id for v in migration.versions()] == ["mk_0002"]
    for key_id in ("mk_0000", "mk_0009"):
        with pytest.raises(ValueError, match="no master key"):
            migration.remove_version(key_id)
    token.close()
