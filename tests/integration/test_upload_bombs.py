"""Upload bombs and check limits: small files that decode to huge tables are refused fast, in bounded memory.

Each bomb is built here: gzip and zip of a 256 MiB zero-filled CSV, other compressors' frames,
a Parquet file of 10 million dictionary-encoded, zstd-compressed rows, Parquet files whose
values expand past the decoded-size and cell limits, and a CSV with 100,000 columns. Each
must be a 4xx problem+json naming the problem within 5 s, leave nothing in the uploads
folder, and keep the check process's peak resident memory (VmHWM, printed) bounded. The
check processes' own limits (memory, CPU time, a queue that answers 503) are tried too.
"""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import tarfile
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from service.api import create_app
from service.api.sources import current_check_runner
from service.check_runner import CheckRunner
from service.config import Settings
from tests.support.sentiment_data import sentiment_rows, write_table
from tests.support.service import descendants, start_service

ANSWER_SECONDS = 5.0
ZEROS_MIB = 256
# The check process holds datasets, transformers and pyarrow (about 0.2 to 0.4 GiB); a bomb
# that decoded would take gigabytes.
MAX_CHECK_PEAK_BYTES = 1024 ** 3
# What the API process (this test process) may grow by while it takes a bomb.
MAX_API_GROWTH_BYTES = 64 * 1024 * 1024


def make_app(tmp_path: Path, **settings: str) -> Flask:
    environ = {"FITJOBS_HOME": str(tmp_path / "home"), "FITJOBS_CHECK_CONCURRENCY": "1", **settings}
    app = create_app(Settings.from_env(environ), test_config={"TESTING": True})
    with app.app_context():
        current_check_runner()  # made now, so a test can watch it before the first check
    return app


@pytest.fixture(scope="module")
def bomb_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """One app (and one check process) for every bomb, so the peak memory covers them all."""
    app = make_app(tmp_path_factory.mktemp("bombs"))
    yield app
    peak = check_peak_bytes(app)
    print(f"\ncheck process peak RSS after every bomb: {peak / 2 ** 20:.0f} MiB")
    runner(app).close()
    app.extensions["fitjobs.store"].engine.dispose()


def runner(app: Flask) -> CheckRunner:
    runner = app.extensions.get("fitjobs.check_runner")
    assert isinstance(runner, CheckRunner)
    return runner


def check_peak_bytes(app: Flask) -> int:
    """The peak resident memory (VmHWM) of the app's check process."""
    process = runner(app)._idle[0]
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def settings_of(app: Flask) -> Settings:
    settings = app.extensions["fitjobs.settings"]
    assert isinstance(settings, Settings)
    return settings


def gzip_of_zeros() -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(b"text,label\n")]
    chunk = b"0" * (1 << 20)
    parts += [compressor.compress(chunk) for _ in range(ZEROS_MIB)]
    return b"".join([*parts, compressor.flush()])


def zip_of_zeros() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open("train.csv", "w", force_zip64=True) as member:
        member.write(b"text,label\n")
        for _ in range(ZEROS_MIB):
            member.write(b"0" * (1 << 20))
    return buffer.getvalue()


def tar_of_csv() -> bytes:
    buffer = io.BytesIO()
    body = b"text,label\ngood,pos\n" * 100
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("train.csv")
        info.size = len(body)
        archive.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def dictionary_parquet(rows: int, value: str) -> bytes:
    """``rows`` rows that all hold ``value`` and one label, dictionary-encoded and zstd-compressed."""
    zeros = pa.array(np.zeros(rows, np.int32))
    table = pa.table({"text": pa.DictionaryArray.from_arrays(zeros, pa.array([value])),
                      "label": pa.DictionaryArray.from_arrays(zeros, pa.array(["pos"]))})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", use_dictionary=True)
    return buffer.getvalue()


def wide_csv(columns: int) -> bytes:
    header = ",".join(f"c{index}" for index in range(columns))
    return (header + "\n" + ",".join("x" for _ in range(columns)) + "\n").encode()


def upload(client: FlaskClient, body: bytes, filename: str) -> tuple[Any, float]:
    started = time.monotonic()
    response = client.post("/v1/datasets", data={"file": (io.BytesIO(body), filename)})
    return response, time.monotonic() - started


