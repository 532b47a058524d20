"""The keyring file: versioned master keys that wrap data keys, and the audit-chain keys.

Algorithm
    Data keys (DEKs) are wrapped with the envelope format of :mod:`billing._envelope`: AES-256-GCM
    under a master key, format version 1, the master key's id in the header. Nonce policy is the
    envelope's: a fresh random 96-bit nonce per wrap.

Associated data
    A wrapped DEK is sealed for ``FieldContext(tenant_id, "data_keys", purpose, dek_id)``, so it
    unwraps only for the tenant, purpose and DEK id it was made for; a wrapped DEK copied onto
    another row raises :class:`~billing.errors.DecryptionError`.
    :func:`~billing._envelope.sealed_key_id` on a wrapped DEK names the master key version that
    wrapped it (for re-wrapping at rotation).

File format, version 1 (JSON, mode 0600)::

    {"format": "veilbill-keyring", "version": 1,
     "active_master_key": "mk_0001",
     "master_keys": [{"id": "mk_0001", "created_at": "2026-11-22T06:00:00Z",
                      "material": "<base64 of 32 bytes>"}],
     "active_audit_key": "ak_0001",
     "audit_keys": [<same shape>]}

    Unknown or duplicate fields are refused rather than ignored.

Protects against
    Other local users reading the keys (the file is created 0600 and refused if group or others have
    any permission); a crash or a concurrent first run leaving a half-written or clobbered keyring
    (writes go to a 0600 temp file in the same directory, are fsynced, then linked or replaced into
    place atomically); key material reaching logs (``repr`` masks it, error messages never contain
    it, and parse errors are raised without the exception that holds the file's text).

Master-key providers
    :class:`MasterKeyProvider` is what wraps and unwraps DEKs; callers never touch master key
    material. :class:`KeyringMasterKeys` holds a keyring in memory; :class:`KeyringFileMasterKeys`
    follows the keyring file (it re-reads the file when it was replaced, so a process picks up a
    version added or retired by ``veilbill keys rotate|retire`` without a restart);
    :class:`billing._hsm.Pkcs11MasterKeys` keeps the master keys in a PKCS#11 token. All three
    write and read the same blob format, and pick the unwrapping version from the blob's header.

Does not protect against
    Anyone who can read the file as its owner (root, the service user, a backup of the file):
    the keys are stored in clear. Use an HSM for that. Python cannot zero key material in memory.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import secrets
import stat
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

from billing._envelope import (
    KEY_SIZE,
    DataKey,
    FieldContext,
    check_key_id,
    generate_key_material,
    open_sealed,
    seal,
    sealed_key_id,
)
from billing.errors import DecryptionError, KeyringError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "AuditKey",
    "Keyring",
    "KeyringFileMasterKeys",
    "KeyringMasterKeys",
    "MasterKey",
    "MasterKeyProvider",
    "MasterKeyVersion",
    "add_master_key",
    "create_keyring",
    "load_keyring",
    "master_key_provider_of",
    "probe_master_keys",
    "remove_master_key",
    "retire_master_key_for_hsm",
    "unwrap_data_key",
    "wrap_data_key",
    "write_keyring",
]

FILE_FORMAT: Final = "veilbill-keyring"
FILE_VERSION: Final = 1
FILE_MODE: Final = 0o600
WRAPPED_KEYS_TABLE: Final = "data_keys"

_MASTER_ID_PATTERN: Final = re.compile(r"mk_(\d+)")
# The file's only master key once master keys live in an HSM: fresh, never used to wrap anything.
PLACEHOLDER_MASTER_ID: Final = "mk_0000"
_TOP_LEVEL_FIELDS: Final = frozenset(
    {"format", "version", "active_master_key", "master_keys", "active_audit_key", "audit_keys"}
)
_KEY_FIELDS: Final = frozenset({"id", "created_at", "material"})


@dataclass(frozen=True)
class _KeyVersion:
    """One version of a long-lived key. ``repr``/``str`` mask the material.

    Raises:
        TypeError: ``material`` is not ``bytes``.
        ValueError: ``key_id`` is not 1..64 printable ASCII characters, ``created_at`` is naive, or
            ``material`` is not exactly 32 bytes. Messages never contain the material.
    """

    key_id: str
    created_at: datetime
    material: bytes
    _as_data_key: DataKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # DataKey applies the key id and material rules; the message names neither value. It is
        # kept: wrapping and unwrapping under this version use it (its cipher is built once).
        object.__setattr__(self, "_as_data_key", DataKey(self.key_id, self.material))
        if not isinstance(self.created_at, datetime) or self.created_at.utcoffset() is None:
            raise ValueError("created_at must be a timezone-aware datetime")

    def as_data_key(self) -> DataKey:
        """This version as the key that seals and opens with it (``seal``, ``open_sealed``)."""
        return self._as_data_key

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(key_id={self.key_id!r}, "
            f"created_at={self.created_at.isoformat()!r}, material=<redacted>)"
        )

    __str__ = __repr__


_K = TypeVar("_K", bound=_KeyVersion)


class MasterKey(_KeyVersion):
    """A master key version: wraps data keys (see :func:`wrap_data_key`)."""


class AuditKey(_KeyVersion):
    """An audit key version: keys the HMAC chain of audit events."""


@dataclass(frozen=True)
class Keyring:
    """All key versions, and which master and audit versions are active for new work.

    Old versions stay so that values wrapped or chained under them remain readable until they
    are re-wrapped and the version is retired.

    Two fields are not part of the keys (they are left out of equality):

    - ``source``: the file :func:`load_keyring` read it from, or ``None``. A
      :class:`~billing.Billing` built on a keyring with a source wraps DEKs through a
      :class:`KeyringFileMasterKeys` that follows that file.
    - ``master_key_provider``: the provider that wraps this deployment's DEKs, attached by
      :class:`~billing.Billing` so that every service handed this keyring wraps through it (see
      :func:`master_key_provider_of`). With an HSM provider the file's own master keys are unused.

    Raises:
        KeyringError: a tuple is empty or holds the wrong key type, ids are not unique, or an
            active id names no key in its tuple.
    """

    master_keys: tuple[MasterKey, ...]
    active_master_id: str
    audit_keys: tuple[AuditKey, ...]
    active_audit_id: str
    source: Path | None = field(default=None, compare=False, kw_only=True)
    master_key_provider: MasterKeyProvider | None = field(
        default=None, compare=False, repr=False, kw_only=True
    )

    def __post_init__(self) -> None:
        _check_versions("master", self.master_keys, MasterKey, self.active_master_id)
        _check_versions("audit", self.audit_keys, AuditKey, self.active_audit_id)

    @property
    def active_master(self) -> MasterKey:
        """The master key that wraps new data keys."""
        return self.master(self.active_master_id)

    def with_master_key_provider(self, provider: MasterKeyProvider) -> Keyring:
        """This keyring with ``provider`` attached (see :func:`master_key_provider_of`)."""
        return replace(self, master_key_provider=provider)

    @property
    def active_audit(self) -> AuditKey:
        """The audit key that chains new audit events."""
        return self.audit(self.active_audit_id)

    def master(self, key_id: str) -> MasterKey:
        """Look up a master key version, e.g. the one :func:`sealed_key_id` names.

        Raises:
            KeyringError: no master key has this id.
        """
        for key in self.master_keys:
            if key.key_id == key_id:
                return key
        raise KeyringError(f"unknown master key id {key_id!r}", key_id=key_id)

    def audit(self, key_id: str) -> AuditKey:
        """Look up an audit key version.

        Raises:
            KeyringError: no audit key has this id.
        """
        for key in self.audit_keys:
            if key.key_id == key_id:
                return key
        raise KeyringError(f"unknown audit key id {key_id!r}", key_id=key_id)


def _check_versions(kind: str, keys: object, key_type: type[_KeyVersion], active_id: object) -> None:
    if not isinstance(keys, tuple) or not keys:
        raise KeyringError(f"the keyring needs at least one {kind} key, as a tuple")
    if not all(type(key) is key_type for key in keys):
        raise KeyringError(f"{kind} keys must all be {key_type.__name__} instances")
    ids = [key.key_id for key in keys]
    if len(set(ids)) != len(ids):
        raise KeyringError(f"{kind} key ids are not unique")
    if active_id not in ids:
        raise KeyringError(f"the active {kind} key id names no {kind} key in the keyring")


def create_keyring(*, now: datetime, rng: Callable[[int], bytes] = os.urandom) -> Keyring:
    """Create a keyring with master key ``mk_0001`` and audit key ``ak_0001``, both active."""
    master = MasterKey("mk_0001", now, generate_key_material(rng))
    audit = AuditKey("ak_0001", now, generate_key_material(rng))
    return Keyring((master,), master.key_id, (audit,), audit.key_id)


def add_master_key(keyring: Keyring, *, now: datetime, rng: Callable[[int], bytes] = os.urandom) -> Keyring:
    """Return ``keyring`` plus a new master key ``mk_000N``, made active; old versions are kept.

    ``N`` is one more than the highest numbered ``mk_`` id, so a retired number is never reused.
    """
    numbers = (
        int(match.group(1))
        for key in keyring.master_keys
        if (match := _MASTER_ID_PATTERN.fullmatch(key.key_id))
    )
    key_id = f"mk_{max(numbers, default=0) + 1:04d}"
    new_key = MasterKey(key_id, now, generate_key_material(rng))
    return replace(
        keyring,
        master_keys=(*keyring.master_keys, new_key),
        active_master_id=key_id,
        master_key_provider=None,
    )


def remove_master_key(keyring: Keyring, key_id: str) -> Keyring:
    """Return ``keyring`` without master key ``key_id`` (retiring it; the caller checked that no
    live DEK needs it).

    Raises:
        ValueError: ``key_id`` is the active master key, or names no master key.
    """
    if key_id == keyring.active_master_id:
        raise ValueError("the active master key cannot be removed")
    kept = tuple(key for key in keyring.master_keys if key.key_id != key_id)
    if len(kept) == len(keyring.master_keys):
        raise ValueError("no master key has this id")
    return replace(keyring, master_keys=kept, master_key_provider=None)


def retire_master_key_for_hsm(
    keyring: Keyring, key_id: str, *, now: datetime, rng: Callable[[int], bytes] = os.urandom
) -> Keyring:
    """Return ``keyring`` without master key ``key_id`` — even the active one — once master keys
    live in an HSM (after ``veilbill keys migrate-to-hsm``; the caller checked that no live DEK
    needs it).

    The file format needs an active master key. When the active one goes, a fresh
    ``mk_0000`` takes its place: it has never wrapped anything, and nothing wraps with the file's
    master keys while the HSM is configured.

    Raises:
        ValueError: ``key_id`` is the placeholder ``mk_0000`` or names no master key.
    """
    if key_id == PLACEHOLDER_MASTER_ID:
        raise ValueError("mk_0000 is the keyring file's placeholder; there is nothing to retire")
    kept = tuple(key for key in keyring.master_keys if key.key_id != key_id)
    if len(kept) == len(keyring.master_keys):
        raise ValueError("no master key has this id")
    active = keyring.active_master_id
    if key_id == active:
        placeholder = next((key for key in kept if key.key_id == PLACEHOLDER_MASTER_ID), None)
        if placeholder is None:
            kept = (*kept, MasterKey(PLACEHOLDER_MASTER_ID, now, generate_key_material(rng)))
        active = PLACEHOLDER_MASTER_ID
    return replace(keyring, master_keys=kept, active_master_id=active, master_key_provider=None)


# --- wrapping data keys ---------------------------------------------------------------------------


def _wrapping_context(tenant_id: str, purpose: str, dek_id: str) -> FieldContext:
    return FieldContext(tenant_id, WRAPPED_KEYS_TABLE, purpose, dek_id)


def wrap_data_key(
    master: MasterKey,
    dek: DataKey,
    *,
    tenant_id: str,
    purpose: str,
    rng: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Seal ``dek``'s material under ``master``, bound to tenant, purpose and the DEK's id.

    Raises:
        TypeError: ``master`` is not a :class:`MasterKey` or ``dek`` not a :class:`DataKey`.
    """
    if not isinstance(master, MasterKey):
        raise TypeError("master must be a MasterKey")
    if not isinstance(dek, DataKey):
        raise TypeError("dek must be a DataKey")
    return seal(
        master.as_data_key(),
        dek.material,
        _wrapping_context(tenant_id, purpose, dek.key_id),
        rng=rng,
    )


