"""Tests for billing._keyring: the file, its permissions and validation, rotation, DEK wrapping."""

from __future__ import annotations

import base64
import json
import os
import random
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest

from billing._envelope import DataKey, sealed_key_id
from billing._keyring import (
    AuditKey,
    Keyring,
    MasterKey,
    add_master_key,
    create_keyring,
    load_keyring,
    unwrap_data_key,
    wrap_data_key,
    write_keyring,
)
from billing.errors import DecryptionError, KeyringError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

NOW = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
OPAQUE_MESSAGE = str(DecryptionError())


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    generator = random.Random(seed)  # deterministic test randomness, never for real keys
    return generator.randbytes


@pytest.fixture
def keyring() -> Keyring:
    return create_keyring(now=NOW, rng=seeded_rng(1))


@pytest.fixture
def keyring_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "keys" / "keyring.json"


def materials_b64(keyring: Keyring) -> list[str]:
    keys = (*keyring.master_keys, *keyring.audit_keys)
    return [base64.b64encode(key.material).decode("ascii") for key in keys]


def write_document(path: Path, document: object, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    path.chmod(mode)


def valid_document() -> dict[str, Any]:
    material = base64.b64encode(bytes(range(32))).decode("ascii")
    return {
        "format": "veilbill-keyring",
        "version": 1,
        "active_master_key": "mk_0001",
        "master_keys": [{"id": "mk_0001", "created_at": "2026-11-22T06:00:00Z", "material": material}],
        "active_audit_key": "ak_0001",
        "audit_keys": [{"id": "ak_0001", "created_at": "2026-11-22T06:00:00Z", "material": material}],
    }


def assert_keyring_error(path: Path, match: str) -> KeyringError:
    with pytest.raises(KeyringError, match=match) as info:
        load_keyring(path)
    assert base64.b64encode(bytes(range(32))).decode("ascii") not in str(info.value)
    return info.value


# --- creation and the Keyring type ----------------------------------------------------------------


def test_create_keyring_has_one_active_master_and_audit_key(keyring: Keyring) -> None:
    assert keyring.active_master_id == "mk_0001"
    assert keyring.active_audit_id == "ak_0001"
    assert keyring.active_master.key_id == "mk_0001"
    assert keyring.active_audit.key_id == "ak_0001"
    assert keyring.active_master.created_at == NOW
    assert len(keyring.active_master.material) == 32
    assert keyring.active_master.material != keyring.active_audit.material


def test_create_keyring_is_deterministic_with_fixed_rng() -> None:
    assert create_keyring(now=NOW, rng=seeded_rng(7)) == create_keyring(now=NOW, rng=seeded_rng(7))


def test_repr_masks_material(keyring: Keyring) -> None:
    text = repr(keyring) + str(keyring) + repr(keyring.active_master) + str(keyring.active_audit)

    for encoded in materials_b64(keyring):
        assert encoded not in text
    assert keyring.active_master.material.hex() not in text
    assert "material=<redacted>" in repr(keyring.active_master)
    assert repr(keyring.active_master).startswith("MasterKey(key_id='mk_0001'")
    assert repr(keyring.active_audit).startswith("AuditKey(key_id='ak_0001'")


def test_lookup_of_unknown_key_ids(keyring: Keyring) -> None:
    with pytest.raises(KeyringError, match="mk_0009") as info:
        keyring.master("mk_0009")
    assert info.value.ids == {"key_id": "mk_0009"}
    with pytest.raises(KeyringError, match="ak_0009"):
        keyring.audit("ak_0009")


def test_keyring_refuses_unknown_active_id(keyring: Keyring) -> None:
    with pytest.raises(KeyringError, match="active master"):
        replace(keyring, active_master_id="mk_0002")
    with pytest.raises(KeyringError, match="active audit"):
        replace(keyring, active_audit_id="ak_0002")


def test_keyring_refuses_duplicate_ids(keyring: Keyring) -> None:
    duplicate = MasterKey("mk_0001", NOW, bytes(32))

    with pytest.raises(KeyringError, match="not unique"):
        replace(keyring, master_keys=(*keyring.master_keys, duplicate))


def test_keyring_refuses_empty_or_mistyped_key_tuples(keyring: Keyring) -> None:
    with pytest.raises(KeyringError, match="at least one"):
        replace(keyring, master_keys=())
    audit_as_master = AuditKey("mk_0001", NOW, bytes(32))
    with pytest.raises(KeyringError, match="MasterKey"):
        replace(keyring, master_keys=(audit_as_master,))  # type: ignore[arg-type]


def test_key_version_validates_material_and_time() -> None:
    with pytest.raises(ValueError, match="32 bytes") as info:
        MasterKey("mk_0001", NOW, b"\xab" * 31)
    assert "ab" not in str(info.value).replace("bytes", "")
    with pytest.raises(ValueError, match="timezone-aware"):
        MasterKey("mk_0001", datetime(2026, 11, 22, 6, 0), bytes(32))
    with pytest.raises(ValueError, match="key_id"):
        AuditKey("", NOW, bytes(32))


# --- the file -------------------------------------------------------------------------------------


def test_write_then_load_round_trips(keyring: Keyring, keyring_path: Path) -> None:
    write_keyring(keyring_path, keyring)

    assert load_keyring(keyring_path) == keyring


def test_written_file_matches_documented_format(keyring: Keyring, keyring_path: Path) -> None:
    write_keyring(keyring_path, keyring)
    document = json.loads(keyring_path.read_text(encoding="utf-8"))

    assert document["format"] == "veilbill-keyring"
    assert document["version"] == 1
    assert document["active_master_key"] == "mk_0001"
    assert document["active_audit_key"] == "ak_0001"
    entry = document["master_keys"][0]
    assert entry["id"] == "mk_0001"
    assert entry["created_at"] == "2026-11-22T06:00:00Z"
    assert base64.b64decode(entry["material"]) == keyring.active_master.material


def test_written_file_has_mode_0600(keyring: Keyring, keyring_path: Path) -> None:
    previous = os.umask(0)
    try:
        write_keyring(keyring_path, keyring)
    finally:
        os.umask(previous)

    assert stat.S_IMODE(keyring_path.stat().st_mode) == 0o600
    assert not [p for p in keyring_path.parent.iterdir() if p.name != keyring_path.name]


def test_write_creates_parent_directories(keyring: Keyring, tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "keyring.json"

    write_keyring(path, keyring)

    assert path.is_file()


def test_write_refuses_to_overwrite(keyring: Keyring, keyring_path: Path) -> None:
    write_keyring(keyring_path, keyring)
    other = create_keyring(now=NOW, rng=seeded_rng(2))

    with pytest.raises(KeyringError, match="already exists"):
        write_keyring(keyring_path, other)

    assert load_keyring(keyring_path) == keyring
    assert not [p for p in keyring_path.parent.iterdir() if p.name != keyring_path.name]


def test_write_overwrites_when_asked(keyring: Keyring, keyring_path: Path) -> None:
    write_keyring(keyring_path, keyring)
    rotated = add_master_key(keyring, now=NOW + timedelta(days=1), rng=seeded_rng(3))

    write_keyring(keyring_path, rotated, overwrite=True)

    assert load_keyring(keyring_path) == rotated
    assert stat.S_IMODE(keyring_path.stat().st_mode) == 0o600


def test_load_refuses_missing_file(tmp_path: Path) -> None:
    assert_keyring_error(tmp_path / "absent.json", "not found")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o601, 0o660, 0o700 | 0o004])
