"""Writers: a released table, arriving in chunks, encoded as CSV, JSON Lines or Parquet bytes.

Each writer consumes an iterable of Polars DataFrames (the chunks, all with ``schema``) and yields
bytes as it goes, so a release of any length is written with the memory of one chunk. CSV starts
with its header row, even when no chunk follows. Parquet gets one row group per chunk and the
key-value ``metadata`` (e.g. the guarantee) in its footer; the footer comes last, as the format
requires, but nothing before it is held back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Literal

import polars as pl

__all__ = ["RELEASE_FORMATS", "ReleaseFormat", "encode_release"]

ReleaseFormat = Literal["csv", "jsonl", "parquet"]
RELEASE_FORMATS: tuple[str, ...] = ("csv", "jsonl", "parquet")


def encode_release(
    chunks: Iterable[pl.DataFrame],
    *,
    schema: Mapping[str, pl.DataType | type[pl.DataType]],
    output_format: ReleaseFormat,
    metadata: Mapping[str, str] | None = None,
) -> Iterator[bytes]:
    """Encode ``chunks`` (DataFrames with the columns and types of ``schema``) as ``output_format``.

    ``metadata`` goes into Parquet's key-value metadata; CSV and JSON Lines have nowhere to put it
    (ship it beside them). Raises ``ValueError`` for an unknown format.
    """
    if output_format == "csv":
        return _csv(chunks, schema)
    if output_format == "jsonl":
        return _jsonl(chunks, schema)
    if output_format == "parquet":
        return _parquet(chunks, schema, metadata or {})
    raise ValueError(f"unknown release format {output_format!r}")


def _conform(chunk: pl.DataFrame, schema: Mapping[str, pl.DataType | type[pl.DataType]]) -> pl.DataFrame:
    return chunk.select(pl.col(name).cast(dtype) for name, dtype in schema.items())


def _csv(
    chunks: Iterable[pl.DataFrame], schema: Mapping[str, pl.DataType | type[pl.DataType]]
) -> Iterator[bytes]:
    yield pl.DataFrame(schema=dict(schema)).write_csv().encode()
    for chunk in chunks:
        if chunk.height:
            yield _conform(chunk, schema).write_csv(include_header=False).encode()


def _jsonl(
    chunks: Iterable[pl.DataFrame], schema: Mapping[str, pl.DataType | type[pl.DataType]]
) -> Iterator[bytes]:
    for chunk in chunks:
        if chunk.height:
            yield _conform(chunk, schema).write_ndjson().encode()


class _Drain:
    """A write-only file for pyarrow that hands over what was written since the last ``take``.

    It keeps the running position, which the Parquet writer uses for the offsets in its footer.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0
        self.closed = False

    def write(self, data: bytes | memoryview) -> int:
        block = bytes(data)
        self._parts.append(block)
        self._position += len(block)
        return len(block)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def take(self) -> bytes:
        block = b"".join(self._parts)
        self._parts.clear()
        return block


def _parquet(
    chunks: Iterable[pl.DataFrame],
    schema: Mapping[str, pl.DataType | type[pl.DataType]],
    metadata: Mapping[str, str],
) -> Iterator[bytes]:
    import pyarrow as pa  # type: ignore[import-untyped]  # pyarrow ships no type information
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    arrow_schema = pl.DataFrame(schema=dict(schema)).to_arrow().schema
    arrow_schema = arrow_schema.with_metadata(
        {key.encode(): value.encode() for key, value in metadata.items()}
    )
    drain = _Drain()
    writer = pq.ParquetWriter(pa.PythonFile(drain, mode="w"), arrow_schema)
    try:
        for chunk in chunks:
            if chunk.height:
                writer.write_table(_conform(chunk, schema).to_arrow().cast(arrow_schema))
                block = drain.take()
                if block:
                    yield block
    finally:
        writer.close()
    yield drain.take()
