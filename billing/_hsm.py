"""Master keys in a PKCS#11 token (a hardware security module; SoftHSM2 for development and tests).

Algorithm
    AES-256-GCM computed inside the token (``CKM_AES_GCM``, 128-bit tag) under a master key that
    never leaves it: keys are generated in the token with ``CKA_EXTRACTABLE=false`` and
    ``CKA_SENSITIVE=true``, so neither this process nor anyone holding the PIN can read their value.

Format
    Byte for byte the envelope format version 1 of :mod:`billing._envelope`, as the keyring file's
    wrapping produces it::

        0x01 | len | key_id (ASCII) | nonce (12 bytes) | ciphertext || tag (16 bytes)

    The key id is the token key's label (``mk_0001`` …), so
    :func:`~billing._envelope.sealed_key_id` names the version and :meth:`Pkcs11MasterKeys.unwrap`
    needs no version argument. A blob wrapped by the token opens in software under the same key
    material and vice versa (``tests/billing/test_hsm.py`` proves it with an imported test key).

Nonce policy
    A fresh random 96-bit nonce per wrap from ``rng`` (``os.urandom``), handed to the token as the
    GCM IV. A master key wraps one DEK per subject and purpose, far below the 2**32 limit of random
    nonces.

Associated data
    ``header || FieldContext(tenant_id, "data_keys", purpose, dek_id).associated_data()``, as for
    every wrapped DEK: a blob opens only for the version, tenant, purpose and DEK id it was made for.

Key versions
    AES secret keys labelled ``mk_0001``, ``mk_0002`` …; the highest number is active.
    ``CKA_ID`` holds the creation time as ASCII ISO 8601 (PKCS#11 has no creation-time attribute,
    and SoftHSM cannot read back ``CKA_START_DATE``); a key made by other tools may lack it, and
    then its ``created_at`` is ``None``. :meth:`~Pkcs11MasterKeys.add_version` generates the next
    label as a token object (persistent before it returns); :meth:`~Pkcs11MasterKeys.remove_version`
    destroys the object.

Sessions
    The module is loaded and the token opened at first use, never at construction or import.
    One logged-in read/write session per provider, used under a lock (a PKCS#11 session is not for
    concurrent use). The library object is shared by the whole process per module path
    (:func:`pkcs11_library`): python-pkcs11 finalizes the library when one of its ``lib`` objects is
    garbage-collected, which would end every other session. A session that the token dropped is
    reopened once; a forked child opens its own.

Failures
    :meth:`~Pkcs11MasterKeys.unwrap` raises the opaque :class:`~billing.errors.DecryptionError`
    for anything about the blob: malformed, unknown version, tampered, wrong context, or the token
    refusing to decrypt it (SoftHSM reports a bad tag as ``CKR_GENERAL_ERROR``).
    :class:`~billing.errors.KeyringError` means the module, token, PIN or session is unavailable
    and says nothing about the blob. No message ever contains the PIN.

Protects against
    A copy of the database, the keyring file and even a snapshot of this process's memory yield no
    master key: unwrapping needs the token, online, with the PIN. Destroying a version in the token
    (retiring it) makes DEKs wrapped only under it unrecoverable, including from database backups.

Does not protect against
    Anyone who can use the token with the PIN (the running service can unwrap every DEK, and
    unwrapped DEKs are in its memory while it works); token backups made with the vendor's tools,
    which may keep a retired key alive — retire it there too.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Protocol, TypeVar, cast

from billing._envelope import (
    FORMAT_VERSION,
    KEY_SIZE,
    NONCE_SIZE,
    TAG_SIZE,
    DataKey,
    FieldContext,
    sealed_key_id,
)
from billing._keyring import (
    PLACEHOLDER_MASTER_ID,
    WRAPPED_KEYS_TABLE,
    KeyringFileMasterKeys,
    MasterKeyVersion,
)
from billing._rotation import (
    DEFAULT_ROTATION_BATCH_SIZE,
    KeyRotationService,
    RotationProgress,
    RotationReport,
)
from billing.errors import DecryptionError, KeyringError

if TYPE_CHECKING:
    from pkcs11 import GCMParams, Mechanism, Session
    from pkcs11._pkcs11 import lib as Pkcs11Library  # noqa: N812 - the binding's class is named lib

__all__ = ["HsmMigrationMasterKeys", "Pkcs11Config", "Pkcs11MasterKeys", "migrate_to_hsm", "pkcs11_library"]

_LABEL_PATTERN: Final = re.compile(r"mk_(\d{4,})")
_MAX_TOKEN_LABEL: Final = 32  # CK_TOKEN_INFO.label is 32 bytes
_TAG_BITS: Final = 128

_T = TypeVar("_T")

_libraries: dict[str, tuple[int, Pkcs11Library]] = {}
_libraries_lock = threading.Lock()


class _TokenAesKey(Protocol):
    """What this module uses of a python-pkcs11 AES key object (its mixins are added at run time)."""

    def encrypt(self, data: bytes, *, mechanism: Mechanism, mechanism_param: GCMParams) -> bytes: ...

    def decrypt(self, data: bytes, *, mechanism: Mechanism, mechanism_param: GCMParams) -> bytes: ...

    def destroy(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Pkcs11Config:
    """Where the master keys live: a PKCS#11 module, one token in it, and the user PIN.

    ``repr``/``str`` leave out the PIN. Nothing is loaded or opened when this is built.

    Raises:
        ValueError: a field is empty, or the token label is longer than 32 characters.
    """

    module_path: str
    token_label: str
    user_pin: str = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "module_path", str(self.module_path))
        if not self.module_path:
            raise ValueError("module_path must name the PKCS#11 module (a .so file)")
        if not self.token_label or len(self.token_label) > _MAX_TOKEN_LABEL:
            raise ValueError("token_label must be 1..32 characters")
        if not isinstance(self.user_pin, str) or not self.user_pin:
            raise ValueError("user_pin must be a non-empty string")


def pkcs11_library(module_path: str) -> Pkcs11Library:
    """This process's one python-pkcs11 library object for ``module_path``, loaded at first use.

    Raises:
        KeyringError: python-pkcs11 is not installed, or the module cannot be loaded.
    """
    with _libraries_lock:
        entry = _libraries.get(module_path)
        if entry is not None:
            pid, library = entry
            if pid != os.getpid():  # a forked child must initialize the library for itself
                library.reinitialize()
                _libraries[module_path] = (os.getpid(), library)
            return library
        try:
            import pkcs11
        except ImportError:
            raise KeyringError(
                "python-pkcs11 is not installed; install veilbill with the 'hsm' extra"
            ) from None
        try:
            library = pkcs11.lib(module_path)
        except Exception as exc:  # the binding raises RuntimeError, OSError or PKCS11Error
            problem = type(exc).__name__
        else:
            _libraries[module_path] = (os.getpid(), library)
            return library
    raise KeyringError(f"cannot load the PKCS#11 module {module_path} ({problem})")


def _session_lost_errors() -> tuple[type[Exception], ...]:
    from pkcs11 import exceptions as errors

    return (
        errors.SessionClosed,
        errors.SessionHandleInvalid,
        errors.DeviceRemoved,
        errors.DeviceError,
        errors.TokenNotPresent,
        errors.UserNotLoggedIn,
    )


def _header(key_id: str) -> bytes:
    encoded = key_id.encode("ascii")
    return bytes((FORMAT_VERSION, len(encoded))) + encoded


def _created_at(raw: bytes) -> datetime | None:
    try:
        moment = datetime.fromisoformat(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    return moment if moment.utcoffset() is not None else None


class Pkcs11MasterKeys:
    """A :class:`~billing._keyring.MasterKeyProvider` whose master keys live in a PKCS#11 token.

    See the module docstring for the format, the key labels and what it protects against.
    """

    def __init__(self, config: Pkcs11Config, *, rng: Callable[[int], bytes] = os.urandom) -> None:
        if not isinstance(config, Pkcs11Config):
            raise TypeError("config must be a Pkcs11Config")
        self._config = config
        self._rng = rng
        self._lock = threading.RLock()
        self._session: Session | None = None
        self._session_pid = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(token_label={self._config.token_label!r})"

    # --- MasterKeyProvider ----------------------------------------------------------------------

    @property
    def active_key_id(self) -> str:
        return self._run(self._active_label)

    def versions(self) -> tuple[MasterKeyVersion, ...]:
        def list_versions(session: Session) -> tuple[MasterKeyVersion, ...]:
            return tuple(MasterKeyVersion(label, created) for _, label, created in self._labels(session))

        return self._run(list_versions)

    def wrap(self, dek: DataKey, *, tenant_id: str, purpose: str) -> bytes:
        """Seal ``dek`` in the token under the active version.

        Raises:
            TypeError: ``dek`` is not a :class:`DataKey`.
            KeyringError: the token is unavailable, holds no master key, or refused to encrypt.
        """
        from pkcs11 import GCMParams, Mechanism, PKCS11Error

        if not isinstance(dek, DataKey):
            raise TypeError("dek must be a DataKey")
        context = FieldContext(tenant_id, WRAPPED_KEYS_TABLE, purpose, dek.key_id)
        nonce = self._rng(NONCE_SIZE)
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
            raise ValueError("rng must return exactly 12 bytes")

        def seal_in_token(session: Session) -> bytes:
            key_id = self._active_label(session)
            key = self._key(session, key_id)
            if key is None:
                raise KeyringError(f"master key {key_id} vanished from the PKCS#11 token", key_id=key_id)
            header = _header(key_id)
            params = GCMParams(nonce, header + context.associated_data(), _TAG_BITS)
            try:
                sealed = key.encrypt(dek.material, mechanism=Mechanism.AES_GCM, mechanism_param=params)
            except self._lost_errors():
                raise
            except PKCS11Error as exc:
                raise KeyringError(
                    f"the PKCS#11 token refused to wrap a data key ({type(exc).__name__})"
                ) from None
            return header + nonce + sealed

        return self._run(seal_in_token)

    def unwrap(self, wrapped: bytes, *, tenant_id: str, purpose: str, dek_id: str) -> DataKey:
        """Open a blob made by :meth:`wrap` (any version still in the token) in the token.

        Raises:
            ValueError: ``dek_id`` is not a valid key id (a programming error, checked first).
            DecryptionError: anything about the blob — see the module docstring.
            KeyringError: the token is unavailable.
        """
        from pkcs11 import GCMParams, Mechanism, PKCS11Error

        DataKey(dek_id, bytes(KEY_SIZE))  # validates dek_id before any decryption
        key_id = sealed_key_id(wrapped)  # DecryptionError for a malformed blob
        header_end = 2 + len(key_id)
        header = wrapped[:header_end]
        nonce = wrapped[header_end : header_end + NONCE_SIZE]
        sealed = wrapped[header_end + NONCE_SIZE :]
        if len(sealed) != KEY_SIZE + TAG_SIZE:
            raise DecryptionError from None
        associated = header + FieldContext(tenant_id, WRAPPED_KEYS_TABLE, purpose, dek_id).associated_data()

        def open_in_token(session: Session) -> bytes | None:
            key = self._key(session, key_id)
            if key is None:
                return None
            try:
                return key.decrypt(
                    sealed,
                    mechanism=Mechanism.AES_GCM,
                    mechanism_param=GCMParams(nonce, associated, _TAG_BITS),
                )
            except self._lost_errors():
                raise
            except PKCS11Error:
                return None

        material = self._run(open_in_token)
        if material is None or len(material) != KEY_SIZE:
            raise DecryptionError from None
        return DataKey(dek_id, material)

    def add_version(self, *, now: datetime, number_above: int = 0) -> str:
        """Generate the next ``mk_NNNN`` in the token (non-extractable, sensitive) and return it.

        ``NNNN`` is one more than the highest present (which is always the active one) or than
        ``number_above``, whichever is higher, so a retired number is never reused — and a key
        migrated from the keyring file never shares an id with the file's versions.

        Raises:
            KeyringError: the token is unavailable or refused to generate the key.
        """
        from pkcs11 import Attribute, KeyType, MechanismFlag, PKCS11Error

        created = now.astimezone(UTC).isoformat().replace("+00:00", "Z").encode("ascii")

        def generate(session: Session) -> str:
            numbers = [number for number, _, _ in self._labels(session)]
            key_id = f"mk_{max(*numbers, number_above, 0) + 1:04d}"
            try:
                session.generate_key(
                    KeyType.AES,
                    KEY_SIZE * 8,
                    id=created,
                    label=key_id,
                    store=True,
                    capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
                    template={
                        Attribute.EXTRACTABLE: False,
                        Attribute.SENSITIVE: True,
                        Attribute.PRIVATE: True,
                        Attribute.WRAP: False,
                        Attribute.UNWRAP: False,
                    },
                )
            except self._lost_errors():
                raise
            except PKCS11Error as exc:
                raise KeyringError(
                    f"the PKCS#11 token refused to generate a master key ({type(exc).__name__})"
                ) from None
            return key_id

        return self._run(generate)

    def remove_version(self, key_id: str) -> None:
        """Destroy master key ``key_id`` in the token.

        Raises:
            ValueError: ``key_id`` is the active version or names no master key in the token.
            KeyringError: the token is unavailable or refused to destroy the key.
        """
        from pkcs11 import PKCS11Error

        def destroy(session: Session) -> None:
            if key_id == self._active_label(session):
                raise ValueError("the active master key cannot be removed")
            key = self._key(session, key_id)
            if key is None:
                raise ValueError("no master key has this id")
            try:
                key.destroy()
            except self._lost_errors():
                raise
            except PKCS11Error as exc:
                raise KeyringError(
                    f"the PKCS#11 token refused to destroy {key_id} ({type(exc).__name__})", key_id=key_id
                ) from None

        self._run(destroy)

    def close(self) -> None:
        """Close this provider's session (the next operation opens a new one)."""
        with self._lock:
            session, self._session = self._session, None
            if session is not None and self._session_pid == os.getpid():
                with contextlib.suppress(Exception):  # the session is gone either way
                    session.close()

    # --- the token ------------------------------------------------------------------------------

    def _lost_errors(self) -> tuple[type[Exception], ...]:
        return _session_lost_errors()

    def _open(self) -> Session:
        from pkcs11 import PKCS11Error
        from pkcs11.exceptions import UserAlreadyLoggedIn

        label = self._config.token_label
        library = pkcs11_library(self._config.module_path)
        try:
            token = library.get_token(token_label=label)
        except PKCS11Error as exc:
            problem = type(exc).__name__
        else:
            try:
                try:
                    session: Session = token.open(rw=True, user_pin=self._config.user_pin)
                except UserAlreadyLoggedIn:
                    # Login is per process and token: another session of this process logged in.
                    session = token.open(rw=True)
            except PKCS11Error as exc:
                raise KeyringError(
                    f"cannot log in to the PKCS#11 token {label!r} ({type(exc).__name__})"
                ) from None
            return session
        raise KeyringError(f"cannot find the PKCS#11 token {label!r} ({problem})")

    def _run(self, operation: Callable[[Session], _T]) -> _T:
        """Run ``operation`` on the session, reopening it once if the token dropped it."""
        lost = self._lost_errors()
        problem = ""
        with self._lock:
            for attempt in (1, 2):
                session = self._session if self._session_pid == os.getpid() else None
                if session is None:
                    session = self._open()
                    self._session, self._session_pid = session, os.getpid()
                try:
                    return operation(session)
                except lost as exc:
                    self._session = None
                    if attempt == 2:
                        problem = type(exc).__name__
                        break
        raise KeyringError(f"the PKCS#11 session was lost ({problem})")

    def _labels(self, session: Session) -> list[tuple[int, str, datetime | None]]:
        """``(number, label, created_at)`` of every ``mk_NNNN`` AES key, ordered by number."""
        from pkcs11 import Attribute, KeyType, ObjectClass

        found = []
        template = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES}
        for key in session.get_objects(template):
            label = key[Attribute.LABEL]
            match = _LABEL_PATTERN.fullmatch(label) if isinstance(label, str) else None
            if match:
                found.append((int(match.group(1)), label, _created_at(key[Attribute.ID])))
        found.sort()
        return found

    def _active_label(self, session: Session) -> str:
        labels = self._labels(session)
        if not labels:
            raise KeyringError(f"the PKCS#11 token {self._config.token_label!r} holds no master key")
        return labels[-1][1]

    def _key(self, session: Session, key_id: str) -> _TokenAesKey | None:
        """The AES key labelled ``key_id``; ``None`` when there is none.

        Raises:
            KeyringError: several keys carry the label (refusing to guess which one wraps), or the
                key cannot both encrypt and decrypt.
        """
        from pkcs11 import Attribute, KeyType, ObjectClass
        from pkcs11.types import DecryptMixin, EncryptMixin

        template = {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.AES,
            Attribute.LABEL: key_id,
        }
        found = list(session.get_objects(template))
        if len(found) > 1:
            raise KeyringError(f"several keys in the PKCS#11 token are labelled {key_id}", key_id=key_id)
        if not found:
            return None
        key = found[0]
        if not (isinstance(key, EncryptMixin) and isinstance(key, DecryptMixin)):
            raise KeyringError(f"the PKCS#11 key {key_id} cannot encrypt and decrypt", key_id=key_id)
        return cast("_TokenAesKey", key)


