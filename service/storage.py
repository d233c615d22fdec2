"""Where uploads, checkpoints and artifacts are kept: a local folder or a bucket, through fsspec.

FITJOBS_STORAGE_URL names the root: a local folder (``file://``; the default is FITJOBS_HOME)
or an object store (``s3://bucket/prefix``, ``gs://bucket/prefix``). Everything in it is
addressed by a key, a '/'-separated path under the root. Credentials and endpoints come from
the clouds' own variables and files (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_REGION, IRSA on
EKS; GOOGLE_APPLICATION_CREDENTIALS, workload identity on GKE), which s3fs and gcsfs read.

A published folder is seen whole or not at all. In a local folder it is written beside its
place and renamed into it. An object store cannot rename, so its files are uploaded under a
fresh version prefix and a manifest naming that version and the files is written last, in
one PUT; readers go through the manifest, so they never see a half-uploaded folder. The
previous version's objects are deleted once the new manifest is in place.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, cast

import fsspec
from fsspec.implementations.local import LocalFileSystem

MANIFEST = "manifest.json"
READ_BLOCK_BYTES = 8 << 20
# URL schemes FITJOBS_STORAGE_URL and data URLs may use, and the fsspec package behind each.
OBJECT_STORE_SCHEMES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}


class StorageUnavailable(OSError):
    """The object store could not be reached or refused a request (network, credentials, permissions)."""


class StorageKeyRefused(ValueError):
    """A key that could leave the storage root ('..', empty or absolute components)."""


@dataclass(frozen=True)
class StoredFile:
    """One file of a listing: its name relative to the listed key, and its size in bytes."""

    name: str
    size: int


@dataclass(frozen=True)
class Published:
    """A published folder: the version readers see and its files.

    ``prefix`` is the key its files' objects lie under (the folder itself on a local disk,
    the version's prefix in an object store).
    """

    version: str
    prefix: str
    files: tuple[StoredFile, ...]

    def object_key(self, name: str) -> str | None:
        """The key of the published file ``name``, or None when the folder has no such file."""
        return f"{self.prefix}/{name}" if any(f.name == name for f in self.files) else None


def check_key(key: str) -> str:
    """``key`` without surrounding slashes; refuses one that could leave the root."""
    parts = key.strip("/").split("/")
    if not key.strip("/") or any(part in ("", ".", "..") for part in parts):
        raise StorageKeyRefused(f"{key!r} is not a storage key")
    return "/".join(parts)


def _files_under(folder: Path, exclude: Iterable[str] = ()) -> list[tuple[str, Path]]:
    """(relative name, path) of every file below ``folder``, skipping the top-level names in ``exclude``."""
    skipped = set(exclude)
    found = []
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and name.split("/", 1)[0] not in skipped:
            found.append((name, path))
    return found


class Storage:
    """The storage root of one FITJOBS_STORAGE_URL."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") if not url.endswith(":///") else url
        scheme = self.url.split("://", 1)[0] if "://" in self.url else "file"
        # Listings are not cached: another process (a trainer, another API replica) writes too.
        # Each Storage has its own client, made from the environment when it is first used.
        self._options: dict[str, Any] = {} if scheme == "file" else {"use_listings_cache": False,
                                                                     "skip_instance_cache": True}
        self._fs, root = fsspec.core.url_to_fs(self.url, **self._options)
        self._pid = os.getpid()
        self.root = root.rstrip("/")
        self.local_root: Path | None = Path(root) if isinstance(self._fs, LocalFileSystem) else None

    @property
    def fs(self) -> Any:
        """The fsspec file system; made anew in a forked child, which cannot use its parent's event loop."""
        if self._pid != os.getpid():
            self._fs, _ = fsspec.core.url_to_fs(self.url, **self._options)
            self._pid = os.getpid()
        return self._fs

    @fs.setter
    def fs(self, value: Any) -> None:
        self._fs = value

    @property
    def is_local(self) -> bool:
        """Whether the root is a folder of this machine's file system."""
        return self.local_root is not None

    def _run(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        # s3fs and gcsfs run an asyncio loop on a thread of their own and wait for it; under
        # gunicorn's gevent workers that thread is a greenlet, so object store calls go to a
        # real thread of gevent's pool instead.
        if self.local_root is None and _gevent_patched():
            return self._translated(_native_pool().apply, call, args, kwargs)
        if self.local_root is None:
            return self._translated(call, *args, **kwargs)
        return call(*args, **kwargs)

    def _translated(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        # A missing object stays FileNotFoundError; every other failure of the store (botocore's
        # credential and connection errors are no OSError) becomes one type callers can classify.
        try:
            return call(*args, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise StorageUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from exc

    def path(self, key: str) -> str:
        """The file system path (bucket/prefix/key for object stores) of a key."""
        return f"{self.root}/{check_key(key)}"

    def local_path(self, key: str) -> Path:
        """The local file behind a key of local storage."""
        if self.local_root is None:
            raise ValueError(f"{self.url} is not a local folder")
        return self.local_root / check_key(key)

    def describe(self, key: str) -> str:
        """A key as a URL, for messages."""
        return f"{self.url}/{check_key(key)}"

    # --- single files ----------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        """Whether a file is stored under the key."""
        return bool(self._run(self.fs.isfile, self.path(key)))

    def size(self, key: str) -> int:
        """Size in bytes of the stored file (FileNotFoundError when there is none)."""
        return int(self._run(self.fs.size, self.path(key)))

    def info(self, key: str) -> dict[str, Any]:
        """What the store says about a stored file: size, and an ETag or hash where it keeps one."""
        return dict(self._run(self.fs.info, self.path(key)))

    def open(self, key: str) -> IO[bytes]:
        """The stored file, open for reading in a stream (read in parts, never all at once)."""
        # Read ahead in blocks of READ_BLOCK_BYTES, not s3fs's 50 MiB: many downloads may stream at once.
        options = {} if self.local_root is not None else {"block_size": READ_BLOCK_BYTES}
        handle = self._run(self.fs.open, self.path(key), "rb", **options)
        if self.local_root is None and _gevent_patched():
            handle = _NativeReads(handle)
        return cast(IO[bytes], handle)

    def read_bytes(self, key: str) -> bytes:
        """The whole content of a small stored file."""
        return bytes(self._run(self.fs.cat_file, self.path(key)))

    def write_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under the key, replacing what was there in one step."""
        if self.local_root is not None:
            target = self.local_path(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            staged = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
            staged.write_bytes(data)
            os.replace(staged, target)
            return
        self._run(self.fs.pipe_file, self.path(key), data)

    def put_file(self, local: Path, key: str) -> None:
        """Store a local file under the key; a reader sees the old file or the whole new one."""
        if self.local_root is not None:
            target = self.local_path(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            staged = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                shutil.copyfile(local, staged)
                os.replace(staged, target)
            finally:
                staged.unlink(missing_ok=True)
            return
        # An S3 PUT (or a completed multipart upload) replaces the object whole.
        self._run(self.fs.put_file, str(local), self.path(key))

    def get_file(self, key: str, local: Path) -> None:
        """Copy a stored file to ``local``, written under a temporary name and renamed."""
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, staged = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".part", dir=local.parent)
        os.close(fd)
        try:
            self._run(self.fs.get_file, self.path(key), staged)
            os.replace(staged, local)
        finally:
            Path(staged).unlink(missing_ok=True)

    def remove(self, key: str) -> None:
        """Delete the file or the whole folder under the key; nothing there is not an error."""
        path = self.path(key)
        try:
            if self._run(self.fs.exists, path):
                self._run(self.fs.rm, path, recursive=True)
        except FileNotFoundError:
            pass

    def children(self, key: str) -> list[str]:
        """Names of the files and folders directly under the key, sorted; empty when there are none."""
        try:
            entries = self._run(self.fs.ls, self.path(key), detail=False)
        except FileNotFoundError:
            return []
        base = self.path(key).rstrip("/")
        names = {str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries if str(entry).rstrip("/") != base}
        return sorted(names)

    def list_files(self, key: str) -> list[StoredFile]:
        """Every file under the key (recursively), named relative to it, sorted by name."""
        base = self.path(key)
        try:
            found = self._run(self.fs.find, base, detail=True)
        except FileNotFoundError:
            return []
        files = []
        for path, info in found.items():
            name = path[len(base):].lstrip("/") if path.startswith(base) else path
            if name and info.get("type", "file") == "file":
                files.append(StoredFile(name, int(info.get("size") or 0)))
        return sorted(files, key=lambda f: f.name)

    # --- published folders ------------------------------------------------------------------------

    def publish_folder(self, source: Path, key: str, *, move: bool = False, exclude: Iterable[str] = ()) -> str:
        """Publish the files below ``source`` as the folder ``key``, replacing an earlier one whole.

        Returns the new version. ``move`` lets a local publish take ``source`` itself (a rename
        on the same file system); otherwise ``source`` is left as it was. Top-level names in
        ``exclude`` are not published.
        """
        key = check_key(key)
        files = _files_under(source, exclude)
        if self.local_root is not None:
            return self._publish_locally(source, files, key, move=move and not tuple(exclude))
        version = f"v{time.time_ns():x}-{uuid.uuid4().hex[:8]}"
        prefix = f"{key}/{version}"
        if files:
            self._run(self.fs.put, [str(path) for _, path in files],
                      [self.path(f"{prefix}/{name}") for name, _ in files])
        previous = self.published(key)
        manifest = {"version": version, "files": [{"name": name, "size": path.stat().st_size}
                                                  for name, path in files],
                    "published_at": time.time()}
        # The manifest last: until this PUT, readers see the previous version (or none).
        self._run(self.fs.pipe_file, self.path(f"{key}/{MANIFEST}"), json.dumps(manifest).encode())
        if previous is not None and previous.version != version:
            self._remove_quietly(previous.prefix)
        return version

    def _publish_locally(self, source: Path, files: list[tuple[str, Path]], key: str, *, move: bool) -> str:
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Staged beside the target (same file system), so the renames below are atomic.
        staging = target.with_name(f".{target.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            if move:
                shutil.move(str(source), staging)
            else:
                staging.mkdir()
                for name, path in files:
                    (staging / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, staging / name)
            if target.exists():
                # An earlier publish is replaced whole: moved aside, then removed.
                aside = target.with_name(f".{target.name}.replaced-{uuid.uuid4().hex[:8]}")
                os.rename(target, aside)
                os.rename(staging, target)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self._local_version(target)

    @staticmethod
    def _local_version(folder: Path) -> str:
        # Each publish renames a new folder into place: a new inode, or at least a new mtime.
        stat = folder.stat()
        return f"{stat.st_ino:x}-{stat.st_mtime_ns:x}"

    def published(self, key: str) -> Published | None:
        """The published folder ``key`` (its version and files), or None when nothing is published."""
        key = check_key(key)
        if self.local_root is not None:
            folder = self.local_path(key)
            if not folder.is_dir():
                return None
            files = tuple(StoredFile(name, path.stat().st_size) for name, path in _files_under(folder))
            return Published(version=self._local_version(folder), prefix=key, files=files)
        try:
            manifest = json.loads(self._run(self.fs.cat_file, self.path(f"{key}/{MANIFEST}")))
        except FileNotFoundError:
            return None
        version = str(manifest["version"])
        files = tuple(StoredFile(str(f["name"]), int(f["size"])) for f in manifest["files"])
        return Published(version=version, prefix=f"{key}/{check_key(version)}", files=files)

    def fetch_published(self, key: str, destination: Path) -> Published | None:
        """Copy the published folder ``key`` to ``destination`` (replaced whole); None when there is none."""
        published = self.published(key)
        if published is None:
            return None
        staging = destination.with_name(f".{destination.name}.fetch-{uuid.uuid4().hex[:8]}")
        try:
            staging.mkdir(parents=True)
            if published.files:
                names = [check_key(f.name) for f in published.files]
                for name in names:
                    (staging / name).parent.mkdir(parents=True, exist_ok=True)
                self._run(self.fs.get, [self.path(f"{published.prefix}/{name}") for name in names],
                            [str(staging / name) for name in names])
            if destination.exists():
                shutil.rmtree(destination)
            os.rename(staging, destination)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return published

    def remove_published(self, key: str) -> None:
        """Delete a published folder: its manifest first, so readers stop seeing it, then its files."""
        key = check_key(key)
        if self.local_root is None:
            self._remove_quietly(f"{key}/{MANIFEST}")
        self._remove_quietly(key)

    def _remove_quietly(self, key: str) -> None:
        # Leftovers only cost space; a failed delete must not fail what already succeeded.
        try:
            self.remove(key)
        except OSError:
            pass


def _gevent_patched() -> bool:
    """Whether gevent has monkey-patched threading in this process (a gunicorn gevent worker)."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("threading"))


def _native_pool() -> Any:
    """gevent's pool of real threads (gevent is imported wherever it has patched threading)."""
    return sys.modules["gevent"].get_hub().threadpool


class _NativeReads(io.RawIOBase):
    """A file of an object store whose reads run on a real thread (see Storage._run)."""

    def __init__(self, handle: Any) -> None:
        super().__init__()
        self.handle = handle

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return bytes(_native_pool().apply(self.handle.read, (size,)))

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            _native_pool().apply(self.handle.close)
        super().close()


@lru_cache(maxsize=8)
def open_storage(url: str) -> Storage:
    """The Storage of a URL, one per process and URL."""
    return Storage(url)