def test_load_refuses_permissions_open_to_group_or_others(
    keyring: Keyring, keyring_path: Path, mode: int
) -> None:
    write_keyring(keyring_path, keyring)
    keyring_path.chmod(mode)

    error = assert_keyring_error(keyring_path, "permissions are too open")

    assert "expected 0600" in str(error)
    for encoded in materials_b64(keyring):
        assert encoded not in str(error)


def test_load_accepts_owner_only_modes(keyring: Keyring, keyring_path: Path) -> None:
    write_keyring(keyring_path, keyring)
    keyring_path.chmod(0o400)

    assert load_keyring(keyring_path) == keyring


def test_load_refuses_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "keyring.json"
    directory.mkdir(mode=0o700)

    with pytest.raises(KeyringError):
        load_keyring(directory)


def test_load_refuses_malformed_json_without_leaking_it(keyring_path: Path) -> None:
    text = json.dumps(valid_document())[:-5]
    write_document(keyring_path, text)

    error = assert_keyring_error(keyring_path, "not valid JSON")

    assert error.__context__ is None
    assert error.__cause__ is None


def test_load_refuses_non_utf8(keyring_path: Path) -> None:
    keyring_path.parent.mkdir(parents=True)
    keyring_path.write_bytes(b"\xff\xfe{}")
    keyring_path.chmod(0o600)

    assert_keyring_error(keyring_path, "not UTF-8")