def unwrap_data_key(
    master: MasterKey, wrapped: bytes, *, tenant_id: str, purpose: str, dek_id: str
) -> DataKey:
    """Recover data key ``dek_id`` that :func:`wrap_data_key` wrapped for this tenant and purpose.

    Raises:
        TypeError: ``master`` is not a :class:`MasterKey`.
        ValueError: ``dek_id`` is not a valid key id (a programming error, checked first).
        DecryptionError: wrong or other master key, tampered or truncated blob, or the blob was
            wrapped for another tenant, purpose or DEK id.
    """
    if not isinstance(master, MasterKey):
        raise TypeError("master must be a MasterKey")
    check_key_id(dek_id)  # before any decryption
    material = open_sealed(
        master.as_data_key(),
        wrapped,
        _wrapping_context(tenant_id, purpose, dek_id),
    )
    if len(material) != KEY_SIZE:
        raise DecryptionError from None
    return DataKey(dek_id, material)


# --- the file -------------------------------------------------------------------------------------


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _key_entries(keys: Iterable[_KeyVersion]) -> list[dict[str, str]]:
    return [
        {
            "id": key.key_id,
            "created_at": _timestamp(key.created_at),
            "material": base64.b64encode(key.material).decode("ascii"),
        }
        for key in keys
    ]


