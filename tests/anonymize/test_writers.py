"""``encode_release``: chunks in, CSV / JSON Lines / Parquet bytes out, a chunk at a time."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import polars as pl
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from anonymize import encode_release

SCHEMA = {"region": pl.String, "net": pl.Int64}
CHUNKS = [
    pl.DataFrame({"region": ["750**", "*"], "net": [1200, 3400]}),
    pl.DataFrame({"region": ["69***"], "net": [99]}),
]


def test_csv_has_its_header_once_and_every_row() -> None:
    text = b"".join(encode_release(iter(CHUNKS), schema=SCHEMA, output_format="csv")).decode()
    assert text.splitlines() == ["region,net", "750**,1200", "*,3400", "69***,99"]
    empty = b"".join(encode_release(iter([]), schema=SCHEMA, output_format="csv")).decode()
    assert empty.splitlines() == ["region,net"]


def test_jsonl_is_one_object_per_row() -> None:
    text = b"".join(encode_release(iter(CHUNKS), schema=SCHEMA, output_format="jsonl")).decode()
    assert [json.loads(line) for line in text.splitlines()] == [
        {"region": "750**", "net": 1200},
        {"region": "*", "net": 3400},
        {"region": "69***", "net": 99},
    ]


def test_parquet_writes_a_row_group_per_chunk_before_the_footer() -> None:
    produced: list[bytes] = []
    consumed = 0

    def chunks() -> Iterator[pl.DataFrame]:
        nonlocal consumed
        for chunk in CHUNKS:
            consumed += 1
            yield chunk

    stream = encode_release(chunks(), schema=SCHEMA, output_format="parquet", metadata={"g": '{"k": 5}'})
    produced.append(next(stream))
    assert consumed == 1 and produced[0].startswith(b"PAR1")  # bytes leave before the last chunk is read
    produced.extend(stream)
    parquet = pq.ParquetFile(io.BytesIO(b"".join(produced)))
    assert parquet.num_row_groups == 2
    assert parquet.schema_arrow.metadata[b"g"] == b'{"k": 5}'
    assert parquet.read().to_pylist()[2] == {"region": "69***", "net": 99}


def test_an_empty_parquet_release_is_still_a_file_with_its_schema() -> None:
    data = b"".join(encode_release(iter([]), schema=SCHEMA, output_format="parquet"))
    table = pq.read_table(io.BytesIO(data))
    assert table.num_rows == 0
    assert table.column_names == ["region", "net"]


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown release format"):
        encode_release(iter(CHUNKS), schema=SCHEMA, output_format="xlsx")  # type: ignore[arg-type]
