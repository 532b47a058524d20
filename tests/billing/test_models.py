"""Ids are opaque, unguessable, and can never look like a card number."""

from __future__ import annotations

import re

from billing._models import new_id
from tokenization import contains_card_number


def test_ids_are_letters_only_and_unique() -> None:
    ids = [new_id("cus") for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"cus_[a-z]{20}", i) for i in ids)
    assert not any(contains_card_number(i) for i in ids)


def test_every_position_takes_every_letter() -> None:
    ids = [new_id("inv")[4:] for _ in range(20_000)]
    alphabet = set("abcdefghijkmnpqrstuvwxyz")
    for position in range(20):
        assert {i[position] for i in ids} == alphabet