def test_load_refuses_wrong_format_tag(keyring_path: Path) -> None:
    document = valid_document()
    document["format"] = "fernet-keys"
    write_document(keyring_path, document)

    assert_keyring_error(keyring_path, "not a keyring file")


@pytest.mark.parametrize("version", [2, 0, "1", True, None])
def test_load_refuses_unsupported_version(keyring_path: Path, version: object) -> None:
    document = valid_document()
    document["version"] = version
    write_document(keyring_path, document)

    assert_keyring_error(keyring_path, "version")


def test_load_refuses_unknown_active_master_id(keyring_path: Path) -> None:
    document = valid_document()
    document["active_master_key"] = "mk_0002"
    write_document(keyring_path, document)

    assert_keyring_error(keyring_path, "active master key id names no master key")


def test_load_refuses_unknown_active_audit_id(keyring_path: Path) -> None:
    document = valid_document()
    document["active_audit_key"] = "mk_0001"
    write_document(keyring_path, document)

    assert_keyring_error(keyring_path, "active audit key id names no audit key")


def test_load_refuses_duplicate_key_ids(keyring_path: Path) -> None:
    document = valid_document()
    document["master_keys"].append(dict(document["master_keys"][0]))
    write_document(keyring_path, document)

    assert_keyring_error(keyring_path, "not unique")


def test_load_refuses_duplicate_json_fields(keyring_path: Path) -> None:
    text = json.dumps(valid_document())[:-1] + ', "active_master_key": "mk_0009"}'
    write_document(keyring_path, text)

    assert_keyring_error(keyring_path, "repeats a field")


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.pop("audit_keys"), "lacks audit_keys"),
        (lambda d: d.update(comment="hi"), "unknown fields comment"),
        (lambda d: d.update(master_keys=[]), "master_keys is not a non-empty list"),
        (lambda d: d.update(master_keys={}), "master_keys is not a non-empty list"),
        (lambda d: d["master_keys"][0].pop("material"), r"master_keys\[0\] lacks material"),
        (lambda d: d["master_keys"][0].update(id=7), r"master_keys\[0\].id is not a string"),
        (lambda d: d["master_keys"][0].update(id=""), r"master_keys\[0\].id is not 1..64"),
        (
            lambda d: d["audit_keys"][0].update(created_at="yesterday"),
            r"audit_keys\[0\].created_at",
        ),
        (
            lambda d: d["audit_keys"][0].update(created_at="2026-11-22T06:00:00"),
            r"audit_keys\[0\].created_at is not an ISO 8601 time with a UTC offset",
        ),
        (lambda d: d["master_keys"][0].update(material="!!!notbase64"), "is not valid base64"),
        (
            lambda d: d["master_keys"][0].update(material=base64.b64encode(bytes(31)).decode()),
            r"master_keys\[0\].material is not 32 bytes",
        ),
        (lambda d: d.update(active_master_key=1), "active_master_key is not a string"),
    ],
    ids=[
        "missing field",
        "unknown field",
        "empty key list",
        "key list not a list",
        "key without material",
        "non-string id",
        "empty id",
        "unparseable time",
        "naive time",
        "bad base64",
        "short material",
        "non-string active id",
    ],
)
def test_load_refuses_malformed_documents(
    keyring_path: Path, mutate: Callable[[dict[str, Any]], object], match: str
) -> None:
    document = valid_document()
    mutate(document)
    write_document(keyring_path, document)

    assert_keyring_error(keyring_path, match)


