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