def assert_refused(app: Flask, response: Any, seconds: float, status: int, *phrases: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    detail = response.get_json()["detail"]
    for phrase in phrases:
        assert phrase in detail, detail
    assert seconds < ANSWER_SECONDS, f"answered in {seconds:.1f} s"
    assert list(settings_of(app).uploads_dir.iterdir()) == [], "a refused upload leaves nothing on disk"


COMPRESSED = [
    ("gzip", "train.csv", gzip_of_zeros),
    ("zip", "train.jsonl", zip_of_zeros),
    ("zip", "train.parquet", zip_of_zeros),
    ("bzip2", "train.csv", lambda: __import__("bz2").compress(b"text,label\n" + b"0" * (1 << 20))),
    ("xz", "train.csv", lambda: __import__("lzma").compress(b"text,label\n" + b"0" * (1 << 20))),
    ("zstd", "train.csv", lambda: pa.compress(b"text,label\n" + b"0" * (1 << 20), codec="zstd", asbytes=True)),
    ("lz4", "train.json", lambda: pa.compress(b"text,label\n" + b"0" * (1 << 20), codec="lz4", asbytes=True)),
    ("tar", "train.csv", tar_of_csv),
    ("7z", "train.csv", lambda: b"7z\xbc\xaf\x27\x1c\x00\x04" + b"\x00" * 600),
]


@pytest.mark.parametrize("kind,filename,build", COMPRESSED, ids=[f"{k}-as-{f}" for k, f, _ in COMPRESSED])
def test_compressed_files_and_archives_are_refused_whatever_their_name(bomb_app: Flask, kind: str, filename: str,
                                                                       build: Any) -> None:
    grown_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    response, seconds = upload(bomb_app.test_client(), build(), filename)
    assert_refused(bomb_app, response, seconds, 422, f"is {kind} data", "not accepted")
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - grown_before
    assert grown < MAX_API_GROWTH_BYTES, f"the API process grew by {grown / 2 ** 20:.0f} MiB"


def test_a_gzip_bomb_sent_as_the_raw_body_is_refused(bomb_app: Flask) -> None:
    started = time.monotonic()
    response = bomb_app.test_client().post("/v1/datasets?filename=train.csv", data=gzip_of_zeros(),
                                           content_type="text/csv")
    assert_refused(bomb_app, response, time.monotonic() - started, 422, "is gzip data")


def test_a_parquet_file_of_10_million_rows_is_refused_from_its_metadata(bomb_app: Flask) -> None:
    body = dictionary_parquet(10_000_000, "a fine film")
    assert len(body) < 200_000, "the bomb is small on the wire"
    response, seconds = upload(bomb_app.test_client(), body, "train.parquet")
    assert_refused(bomb_app, response, seconds, 422, "10,000,000 rows", "FITJOBS_UPLOAD_MAX_ROWS")
    assert check_peak_bytes(bomb_app) < MAX_CHECK_PEAK_BYTES


def test_a_parquet_file_whose_dictionary_expands_past_the_decoded_limit_is_refused(bomb_app: Flask) -> None:
    # 40,000 rows of one 64 KiB value: 2.4 GiB once expanded, a few hundred KB stored.
    body = dictionary_parquet(40_000, "x" * 65_536)
    assert len(body) < 1_000_000
    response, seconds = upload(bomb_app.test_client(), body, "train.parquet")
    assert_refused(bomb_app, response, seconds, 422, "FITJOBS_UPLOAD_MAX_DECODED_BYTES", "expanded")
    assert check_peak_bytes(bomb_app) < MAX_CHECK_PEAK_BYTES


def test_a_parquet_value_over_the_cell_limit_is_refused(bomb_app: Flask) -> None:
    body = dictionary_parquet(10, "x" * (2 * 1024 * 1024))
    response, seconds = upload(bomb_app.test_client(), body, "train.parquet")
    assert_refused(bomb_app, response, seconds, 422, "FITJOBS_UPLOAD_MAX_CELL_BYTES", "2.0 MiB")


def test_a_csv_with_100000_columns_is_refused_from_its_header(bomb_app: Flask) -> None:
    response, seconds = upload(bomb_app.test_client(), wide_csv(100_000), "train.csv")
    assert_refused(bomb_app, response, seconds, 422, "100,000 columns", "header line", "FITJOBS_UPLOAD_MAX_COLUMNS")
    assert check_peak_bytes(bomb_app) < MAX_CHECK_PEAK_BYTES


def test_a_json_lines_file_with_100000_keys_is_refused_from_its_first_record(bomb_app: Flask) -> None:
    record = json.dumps({f"c{index}": "x" for index in range(100_000)})
    response, seconds = upload(bomb_app.test_client(), (record + "\n").encode(), "train.jsonl")
    assert_refused(bomb_app, response, seconds, 422, "100,000 columns", "first record")


def test_an_ordinary_upload_still_passes_after_the_bombs(bomb_app: Flask, tmp_path: Path) -> None:
    path = write_table(sentiment_rows(50, seed=3), tmp_path / "rows.parquet")
    response, _ = upload(bomb_app.test_client(), path.read_bytes(), "rows.parquet")
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["rows"] == 50
    assert bomb_app.test_client().delete(f"/v1/datasets/{response.get_json()['id']}").status_code == 204


def test_rows_and_cells_over_lower_limits_are_refused_after_reading(tmp_path: Path) -> None:
    app = make_app(tmp_path, FITJOBS_UPLOAD_MAX_ROWS="40", FITJOBS_UPLOAD_MAX_CELL_BYTES="100")
    try:
        client = app.test_client()
        rows = write_table(sentiment_rows(41, seed=1), tmp_path / "rows.csv")
        response, seconds = upload(client, rows.read_bytes(), "rows.csv")
        assert_refused(app, response, seconds, 422, "41 rows", "FITJOBS_UPLOAD_MAX_ROWS")
        long_text = write_table([{"text": "y" * 101, "label": "pos"}, {"text": "n", "label": "neg"}],
                                tmp_path / "long.jsonl")
        response, seconds = upload(client, long_text.read_bytes(), "long.jsonl")
        assert_refused(app, response, seconds, 422, "value of 101 bytes", "FITJOBS_UPLOAD_MAX_CELL_BYTES")
    finally:
        runner(app).close()
        app.extensions["fitjobs.store"].engine.dispose()


def json_array_file(path: Path, rows: int) -> Path:
    """A JSON array of records: `datasets` reads it into Python objects, several times its size in memory."""
    path.write_text(json.dumps([{"text": f"row {index} of a long json array", "label": index % 2}
                                for index in range(rows)]))
    return path


def test_a_check_over_its_memory_limit_is_422_naming_the_limit(tmp_path: Path) -> None:
    app = make_app(tmp_path, FITJOBS_CHECK_MEMORY_BYTES=str(64 * 1024 * 1024))
    try:
        client = app.test_client()
        body = json_array_file(tmp_path / "rows.json", 600_000).read_bytes()
        response, seconds = upload(client, body, "rows.json")
        assert_refused(app, response, seconds, 422, "more than 64 MiB of memory", "FITJOBS_CHECK_MEMORY_BYTES")
        small = write_table(sentiment_rows(20, seed=1), tmp_path / "small.csv")
        assert upload(client, small.read_bytes(), "small.csv")[0].status_code == 201, "the next check still runs"
    finally:
        runner(app).close()
        app.extensions["fitjobs.store"].engine.dispose()


def test_a_check_over_its_cpu_limit_is_422_naming_the_limit(tmp_path: Path) -> None:
    app = make_app(tmp_path, FITJOBS_CHECK_CPU_SECONDS="1")
    try:
        client = app.test_client()
        body = json_array_file(tmp_path / "rows.json", 1_500_000).read_bytes()
        response, _ = upload(client, body, "rows.json")
        assert response.status_code == 422, response.get_json()
        assert "more than 1 s of CPU time (FITJOBS_CHECK_CPU_SECONDS)" in response.get_json()["detail"]
        assert list(settings_of(app).uploads_dir.iterdir()) == []
        small = write_table(sentiment_rows(20, seed=1), tmp_path / "small.csv")
        assert upload(client, small.read_bytes(), "small.csv")[0].status_code == 201, "the next check still runs"
    finally:
        runner(app).close()
        app.extensions["fitjobs.store"].engine.dispose()


def wait_for_busy(app: Flask, count: int, seconds: float = 60.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        busy = runner(app).busy_pids()
        if len(busy) >= count:
            return busy
        time.sleep(0.01)
    raise AssertionError(f"{count} checks never became busy")


def test_a_stalled_check_does_not_hold_up_another_upload(tmp_path: Path) -> None:
    app = make_app(tmp_path, FITJOBS_CHECK_CONCURRENCY="2")
    stalled: list[Any] = []
    client = app.test_client()
    first = write_table(sentiment_rows(2_000, seed=1), tmp_path / "first.csv").read_bytes()
    second = write_table(sentiment_rows(20, seed=2), tmp_path / "second.csv").read_bytes()
    thread = threading.Thread(target=lambda: stalled.append(upload(app.test_client(), first, "first.csv")[0]))
    thread.start()
    try:
        [pid] = wait_for_busy(app, 1)
        os.kill(pid, signal.SIGSTOP)  # the first check now makes no progress at all
        response, seconds = upload(client, second, "second.csv")
        assert response.status_code == 201, response.get_json()
        assert seconds < 30, f"the second upload waited {seconds:.1f} s"
        os.kill(pid, signal.SIGCONT)
        thread.join(60)
        assert stalled and stalled[0].status_code == 201, "the stalled check finishes once it runs again"
    finally:
        runner(app).close()
        thread.join(10)
        app.extensions["fitjobs.store"].engine.dispose()


def test_checks_beyond_the_queue_wait_are_503_with_retry_after(tmp_path: Path) -> None:
    app = make_app(tmp_path, FITJOBS_CHECK_QUEUE_SECONDS="0.5")
    stalled: list[Any] = []
    first = write_table(sentiment_rows(2_000, seed=1), tmp_path / "first.csv").read_bytes()
    thread = threading.Thread(target=lambda: stalled.append(upload(app.test_client(), first, "first.csv")[0]))
    thread.start()
    try:
        [pid] = wait_for_busy(app, 1)
        os.kill(pid, signal.SIGSTOP)
        client = app.test_client()
        response, seconds = upload(client, first, "again.csv")
        assert response.status_code == 503 and response.mimetype == "application/problem+json"
        assert response.headers["Retry-After"] == "1" and seconds < ANSWER_SECONDS
        assert "check processes" in response.get_json()["detail"]
        dry_run = client.post("/v1/jobs:validate", json={"model": "bert-base-uncased",
                                                         "data": {"train": {"records": sentiment_rows(4, seed=1)}}})
        assert dry_run.status_code == 503 and dry_run.headers["Retry-After"] == "1"
        os.kill(pid, signal.SIGCONT)
        thread.join(60)
        assert stalled and stalled[0].status_code == 201
        assert len(list(settings_of(app).uploads_dir.iterdir())) == 1, "the refused upload left nothing"
    finally:
        runner(app).close()
        thread.join(10)
        app.extensions["fitjobs.store"].engine.dispose()


def check_server_peaks(root: int) -> dict[int, int]:
    """VmHWM (peak resident bytes) of every check server below ``root``, by pid."""
    peaks = {}
    for pid in descendants(root):
        try:
            if b"service.trainer.check_server" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        peaks[pid] = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
    return peaks


def test_bombs_sent_to_a_running_api_are_refused_within_5_s_each(tmp_path: Path) -> None:
    """The same bombs over HTTP to `fitjobs api` (gunicorn, gevent workers): answers, disk and memory."""
    api = start_service(tmp_path / "home", role="api", extra_env={"FITJOBS_API_WORKERS": "1"})
    try:
        bombs = [("gzip", "train.csv", gzip_of_zeros(), "is gzip data"),
                 ("zip", "train.csv", zip_of_zeros(), "is zip data"),
                 ("parquet", "train.parquet", dictionary_parquet(10_000_000, "a fine film"), "10,000,000 rows"),
                 ("wide csv", "train.csv", wide_csv(100_000), "100,000 columns")]
        api_pid = api.process.pid
        for kind, filename, body, named in bombs:
            started = time.monotonic()
            response = requests.post(api.url + "/v1/datasets", files={"file": (filename, body)}, timeout=30)
            seconds = time.monotonic() - started
            assert response.status_code == 422, (kind, response.text)
            assert response.headers["Content-Type"] == "application/problem+json"
            assert named in response.json()["detail"], (kind, response.json())
            assert seconds < ANSWER_SECONDS, f"{kind}: answered in {seconds:.1f} s"
            assert list((api.home / "uploads").iterdir()) == [], f"{kind}: left files behind"
        peaks = check_server_peaks(api_pid)
        assert peaks, "the checks ran in check server processes"
        print(f"\ncheck server peak RSS behind `fitjobs api`: {max(peaks.values()) / 2 ** 20:.0f} MiB")
        assert max(peaks.values()) < MAX_CHECK_PEAK_BYTES
    finally:
        api.stop()
