"""Field encryption against its peers: seal + open of one 300-byte value with associated data.

Contenders, each doing one encrypt and one decrypt of the same 300-byte plaintext per operation:

* ``veilbill``: :func:`billing.seal` + :func:`billing.open_sealed` (format v1, a key id header,
  associated data binding tenant, table, column and row; a fresh random nonce per value);
* ``aesgcm``: ``cryptography``'s ``AESGCM`` used raw, the cipher object built once, a random nonce
  and the same associated data — the floor that any AES-GCM wrapper pays;
* ``aesgcm-batched-nonce``: the same raw ``AESGCM``, its nonces sliced from 4 KiB ``os.urandom``
  reads as Veilbill's ``seal`` takes them — the floor once the per-value system call is gone, so
  the ratio of ``veilbill`` to it is the wrapper's own cost (format, checks, context binding);
* ``fernet``: ``cryptography``'s Fernet (AES-128-CBC + HMAC-SHA256, base64; no associated data);
* ``tink``: Google Tink's AEAD primitive (AES256_GCM key template) with the same associated data,
  when the ``tink`` package is installed (``pip install -e '.[bench]'``).

Rounds are interleaved (every contender runs once per round, in rotating order), so a noisy
neighbour slows all of them alike; the figure is the median over rounds of microseconds per
operation, and each ratio is against ``aesgcm`` measured in the same round.

Usage: ``python -m bench.crypto_bench [--rounds 15] [--ops 5000]``; prints one JSON line per
contender.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from billing import DataKey, FieldContext, open_sealed, seal

VALUE_BYTES = 300
NONCE_BATCH_BYTES = 341 * 12  # as billing's seal reads them
Operation = Callable[[], None]


def _veilbill(plaintext: bytes) -> Operation:
    key = DataKey("dek_bench_0001", os.urandom(32))
    context = _context()

    def operation() -> None:
        if open_sealed(key, seal(key, plaintext, context), context) != plaintext:
            raise AssertionError("round trip failed")

    return operation


def _associated_data() -> bytes:
    """What ``seal`` authenticates for the bench's key and context: its header, then the context."""
    return b"\x01\x0edek_bench_0001" + _context().associated_data()


def _context() -> FieldContext:
    return FieldContext("tn_benchmark", "invoices", "notes", "inv_benchmarkrowid")


def _aesgcm(plaintext: bytes) -> Operation:
    cipher = AESGCM(os.urandom(32))
    associated = _associated_data()

    def operation() -> None:
        nonce = os.urandom(12)
        if cipher.decrypt(nonce, cipher.encrypt(nonce, plaintext, associated), associated) != plaintext:
            raise AssertionError("round trip failed")

    return operation


def _aesgcm_batched_nonce(plaintext: bytes) -> Operation:
    cipher = AESGCM(os.urandom(32))
    associated = _associated_data()
    batch = b""
    offset = NONCE_BATCH_BYTES

    def operation() -> None:
        nonlocal batch, offset
        if offset >= NONCE_BATCH_BYTES:
            batch, offset = os.urandom(NONCE_BATCH_BYTES), 0
        nonce = batch[offset : offset + 12]
        offset += 12
        if cipher.decrypt(nonce, cipher.encrypt(nonce, plaintext, associated), associated) != plaintext:
            raise AssertionError("round trip failed")

    return operation


def _fernet(plaintext: bytes) -> Operation:
    fernet = Fernet(Fernet.generate_key())

    def operation() -> None:
        if fernet.decrypt(fernet.encrypt(plaintext)) != plaintext:
            raise AssertionError("round trip failed")

    return operation


def _tink(plaintext: bytes) -> Operation | None:
    try:
        import tink  # type: ignore[import-untyped]  # optional peer, only in the bench extra
        from tink import aead  # type: ignore[import-untyped]
    except ImportError:
        return None
    aead.register()
    primitive = tink.new_keyset_handle(aead.aead_key_templates.AES256_GCM).primitive(aead.Aead)
    associated = _context().associated_data()

    def operation() -> None:
        if primitive.decrypt(primitive.encrypt(plaintext, associated), associated) != plaintext:
            raise AssertionError("round trip failed")

    return operation


def _time_per_op_us(operation: Operation, ops: int) -> float:
    started = time.perf_counter()
    for _ in range(ops):
        operation()
    return (time.perf_counter() - started) / ops * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ops", type=int, default=5000)
    args = parser.parse_args(argv)

    plaintext = os.urandom(VALUE_BYTES)
    contenders: dict[str, Operation] = {
        "aesgcm": _aesgcm(plaintext),
        "veilbill": _veilbill(plaintext),
        "aesgcm-batched-nonce": _aesgcm_batched_nonce(plaintext),
        "fernet": _fernet(plaintext),
    }
    tink_operation = _tink(plaintext)
    if tink_operation is not None:
        contenders["tink"] = tink_operation
    names = list(contenders)
    for name in names:  # warm-up
        _time_per_op_us(contenders[name], args.ops // 10 or 1)

    samples: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        this_round = {name: _time_per_op_us(contenders[name], args.ops) for name in order}
        for name, micros in this_round.items():
            samples[name].append(micros)
            ratios[name].append(micros / this_round["aesgcm"])
    for name in names:
        print(
            json.dumps(
                {
                    "bench": "field-encryption",
                    "contender": name,
                    "value_bytes": VALUE_BYTES,
                    "us_per_seal_open_median": round(statistics.median(samples[name]), 2),
                    "us_per_seal_open_min": round(min(samples[name]), 2),
                    "ratio_to_aesgcm_median": round(statistics.median(ratios[name]), 3),
                    "rounds": args.rounds,
                    "ops_per_round": args.ops,
                }
            ),
            flush=True,
        )
    if tink_operation is None:
        print(json.dumps({"bench": "field-encryption", "contender": "tink", "skipped": "tink not installed"}))


if __name__ == "__main__":
    main()
