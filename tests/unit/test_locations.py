"""Paths in specs stay inside their roots however they are spelled; model references resolve to sources."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.locations import Locations, PathRefused, contained_path, model_source, upload_file


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "rows.csv").write_text("text,label\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.csv").write_text("text,label\n")
    return folder


@pytest.mark.parametrize("value", ["sub/rows.csv", "sub", "new/not-yet.csv", "./sub/rows.csv", "sub//rows.csv"])
def test_paths_inside_the_root_resolve(root: Path, value: str) -> None:
    resolved = contained_path(value, [root], "data")
    assert resolved.is_relative_to(root.resolve())


def test_absolute_paths_inside_any_root_are_accepted(root: Path, tmp_path: Path) -> None:
    assert contained_path(str(root / "sub" / "rows.csv"), [root], "data") == (root / "sub" / "rows.csv").resolve()
    other = tmp_path / "outside"
    assert contained_path(str(other / "secret.csv"), [root, other], "model") == (other / "secret.csv").resolve()


@pytest.mark.parametrize(("value", "why"), [
    ("../outside/secret.csv", "'..'"),
    ("sub/../../outside/secret.csv", "'..'"),
    ("{outside}/secret.csv", "outside the data root"),
    ("/etc/passwd", "outside the data root"),
    ("%2e%2e/outside/secret.csv", "percent-escape"),
    ("sub%2f..%2f..%2foutside", "percent-escape"),
    ("%252e%252e/x", "percent-escape"),
    ("\uff0e\uff0e/outside/secret.csv", "'..'"),
    ("sub\\..\\..\\outside", "backslash"),
    ("~/secret.csv", "'~'"),
    ("sub/rows.csv\x00.txt", "NUL"),
])
def test_paths_leaving_the_root_are_refused(root: Path, tmp_path: Path, value: str, why: str) -> None:
    with pytest.raises(PathRefused, match=why.replace("(", r"\(")):
        contained_path(value.format(outside=tmp_path / "outside"), [root], "data")


def test_symlinks_are_followed_before_the_check(root: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path / "outside" / "secret.csv", root / "link.csv")
    os.symlink(tmp_path / "outside", root / "dir-link")
    os.symlink(root / "sub" / "rows.csv", root / "inner-link.csv")
    for escaping in ("link.csv", "dir-link/secret.csv", str(root / "link.csv")):
        with pytest.raises(PathRefused, match="outside"):
            contained_path(escaping, [root], "data")
    assert contained_path("inner-link.csv", [root], "data") == (root / "sub" / "rows.csv").resolve()


def test_a_root_that_is_itself_a_symlink_still_contains_its_files(tmp_path: Path, root: Path) -> None:
    linked_root = tmp_path / "root-link"
    os.symlink(root, linked_root)
    assert contained_path("sub/rows.csv", [linked_root], "data") == (root / "sub" / "rows.csv").resolve()
    assert contained_path(str(linked_root / "sub" / "rows.csv"), [linked_root], "data").is_file()


def test_no_root_refuses_everything(tmp_path: Path) -> None:
    with pytest.raises(PathRefused, match="no model root"):
        contained_path(str(tmp_path), [], "model")


def test_model_references(tmp_path: Path) -> None:
    locations = Locations(data_root=tmp_path / "data", uploads_dir=tmp_path / "uploads",
                          artifacts_dir=tmp_path / "artifacts", model_roots=(tmp_path / "models",))
    hub = model_source("org/name", locations)
    assert (hub.kind, hub.ref, hub.revision, hub.local_folder) == ("hub", "org/name", None, None)
    pinned = model_source({"hub": "org/name", "revision": "v2"}, locations)
    assert pinned.revision == "v2" and "v2" in pinned.describe() and pinned.cache_key() != hub.cache_key()
    local = model_source({"path": "tiny"}, locations)
    assert local.kind == "local" and Path(local.ref) == (tmp_path / "models" / "tiny").resolve()
    assert model_source(str(tmp_path / "models" / "tiny"), locations).ref == local.ref
    job = model_source({"job": "job_" + "a" * 32}, locations)
    assert job.kind == "job" and job.local_folder == tmp_path / "artifacts" / ("job_" + "a" * 32) / "model"
    with pytest.raises(PathRefused):
        model_source("/etc", locations)
    with pytest.raises(PathRefused):
        model_source({"job": "../../etc"}, locations)
    assert model_source("/etc", locations, enforce_roots=False).ref == os.path.realpath("/etc")


def test_upload_ids_are_checked_before_they_name_a_folder(tmp_path: Path) -> None:
    with pytest.raises(PathRefused, match="not a dataset id"):
        upload_file(tmp_path, "../etc")
    assert upload_file(tmp_path, "ds_" + "0" * 32) is None
    folder = tmp_path / ("ds_" + "0" * 32)
    folder.mkdir()
    (folder / "data.csv").write_text("text,label\n")
    assert upload_file(tmp_path, "ds_" + "0" * 32) == folder / "data.csv"


@pytest.mark.parametrize("value", ["/proc/self/environ", "/proc/self/cwd", "/sys/kernel", "/dev/zero"])
def test_system_folders_are_refused_even_under_a_root_of_slash(value: str) -> None:
    with pytest.raises(PathRefused, match=r"leads into /proc, /sys or /dev") as caught:
        contained_path(value, [Path("/")], "data")
    assert os.getcwd() not in str(caught.value) and str(os.getpid()) not in str(caught.value)


def test_refusals_name_the_rule_not_where_a_link_leads(root: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path / "outside" / "secret.csv", root / "link.csv")
    os.symlink("/proc/self/environ", root / "environ.csv")
    with pytest.raises(PathRefused, match="leads outside the data root through a symbolic link") as outside:
        contained_path("link.csv", [root], "data")
    assert str(tmp_path / "outside") not in str(outside.value) and str(root) not in str(outside.value)
    with pytest.raises(PathRefused, match="leads into /proc") as proc:
        contained_path("environ.csv", [root], "data")
    assert str(os.getpid()) not in str(proc.value)


def test_a_job_model_swapped_for_a_link_out_of_the_artifacts_folder_is_refused(tmp_path: Path) -> None:
    locations = Locations(data_root=tmp_path / "data", uploads_dir=tmp_path / "uploads",
                          artifacts_dir=tmp_path / "artifacts", model_roots=(tmp_path / "models",))
    job_id = "job_" + "b" * 32
    (tmp_path / "artifacts" / job_id).mkdir(parents=True)
    os.symlink(tmp_path / "outside", tmp_path / "artifacts" / job_id / "model")
    with pytest.raises(PathRefused, match="outside the artifacts folder") as caught:
        model_source({"job": job_id}, locations)
    assert str(tmp_path / "outside") not in str(caught.value)
    assert model_source({"job": job_id}, locations, enforce_roots=False).kind == "job"


def test_links_by_way_of_proc_are_refused_though_they_end_elsewhere(root: Path) -> None:
    os.symlink("/proc/self/cwd", root / "cwd-link")
    for value in ("/proc/self/cwd/README.md", "cwd-link/README.md", str(root / "cwd-link")):
        with pytest.raises(PathRefused, match="leads into /proc") as caught:
            contained_path(value, [root, Path("/")], "data")
        assert os.getcwd() not in str(caught.value)