class HsmMigrationMasterKeys:
    """A :class:`~billing._keyring.MasterKeyProvider` for moving DEKs from the keyring file's
    master keys to a PKCS#11 token (``veilbill keys migrate-to-hsm``).

    - ``versions()`` lists the file's versions, then the token's; the two must not share an id
      (:class:`~billing.errors.KeyringError` otherwise: a blob's header would not say which key it
      needs). The file's placeholder ``mk_0000`` is left out.
    - :meth:`add_version` creates the version **in the token**, numbered above every version of
      both, so ids never collide.
    - The token is *active* once it holds a version numbered above every file version; until then
      the file's active version is. ``wrap`` uses the active store; ``unwrap`` the store holding the
      version the blob's header names.
    - :meth:`remove_version` destroys a token version in the token, and a file version in the file
      (the file's active one included: :func:`~billing._keyring.retire_master_key_for_hsm`).

    Used with :class:`~billing._rotation.KeyRotationService`, which does the re-wrapping — online,
    in batches, resumably — exactly as for any rotation; see :func:`migrate_to_hsm`.
    """

    def __init__(
        self,
        source: KeyringFileMasterKeys,
        target: Pkcs11MasterKeys,
        *,
        clock: Callable[[], datetime],
    ) -> None:
        self._source = source
        self._target = target
        self._clock = clock

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self._source!r}, target={self._target!r})"

    @property
    def target_active(self) -> bool:
        """True once the token holds a version numbered above every version of the file."""
        target = [_number(v.key_id) for v in self._target.versions()]
        return bool(target) and max(target) > self._highest_source_number()

    @property
    def active_key_id(self) -> str:
        return self._target.active_key_id if self.target_active else self._source.active_key_id

    def versions(self) -> tuple[MasterKeyVersion, ...]:
        source = tuple(v for v in self._source.versions() if v.key_id != PLACEHOLDER_MASTER_ID)
        target = self._target.versions()
        shared = {v.key_id for v in source} & {v.key_id for v in target}
        if shared:
            raise KeyringError(
                f"the keyring file and the PKCS#11 token both hold {', '.join(sorted(shared))}; "
                "a blob would not say which one it needs"
            )
        return source + target

    def wrap(self, dek: DataKey, *, tenant_id: str, purpose: str) -> bytes:
        store = self._target if self.target_active else self._source
        return store.wrap(dek, tenant_id=tenant_id, purpose=purpose)

    def unwrap(self, wrapped: bytes, *, tenant_id: str, purpose: str, dek_id: str) -> DataKey:
        key_id = sealed_key_id(wrapped)  # DecryptionError for a malformed blob
        in_token = key_id in {v.key_id for v in self._target.versions()}
        store = self._target if in_token else self._source
        return store.unwrap(wrapped, tenant_id=tenant_id, purpose=purpose, dek_id=dek_id)

    def add_version(self, *, now: datetime) -> str:
        highest = max([self._highest_source_number(), *(_number(v.key_id) for v in self._target.versions())])
        return self._target.add_version(now=now, number_above=highest)

    def remove_version(self, key_id: str) -> None:
        if key_id in {v.key_id for v in self._target.versions()}:
            self._target.remove_version(key_id)
        elif key_id in {v.key_id for v in self.versions()}:
            self._source.remove_version_for_hsm(key_id, now=self._clock())
        else:
            raise ValueError("no master key has this id")

    def source_versions(self) -> tuple[str, ...]:
        """The keyring file's master versions (the placeholder ``mk_0000`` left out)."""
        return tuple(v.key_id for v in self._source.versions() if v.key_id != PLACEHOLDER_MASTER_ID)

    def _highest_source_number(self) -> int:
        return max((_number(v.key_id) for v in self._source.versions()), default=0)