def test_load_refuses_json_that_is_not_an_object(keyring_path: Path) -> None:
    write_document(keyring_path, "[1, 2]")

    assert_keyring_error(keyring_path, "top level is not a JSON object")


def test_load_keeps_non_utc_creation_times_equal(keyring_path: Path) -> None:
    document = valid_document()
    document["master_keys"][0]["created_at"] = "2026-11-22T07:00:00+01:00"
    write_document(keyring_path, document)

    loaded = load_keyring(keyring_path)

    assert loaded.active_master.created_at == NOW
    assert loaded.active_master.created_at.utcoffset() == timedelta(hours=1)
    assert loaded.active_master.created_at.tzinfo == timezone(timedelta(hours=1))


# --- rotation -------------------------------------------------------------------------------------


def test_add_master_key_makes_new_version_active_and_keeps_old(keyring: Keyring) -> None:
    later = NOW + timedelta(days=90)
    rotated = add_master_key(keyring, now=later, rng=seeded_rng(4))

    assert rotated.active_master_id == "mk_0002"
    assert rotated.active_master.created_at == later
    assert rotated.master("mk_0001") == keyring.active_master
    assert rotated.active_master.material != keyring.active_master.material
    assert rotated.audit_keys == keyring.audit_keys
    assert keyring.active_master_id == "mk_0001"  # the original is unchanged
    assert add_master_key(rotated, now=later, rng=seeded_rng(5)).active_master_id == "mk_0003"


def test_values_wrapped_under_old_master_stay_readable_after_rotation(
    keyring: Keyring, keyring_path: Path
) -> None:
    dek = DataKey("dek_profile_1", bytes(range(32)))
    wrapped = wrap_data_key(keyring.active_master, dek, tenant_id="tn_1", purpose="profile")
    rotated = add_master_key(keyring, now=NOW + timedelta(days=1), rng=seeded_rng(6))
    write_keyring(keyring_path, rotated)
    loaded = load_keyring(keyring_path)

    master = loaded.master(sealed_key_id(wrapped))

    assert master.key_id == "mk_0001"
    assert unwrap_data_key(master, wrapped, tenant_id="tn_1", purpose="profile", dek_id=dek.key_id) == dek
    assert (
        sealed_key_id(wrap_data_key(loaded.active_master, dek, tenant_id="tn_1", purpose="profile"))
        == "mk_0002"
    )


def test_add_master_key_never_reuses_a_number(keyring: Keyring) -> None:
    gap = replace(
        keyring,
        master_keys=(MasterKey("mk_0007", NOW, bytes(32)),),
        active_master_id="mk_0007",
    )

    assert add_master_key(gap, now=NOW).active_master_id == "mk_0008"


# --- wrapping data keys ---------------------------------------------------------------------------

DEK = DataKey("dek_0001", bytes(range(100, 132)))


def test_wrap_unwrap_round_trip(keyring: Keyring) -> None:
    wrapped = wrap_data_key(keyring.active_master, DEK, tenant_id="tn_1", purpose="profile")

    unwrapped = unwrap_data_key(
        keyring.active_master, wrapped, tenant_id="tn_1", purpose="profile", dek_id="dek_0001"
    )

    assert unwrapped == DEK
    assert DEK.material not in wrapped


@pytest.mark.parametrize("dek_id", ["", "x" * 65, "dek\n1", "dék"])
def test_unwrap_refuses_a_bad_dek_id_before_decrypting(keyring: Keyring, dek_id: str) -> None:
    wrapped = wrap_data_key(keyring.active_master, DEK, tenant_id="tn_1", purpose="profile")
    with pytest.raises(ValueError, match=r"1\.\.64 printable ASCII") as raised:
        unwrap_data_key(keyring.active_master, wrapped, tenant_id="tn_1", purpose="profile", dek_id=dek_id)
    assert dek_id not in str(raised.value) or not dek_id


