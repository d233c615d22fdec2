"""The storage module against a real S3-compatible server (moto) and a local folder.

Files in and out, listings, and the atomic publish: a reader sees the previous published
folder or the whole new one, never part of one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import ConfigError, Settings
from service.storage import MANIFEST, Storage, StorageKeyRefused, StorageUnavailable, StoredFile, check_key
from service.trainer.checkpoint_mirror import BEST, STATE, CheckpointMirror
from tests.support.s3 import S3Server, s3_server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture(params=["s3", "file"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "s3":
        server = request.getfixturevalue("s3")
        return Storage(f"s3://{server.new_bucket()}/some/prefix")
    return Storage((tmp_path / "stored").as_uri())


def folder_of(tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    folder = tmp_path / name
    for relative, content in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(content)
    return folder


def test_files_go_in_and_come_back(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(b"x" * 3000)
    assert not storage.exists("uploads/a/data.csv")
    storage.put_file(source, "uploads/a/data.csv")
    storage.write_bytes("uploads/a/notes/n.txt", b"hello")
    assert storage.exists("uploads/a/data.csv") and storage.size("uploads/a/data.csv") == 3000
    assert storage.list_files("uploads/a") == [StoredFile("data.csv", 3000), StoredFile("notes/n.txt", 5)]
    with storage.open("uploads/a/data.csv") as handle:
        assert handle.read(10) == b"x" * 10
    storage.get_file("uploads/a/data.csv", tmp_path / "out" / "copy.bin")
    assert (tmp_path / "out" / "copy.bin").read_bytes() == source.read_bytes()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["copy.bin"], "no partial file is left"
    storage.remove("uploads/a")
    assert storage.list_files("uploads/a") == [] and not storage.exists("uploads/a/data.csv")
    storage.remove("uploads/never-there")


@pytest.mark.parametrize("key", ["", "/", "a/../b", "a//b", "../x", "a/./b"])
def test_keys_that_could_leave_the_root_are_refused(key: str) -> None:
    with pytest.raises(StorageKeyRefused):
        check_key(key)
    assert check_key("/artifacts/job_1/") == "artifacts/job_1"


def test_a_published_folder_is_replaced_whole_and_fetched_back(storage: Storage, tmp_path: Path) -> None:
    first = folder_of(tmp_path, "first", {"model/config.json": b"{1}", "metrics.json": b"1", "tokens/skip": b"x"})
    assert storage.published("artifacts/job_1") is None
    version = storage.publish_folder(first, "artifacts/job_1", exclude=["tokens"])
    published = storage.published("artifacts/job_1")
    assert published is not None and published.version == version
    assert {f.name: f.size for f in published.files} == {"model/config.json": 3, "metrics.json": 1}
    assert first.is_dir(), "without move the source is kept"
    second = folder_of(tmp_path, "second", {"model/config.json": b"{22}", "spec.json": b"{}"})
    storage.publish_folder(second, "artifacts/job_1", move=True)
    assert not second.exists() or not storage.is_local
    fetched = storage.fetch_published("artifacts/job_1", tmp_path / "fetched")
    assert fetched is not None and fetched.version != version
    files = sorted(p.relative_to(tmp_path / "fetched").as_posix() for p in (tmp_path / "fetched").rglob("*")
                   if p.is_file())
    assert files == ["model/config.json", "spec.json"], "nothing of the first version survives"
    assert (tmp_path / "fetched" / "model" / "config.json").read_bytes() == b"{22}"
    if not storage.is_local:
        # The first version's objects are gone: only the manifest and the second version remain.
        stored = {f.name.split("/", 1)[0] for f in storage.list_files("artifacts/job_1")}
        assert stored == {MANIFEST, fetched.version}
    storage.remove_published("artifacts/job_1")
    assert storage.published("artifacts/job_1") is None and storage.list_files("artifacts/job_1") == []


def test_a_reader_never_sees_a_half_published_folder(s3: S3Server, tmp_path: Path) -> None:
    storage = Storage(f"s3://{s3.new_bucket()}")
    old = folder_of(tmp_path, "old", {"model/a.bin": b"old-a", "model/b.bin": b"old-b"})
    storage.publish_folder(old, "artifacts/job_1")
    new = folder_of(tmp_path, "new", {"model/a.bin": b"new-a", "model/b.bin": b"new-b", "model/c.bin": b"new-c"})
    seen_during_upload = []
    real_put = storage.fs.put

    def put_then_look(*args: object, **kwargs: object) -> object:
        result = real_put(*args, **kwargs)
        # Every file of the new version is uploaded; its manifest is not written yet.
        reader = Storage(storage.url)
        published = reader.published("artifacts/job_1")
        assert published is not None
        seen_during_upload.append({f.name: reader.read_bytes(f"{published.prefix}/{f.name}")
                                   for f in published.files})
        return result

    storage.fs.put = put_then_look
    try:
        storage.publish_folder(new, "artifacts/job_1")
    finally:
        storage.fs.put = real_put
    assert seen_during_upload == [{"model/a.bin": b"old-a", "model/b.bin": b"old-b"}]
    published = storage.published("artifacts/job_1")
    assert published is not None and [f.name for f in published.files] == ["model/a.bin", "model/b.bin",
                                                                            "model/c.bin"]


def test_readers_racing_a_publisher_see_whole_versions(s3: S3Server, tmp_path: Path) -> None:
    storage = Storage(f"s3://{s3.new_bucket()}")
    names = [f"part-{i}" for i in range(4)]
    storage.publish_folder(folder_of(tmp_path, "v0", {name: b"0" for name in names}), "checkpoints/job_1/state")
    done = threading.Event()
    mixed: list[set[bytes]] = []
    reads = 0

    def read_repeatedly() -> None:
        nonlocal reads
        reader = Storage(storage.url)
        while not done.is_set():
            published = reader.published("checkpoints/job_1/state")
            assert published is not None
            try:
                contents = {reader.read_bytes(f"{published.prefix}/{f.name}") for f in published.files}
            except FileNotFoundError:
                continue  # that version was replaced and deleted after its manifest was read
            reads += 1
            if len(contents) != 1 or len(published.files) != len(names):
                mixed.append(contents)

    thread = threading.Thread(target=read_repeatedly)
    thread.start()
    try:
        # At least 5 versions, and on until the reader finished 3 reads amid them (a loaded
        # machine may schedule it late).
        version = 0
        while version < 5 or (reads < 3 and version < 200):
            version += 1
            content = str(version).encode()
            storage.publish_folder(folder_of(tmp_path, f"v{version}", {name: content for name in names}),
                                   "checkpoints/job_1/state")
    finally:
        done.set()
        thread.join()
    assert reads >= 3 and mixed == []


def test_the_storage_setting(tmp_path: Path) -> None:
    home = tmp_path / "home"
    default = Settings.from_env({"FITJOBS_HOME": str(home)})
    assert default.storage_url == home.absolute().as_uri() and default.storage_is_home
    assert default.artifacts_dir == home.absolute() / "artifacts"
    shared = Settings.from_env({"FITJOBS_HOME": str(home), "FITJOBS_STORAGE_URL": str(tmp_path / "shared")})
    assert not shared.storage_is_home and shared.uploads_dir == tmp_path / "shared" / "uploads"
    bucket = Settings.from_env({"FITJOBS_HOME": str(home), "FITJOBS_STORAGE_URL": "s3://bucket/fitjobs/"})
    assert bucket.storage_url == "s3://bucket/fitjobs" and not bucket.storage_is_home
    assert bucket.artifacts_dir == home.absolute() / "artifacts", "fetched copies land in scratch space"
    assert bucket.child_environ()["FITJOBS_STORAGE_URL"] == "s3://bucket/fitjobs"
    for bad in ("ftp://host/x", "s3://", "azure://c/x"):
        with pytest.raises(ConfigError, match="FITJOBS_STORAGE_URL"):
            Settings.from_env({"FITJOBS_HOME": str(home), "FITJOBS_STORAGE_URL": bad})


def test_a_checkpoint_mirror_resumes_on_another_node(s3: S3Server, tmp_path: Path) -> None:
    storage = Storage(f"s3://{s3.new_bucket()}/fitjobs")
    node_a = folder_of(tmp_path, "a", {"chief/checkpoint": b"ckpt-1", "chief/ckpt-1.index": b"i1",
                                       "epochs.json": b"[1]", "tokens/train.arrow": b"local only",
                                       "best/weights.h5": b"w1", "best/best.json": b'{"epoch": 1}'})
    writer = CheckpointMirror(storage, "job_1", node_a)
    writer.save_best()
    writer.save_state()
    assert {f.name for f in storage.published(writer.key(STATE)).files} == {  # type: ignore[union-attr]
        "chief/checkpoint", "chief/ckpt-1.index", "epochs.json"}
    node_b = tmp_path / "b"
    reader = CheckpointMirror(storage, "job_1", node_b)
    assert reader.restore() is True
    assert (node_b / "chief" / "ckpt-1.index").read_bytes() == b"i1"
    assert (node_b / "best" / "weights.h5").read_bytes() == b"w1"
    assert not (node_b / "tokens").exists(), "the tokens cache is rebuilt where it is missing"
    assert reader.restore() is False, "a folder that holds the stored versions fetches nothing"
    # Node A moves on: a newer checkpoint replaces node B's older one whole.
    (node_a / "chief" / "ckpt-1.index").unlink()
    (node_a / "chief" / "ckpt-2.index").write_bytes(b"i2")
    (node_a / "epochs.json").write_bytes(b"[1, 2]")
    writer.save_state()
    assert reader.restore() is True
    assert sorted(p.name for p in (node_b / "chief").iterdir()) == ["checkpoint", "ckpt-2.index"]
    assert (node_b / "epochs.json").read_bytes() == b"[1, 2]"
    assert (node_b / "best" / "best.json").is_file()
    writer.remove()
    assert storage.published(writer.key(STATE)) is None and storage.published(writer.key(BEST)) is None
    assert storage.list_files("checkpoints/job_1") == []


def test_a_store_that_cannot_be_reached_fails_the_attempt_as_retryable(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from service.jobs import FailureCode
    from service.trainer.attempt import classify_exception
    from tests.support.service import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    mirror = CheckpointMirror(Storage("s3://unreachable-bucket/fitjobs"), "job_1", tmp_path / "checkpoint")
    with pytest.raises(StorageUnavailable) as raised:
        mirror.restore()
    code, message = classify_exception(raised.value)
    assert code is FailureCode.STORAGE_UNAVAILABLE and code.retryable
    assert "s3://unreachable-bucket/fitjobs" in message


def test_a_spec_s_stored_inputs_are_fetched_to_scratch_space(s3: S3Server, tmp_path: Path) -> None:
    from service.artifacts import publish_artifacts
    from service.locations import Locations, fetch_inputs

    storage = Storage(f"s3://{s3.new_bucket()}/fitjobs")
    job_id, dataset_id = "job_" + "a" * 32, "ds_" + "b" * 32
    publish_artifacts(storage, folder_of(tmp_path, "staging", {"model/config.json": b'{"id2label": {}}',
                                                               "metrics.json": b"{}"}), job_id)
    storage.write_bytes(f"uploads/{dataset_id}/data.jsonl", b'{"text": "a", "label": 1}\n')
    scratch = Locations(data_root=tmp_path / "data", uploads_dir=tmp_path / "scratch" / "uploads",
                        artifacts_dir=tmp_path / "scratch" / "artifacts")
    spec = {"model": {"job": job_id}, "data": {"train": {"upload": dataset_id}, "validation": {"split_fraction": 0.1}}}
    fetch_inputs(spec, storage, scratch)
    assert (scratch.artifacts_dir / job_id / "model" / "config.json").read_bytes() == b'{"id2label": {}}'
    assert (scratch.uploads_dir / dataset_id / "data.jsonl").read_bytes() == b'{"text": "a", "label": 1}\n'
    # A local storage is read in place: nothing is copied.
    local = Locations(data_root=tmp_path / "data", uploads_dir=tmp_path / "elsewhere" / "uploads",
                      artifacts_dir=tmp_path / "elsewhere" / "artifacts")
    fetch_inputs(spec, Storage((tmp_path / "stored").as_uri()), local)
    assert not (tmp_path / "elsewhere").exists()


def test_a_forked_child_gets_a_client_of_its_own(s3: S3Server, tmp_path: Path) -> None:
    storage = Storage(f"s3://{s3.new_bucket()}")
    storage.write_bytes("a/b.txt", b"before the fork")  # the parent's client and event loop exist now
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if it can read and write through the inherited Storage
        try:
            ok = storage.read_bytes("a/b.txt") == b"before the fork"
            storage.write_bytes("a/child.txt", b"from the child")
        except BaseException:  # noqa: BLE001 - whatever fails, the child must reach os._exit
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert storage.read_bytes("a/child.txt") == b"from the child"
