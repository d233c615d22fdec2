"""Recognising compressed uploads by their first bytes, and measuring tables against UploadLimits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.trainer.data import InvalidData
from service.trainer.upload_limits import check_before_reading, column_bytes
from service.uploads import UploadLimits, container_format

LIMITS = UploadLimits(max_rows=1_000, max_columns=10, max_cell_bytes=1_000, max_decoded_bytes=1_000_000)


@pytest.mark.parametrize("head", [b"text,label\nx,y\n", b'{"text": "a"}\n', b'[{"text": "a"}]', b"xylophone,label\n",
                                  b"BZh,label\n", b"PK,label\n", b"\xef\xbb\xbftext,label\n", b"PAR1\x15\x04"])
def test_ordinary_tables_are_not_taken_for_compressed_data(head: bytes) -> None:
    assert container_format(head + b" " * 600) is None


def test_a_tar_archive_is_found_by_its_magic_at_offset_257() -> None:
    head = bytearray(512)
    head[:9] = b"train.csv"
    head[257:262] = b"ustar"
    assert container_format(bytes(head)) == "tar"


def write_parquet(path: Path, table: pa.Table, **options: object) -> Path:
    pq.write_table(table, path, **options)
    return path


def test_parquet_limits_are_read_from_the_footer_before_the_data(tmp_path: Path) -> None:
    wide = pa.table({f"c{index}": [1] for index in range(11)})
    with pytest.raises(InvalidData, match="11 columns in its Parquet metadata"):
        check_before_reading(write_parquet(tmp_path / "wide.parquet", wide), LIMITS)
    long = pa.table({"text": pa.array(np.zeros(1_001, np.int64)), "label": pa.array(np.zeros(1_001, np.int64))})
    with pytest.raises(InvalidData, match="1,001 rows in its Parquet metadata"):
        check_before_reading(write_parquet(tmp_path / "long.parquet", long), LIMITS)
    fine = pa.table({"text": ["good film"] * 100, "label": ["pos"] * 100})
    check_before_reading(write_parquet(tmp_path / "fine.parquet", fine, compression="zstd"), LIMITS)


def test_dictionary_columns_are_measured_expanded_without_being_expanded() -> None:
    column = pa.DictionaryArray.from_arrays(pa.array(np.zeros(1_000, np.int32)), pa.array(["x" * 500]))
    decoded, longest = column_bytes(column)
    assert longest == 500 and decoded == 1_000 * 500 + 4 * 1_000
    assert column_bytes(pa.array(["ab", "abcd", None])) == (6 + 4 * 3, 4)


def test_headers_and_first_records_are_counted_before_reading(tmp_path: Path) -> None:
    (tmp_path / "wide.csv").write_text(",".join(f'"c,{index}"' for index in range(11)) + "\nx\n")
    with pytest.raises(InvalidData, match="11 columns in its header line"):
        check_before_reading(tmp_path / "wide.csv", LIMITS)
    (tmp_path / "quoted.csv").write_text('"a,b,c,d,e,f,g,h,i,j,k",label\nx,y\n')
    check_before_reading(tmp_path / "quoted.csv", LIMITS)  # two columns, however many commas are quoted
    (tmp_path / "wide.jsonl").write_text(json.dumps({f"c{index}": 1 for index in range(11)}) + "\n")
    with pytest.raises(InvalidData, match="11 columns in its first record"):
        check_before_reading(tmp_path / "wide.jsonl", LIMITS)


def test_a_broken_parquet_footer_is_refused_without_naming_the_server_path(tmp_path: Path) -> None:
    broken = tmp_path / "uploads" / "ds_x" / "data.parquet"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"PAR1" + b"\x00" * 100)
    with pytest.raises(InvalidData, match="could not be read as parquet") as caught:
        check_before_reading(broken, LIMITS)
    assert str(tmp_path) not in caught.value.message


def test_reasons_quoted_from_readers_leave_out_the_server_path(tmp_path: Path) -> None:
    from service.trainer.data import without_path

    path = tmp_path / "uploads" / "ds_x" / "data.csv"
    text = f"FileNotFoundError: {path} is missing; looked in {path.parent}"
    assert without_path(text, path) == "FileNotFoundError: <file> is missing; looked in <folder>"


def test_a_header_ended_by_a_lone_carriage_return_is_counted(tmp_path: Path) -> None:
    (tmp_path / "mac.csv").write_bytes(b",".join(b"c%d" % index for index in range(11)) + b"\rx\r" + b"y" * 100)
    with pytest.raises(InvalidData, match="11 columns in its header line"):
        check_before_reading(tmp_path / "mac.csv", LIMITS)


def test_a_parquet_footer_claiming_to_be_huge_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "footer.parquet"
    path.write_bytes(b"PAR1" + b"\x00" * 64 + (512 * 1024 * 1024).to_bytes(4, "little") + b"PAR1")
    with pytest.raises(InvalidData, match="Parquet metadata takes 512.0 MiB"):
        check_before_reading(path, LIMITS)