def test_a_master_version_makes_its_data_key_once(keyring: Keyring) -> None:
    master = keyring.active_master
    key = master.as_data_key()
    assert master.as_data_key() is key  # not a new key (and AES key schedule) per wrap or unwrap
    assert (key.key_id, key.material) == (master.key_id, master.material)
    assert replace(master) == master  # the kept key is derived, not part of the version
    assert base64.b64encode(master.material).decode() not in repr(master) and "DataKey" not in repr(master)


def test_wrap_is_deterministic_with_fixed_rng_and_random_otherwise(keyring: Keyring) -> None:
    master = keyring.active_master

    def wrap(rng: Callable[[int], bytes] = os.urandom) -> bytes:
        return wrap_data_key(master, DEK, tenant_id="tn_1", purpose="record", rng=rng)

    assert wrap(seeded_rng(9)) == wrap(seeded_rng(9))
    assert wrap() != wrap()


@pytest.mark.parametrize(
    ("tenant_id", "purpose", "dek_id"),
    [
        ("tn_2", "profile", "dek_0001"),
        ("tn_1", "record", "dek_0001"),
        ("tn_1", "profile", "dek_0002"),
    ],
    ids=["other tenant", "other purpose", "other dek id"],
)
def test_wrapped_dek_moved_elsewhere_fails_opaquely(
    keyring: Keyring, tenant_id: str, purpose: str, dek_id: str
) -> None:
    wrapped = wrap_data_key(keyring.active_master, DEK, tenant_id="tn_1", purpose="profile")

    with pytest.raises(DecryptionError) as info:
        unwrap_data_key(keyring.active_master, wrapped, tenant_id=tenant_id, purpose=purpose, dek_id=dek_id)

    assert str(info.value) == OPAQUE_MESSAGE
    assert info.value.__cause__ is None
    assert info.value.__context__ is None


def test_wrapped_deks_swapped_between_rows_fail(keyring: Keyring) -> None:
    master = keyring.active_master
    dek_a = DataKey("dek_a", bytes(range(32)))
    dek_b = DataKey("dek_b", bytes(range(1, 33)))
    wrapped_a = wrap_data_key(master, dek_a, tenant_id="tn_1", purpose="profile")
    wrapped_b = wrap_data_key(master, dek_b, tenant_id="tn_1", purpose="profile")

    with pytest.raises(DecryptionError):
        unwrap_data_key(master, wrapped_b, tenant_id="tn_1", purpose="profile", dek_id="dek_a")
    with pytest.raises(DecryptionError):
        unwrap_data_key(master, wrapped_a, tenant_id="tn_1", purpose="profile", dek_id="dek_b")


def test_unwrap_with_other_master_version_fails(keyring: Keyring) -> None:
    wrapped = wrap_data_key(keyring.active_master, DEK, tenant_id="tn_1", purpose="profile")
    rotated = add_master_key(keyring, now=NOW, rng=seeded_rng(8))

    with pytest.raises(DecryptionError):
        unwrap_data_key(
            rotated.active_master, wrapped, tenant_id="tn_1", purpose="profile", dek_id="dek_0001"
        )


def test_unwrap_of_tampered_blob_fails(keyring: Keyring) -> None:
    wrapped = bytearray(wrap_data_key(keyring.active_master, DEK, tenant_id="tn_1", purpose="profile"))
    wrapped[-1] ^= 1

    with pytest.raises(DecryptionError):
        unwrap_data_key(
            keyring.active_master,
            bytes(wrapped),
            tenant_id="tn_1",
            purpose="profile",
            dek_id="dek_0001",
        )


def test_wrap_refuses_audit_key(keyring: Keyring) -> None:
    audit_key = keyring.active_audit
    with pytest.raises(TypeError, match="MasterKey"):
        wrap_data_key(audit_key, DEK, tenant_id="tn_1", purpose="profile")  # type: ignore[arg-type]