def _number(key_id: str) -> int:
    match = _LABEL_PATTERN.fullmatch(key_id)
    return int(match.group(1)) if match else 0


def migrate_to_hsm(
    rotation: KeyRotationService,
    migration: HsmMigrationMasterKeys,
    *,
    batch_size: int = DEFAULT_ROTATION_BATCH_SIZE,
    on_batch: Callable[[RotationProgress], None] | None = None,
) -> RotationReport:
    """Re-wrap every live DEK under a new master version in the token, resumably.

    ``rotation`` must wrap through ``migration`` (a :class:`~billing.Billing` built with
    ``key_provider=migration``). The first run adds a version in the token and re-wraps every DEK
    under it; a run killed at any point is resumed by the next, which adds nothing. (If a rotation
    of the file's own keys was left unfinished, it is finished first.) Once complete, the file's
    master versions wrap nothing and can be retired (``rotation.retire_master_key``).

    Raises:
        KeyringError: the keyring file or the token is unavailable, or they share a version id.
    """
    if migration.target_active:
        return rotation.rotate_master_key(batch_size=batch_size, on_batch=on_batch, resume_only=True)
    report = rotation.rotate_master_key(batch_size=batch_size, on_batch=on_batch)
    if not report.complete or migration.target_active:
        return report
    # That run finished an interrupted rotation of the file's keys; now move to the token.
    return rotation.rotate_master_key(batch_size=batch_size, on_batch=on_batch)