def _serialize(keyring: Keyring) -> bytes:
    document = {
        "format": FILE_FORMAT,
        "version": FILE_VERSION,
        "active_master_key": keyring.active_master_id,
        "master_keys": _key_entries(keyring.master_keys),
        "active_audit_key": keyring.active_audit_id,
        "audit_keys": _key_entries(keyring.audit_keys),
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # platforms that cannot open a directory; the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_keyring(path: Path, keyring: Keyring, *, overwrite: bool = False) -> None:
    """Write ``keyring`` to ``path`` atomically with mode 0600, creating parent directories (0700).

    The content goes to a temp file in the same directory (``O_CREAT | O_EXCL``, mode 0600),
    is fsynced, then moved into place: with ``os.replace`` when ``overwrite`` is true, otherwise
    with ``os.link``, which fails if ``path`` exists, so two processes creating a keyring at the
    same time cannot clobber each other's keys.

    Raises:
        KeyringError: ``path`` exists and ``overwrite`` is false, or the file cannot be written.
    """
    if not isinstance(keyring, Keyring):
        raise TypeError("keyring must be a Keyring")
    if not overwrite and os.path.lexists(path):
        raise KeyringError(f"keyring file already exists: {path}; refusing to overwrite it")
    content = _serialize(keyring)
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyringError(f"cannot create keyring directory {directory}: {exc.strerror}") from None
    temp_path = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except OSError as exc:
        raise KeyringError(f"cannot create a file in {directory}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, FILE_MODE)  # exactly 0600, whatever the umask
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(temp_path, path)
        else:
            os.link(temp_path, path)
    except FileExistsError:
        raise KeyringError(f"keyring file already exists: {path}; refusing to overwrite it") from None
    except OSError as exc:
        raise KeyringError(f"cannot write keyring file {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):  # already moved into place by os.replace
            os.unlink(temp_path)
    _fsync_directory(directory)


def load_keyring(path: Path) -> Keyring:
    """Read and validate the keyring file at ``path``.

    The permissions are checked on the opened file (no race with a rename in between).

    Raises:
        KeyringError: the file is missing or unreadable, is not a regular file, grants any
            permission to group or others, or is malformed. The message says what is wrong and
            where (e.g. ``master_keys[1].material``), never the material.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise KeyringError(f"keyring file not found: {path}") from None
    except OSError as exc:
        raise KeyringError(f"cannot open keyring file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyringError(f"keyring path is not a regular file: {path}")
        if info.st_mode & 0o077:
            raise KeyringError(
                f"keyring file permissions are too open ({stat.S_IMODE(info.st_mode):04o}); "
                f"expected 0600: {path}"
            )
        with os.fdopen(fd, "rb", closefd=False) as file:
            content = file.read()
    finally:
        os.close(fd)
    return replace(_parse_document(_decode_json(content)), source=path)


# --- master-key providers -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MasterKeyVersion:
    """One master key version as a provider lists it: its id and, when known, when it was made."""

    key_id: str
    created_at: datetime | None


class MasterKeyProvider(Protocol):
    """Wraps and unwraps data keys under versioned master keys that the caller never sees.

    Every wrapped blob is in the envelope format (see :mod:`billing._envelope`): its header names
    the master key version, so :meth:`unwrap` needs no version argument and
    :func:`~billing._envelope.sealed_key_id` tells which version a blob needs. Implementations are
    safe to share between threads.

    Errors: :meth:`unwrap` raises the opaque :class:`~billing.errors.DecryptionError` for anything
    wrong with the blob or its context (including a version the provider does not have);
    :class:`~billing.errors.KeyringError` means the key store itself is unavailable (file unreadable,
    HSM down) and says nothing about the blob.
    """

    @property
    def active_key_id(self) -> str:
        """The version :meth:`wrap` uses now."""
        ...

    def versions(self) -> tuple[MasterKeyVersion, ...]:
        """Every version this provider can unwrap with, oldest first."""
        ...

    def wrap(self, dek: DataKey, *, tenant_id: str, purpose: str) -> bytes:
        """Seal ``dek`` under the active version for ``(tenant_id, "data_keys", purpose, dek.key_id)``."""
        ...

    def unwrap(self, wrapped: bytes, *, tenant_id: str, purpose: str, dek_id: str) -> DataKey:
        """Open a blob made by :meth:`wrap` (of any version still present) for the same context."""
        ...

    def add_version(self, *, now: datetime) -> str:
        """Create a new version, persist it, make it active and return its id.

        It is durable before this returns, so no DEK can be wrapped under a version that a crash
        could lose. Callers serialize calls (:class:`~billing._rotation.KeyRotationService` holds a
        database lock).
        """
        ...

    def remove_version(self, key_id: str) -> None:
        """Destroy version ``key_id`` for good (refusing the active one with ``ValueError``)."""
        ...


def master_key_provider_of(
    keyring: Keyring, *, rng: Callable[[int], bytes] = os.urandom
) -> MasterKeyProvider:
    """The provider that wraps DEKs for services handed ``keyring``.

    The provider :class:`~billing.Billing` attached, else the keyring's own master keys in memory.
    """
    if keyring.master_key_provider is not None:
        return keyring.master_key_provider
    return KeyringMasterKeys(keyring, rng=rng)


def probe_master_keys(provider: MasterKeyProvider, *, rng: Callable[[int], bytes] = os.urandom) -> None:
    """Wrap a throwaway random DEK under the active version and unwrap it again (readiness probes).

    Nothing is stored. For an HSM this opens (or reuses) the session and runs both operations in
    the token, so it fails when the token is unreachable, locked or holds no master key.

    Raises:
        KeyringError: the master-key store is unavailable.
        DecryptionError: the round trip did not give the key back.
    """
    probe = DataKey("dek_probe", generate_key_material(rng))
    wrapped = provider.wrap(probe, tenant_id="system", purpose="probe")
    unwrapped = provider.unwrap(wrapped, tenant_id="system", purpose="probe", dek_id=probe.key_id)
    if unwrapped.material != probe.material:
        raise DecryptionError from None


class _KeyringBackedMasterKeys:
    """Wraps and unwraps with the master keys of a keyring that a subclass loads and stores."""

    def __init__(self, *, rng: Callable[[int], bytes]) -> None:
        self._rng = rng
        self._lock = threading.RLock()

    @property
    def keyring(self) -> Keyring:
        """The keyring as it is now."""
        return self._current()

    @property
    def active_key_id(self) -> str:
        return self._current().active_master_id

    def versions(self) -> tuple[MasterKeyVersion, ...]:
        return tuple(MasterKeyVersion(key.key_id, key.created_at) for key in self._current().master_keys)

    def wrap(self, dek: DataKey, *, tenant_id: str, purpose: str) -> bytes:
        master = self._current().active_master
        return wrap_data_key(master, dek, tenant_id=tenant_id, purpose=purpose, rng=self._rng)

    def unwrap(self, wrapped: bytes, *, tenant_id: str, purpose: str, dek_id: str) -> DataKey:
        key_id = sealed_key_id(wrapped)  # DecryptionError for a malformed blob
        master = next((key for key in self._current().master_keys if key.key_id == key_id), None)
        if master is None:
            raise DecryptionError from None
        return unwrap_data_key(master, wrapped, tenant_id=tenant_id, purpose=purpose, dek_id=dek_id)

    def add_version(self, *, now: datetime) -> str:
        with self._lock:
            updated = add_master_key(self._current(), now=now, rng=self._rng)
            self._store(updated)
        return updated.active_master_id

    def remove_version(self, key_id: str) -> None:
        with self._lock:
            self._store(remove_master_key(self._current(), key_id))

    def _current(self) -> Keyring:
        raise NotImplementedError

    def _store(self, keyring: Keyring) -> None:
        raise NotImplementedError


class KeyringMasterKeys(_KeyringBackedMasterKeys):
    """Master keys of a :class:`Keyring` held in memory.

    :meth:`add_version` and :meth:`remove_version` change this object only; nothing is persisted
    (use :class:`KeyringFileMasterKeys` for that).
    """

    def __init__(self, keyring: Keyring, *, rng: Callable[[int], bytes] = os.urandom) -> None:
        if not isinstance(keyring, Keyring):
            raise TypeError("keyring must be a Keyring")
        super().__init__(rng=rng)
        self._keyring = keyring

    def __repr__(self) -> str:
        return f"{type(self).__name__}(active_key_id={self._keyring.active_master_id!r})"

    def _current(self) -> Keyring:
        return self._keyring

    def _store(self, keyring: Keyring) -> None:
        self._keyring = keyring


class KeyringFileMasterKeys(_KeyringBackedMasterKeys):
    """Master keys of the keyring file at ``path``, following the file as other processes change it.

    The file is read at first use (constructing this touches nothing). Before each operation the
    file is ``stat``-ed; when it was replaced (``write_keyring`` always moves a new file into place)
    it is read again, so this process wraps under a version another process added and stops
    wrapping under a retired one. Adding and removing versions write the file atomically
    (:func:`write_keyring`) before the change is used. Reading fails closed: a keyring file that
    became unreadable or unsafe raises :class:`~billing.errors.KeyringError` on every operation.
    """

    def __init__(self, path: Path, *, rng: Callable[[int], bytes] = os.urandom) -> None:
        super().__init__(rng=rng)
        self._path = Path(path)
        # (file identity, keyring read from it), replaced as one value so threads see a matching pair
        self._cache: tuple[tuple[int, int, int, int], Keyring] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self._path)!r})"

    def _current(self) -> Keyring:
        try:
            info = os.stat(self._path)
        except OSError as exc:
            raise KeyringError(f"cannot read keyring file {self._path}: {exc.strerror}") from None
        identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        cache = self._cache
        if cache is not None and cache[0] == identity:
            return cache[1]
        with self._lock:
            cache = self._cache
            if cache is None or cache[0] != identity:
                cache = (identity, load_keyring(self._path))
                self._cache = cache
            return cache[1]

    def _store(self, keyring: Keyring) -> None:
        write_keyring(self._path, keyring, overwrite=True)
        self._cache = None  # the next operation reads the file back

    def remove_version_for_hsm(self, key_id: str, *, now: datetime) -> None:
        """Destroy version ``key_id`` in the file, the active one included (see
        :func:`retire_master_key_for_hsm`); only for a deployment whose master keys moved to an HSM.
        """
        with self._lock:
            self._store(retire_master_key_for_hsm(self._current(), key_id, now=now, rng=self._rng))


# --- parsing --------------------------------------------------------------------------------------


class _DuplicateFieldError(Exception):
    """A JSON object repeats a field name (json.loads would silently keep the last one)."""


def _object_without_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _DuplicateFieldError
    return result


def _decode_json(content: bytes) -> object:
    # The error is raised after the ``except`` blocks: a JSONDecodeError carries the whole file
    # text in ``.doc``, and must not ride along as ``__context__`` into logs.
    problem = None
    document: object = None
    try:
        document = json.loads(content.decode("utf-8"), object_pairs_hook=_object_without_duplicates)
    except UnicodeDecodeError:
        problem = "keyring file is not UTF-8"
    except _DuplicateFieldError:
        problem = "keyring file is malformed: a JSON object repeats a field"
    except (ValueError, RecursionError):
        problem = "keyring file is not valid JSON"
    if problem is not None:
        raise KeyringError(problem) from None
    return document


def _malformed(where: str, what: str) -> KeyringError:
    return KeyringError(f"keyring file is malformed: {where} {what}")


def _require_fields(value: object, fields: frozenset[str], where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _malformed(where, "is not a JSON object")
    missing = sorted(fields - value.keys())
    if missing:
        raise _malformed(where, f"lacks {', '.join(missing)}")
    unknown = sorted(value.keys() - fields)
    if unknown:
        raise _malformed(where, f"has unknown fields {', '.join(unknown)}")
    return value


def _parse_key(value: object, where: str) -> tuple[str, datetime, bytes]:
    entry = _require_fields(value, _KEY_FIELDS, where)
    key_id, created_at, material = entry["id"], entry["created_at"], entry["material"]
    if not isinstance(key_id, str):
        raise _malformed(f"{where}.id", "is not a string")
    if not isinstance(created_at, str):
        raise _malformed(f"{where}.created_at", "is not a string")
    try:
        moment: datetime | None = datetime.fromisoformat(created_at)
    except ValueError:
        moment = None
    if moment is None or moment.utcoffset() is None:
        raise _malformed(f"{where}.created_at", "is not an ISO 8601 time with a UTC offset")
    if not isinstance(material, str):
        raise _malformed(f"{where}.material", "is not a string")
    try:
        raw: bytes | None = base64.b64decode(material, validate=True)
    except (binascii.Error, ValueError):
        raw = None
    if raw is None:
        raise _malformed(f"{where}.material", "is not valid base64")
    if len(raw) != KEY_SIZE:
        raise _malformed(f"{where}.material", "is not 32 bytes")
    return key_id, moment, raw


def _parse_versions(document: dict[str, object], field: str, key_type: type[_K]) -> tuple[_K, ...]:
    entries = document[field]
    if not isinstance(entries, list) or not entries:
        raise _malformed(field, "is not a non-empty list")
    keys = []
    for index, entry in enumerate(entries):
        where = f"{field}[{index}]"
        key_id, created_at, material = _parse_key(entry, where)
        try:
            keys.append(key_type(key_id, created_at, material))
        except ValueError:
            # Our own message, which names no value; material was already checked above.
            raise _malformed(f"{where}.id", "is not 1..64 printable ASCII characters") from None
    return tuple(keys)


def _parse_document(document: object) -> Keyring:
    fields = _require_fields(document, _TOP_LEVEL_FIELDS, "the top level")
    if fields["format"] != FILE_FORMAT:
        raise KeyringError(f"not a keyring file: format is not {FILE_FORMAT!r}")
    version = fields["version"]
    if type(version) is not int or version != FILE_VERSION:
        raise KeyringError(f"unsupported keyring file version; this release reads {FILE_VERSION}")
    active_master, active_audit = fields["active_master_key"], fields["active_audit_key"]
    if not isinstance(active_master, str):
        raise _malformed("active_master_key", "is not a string")
    if not isinstance(active_audit, str):
        raise _malformed("active_audit_key", "is not a string")
    return Keyring(
        master_keys=_parse_versions(fields, "master_keys", MasterKey),
        active_master_id=active_master,
        audit_keys=_parse_versions(fields, "audit_keys", AuditKey),
        active_audit_id=active_audit,
    )
