"""Hugging Face caches written locally, so Hub names load offline (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE).

A model goes where huggingface_hub keeps downloads (hub/models--org--name/snapshots/<commit>,
with refs/<revision> naming the commit); a dataset goes where `datasets` keeps a prepared
Hub dataset (datasets/org___name/<config>/0.0.0/<hash>), which load_dataset reuses when the
Hub cannot be reached. Both layouts are the ones a real download leaves behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from tests.support.service import REPO_ROOT


def cache_hub_model(model_dir: Path, hf_home: Path, repo_id: str, revision: str = "main") -> str:
    """Put ``model_dir``'s files in ``hf_home``'s hub cache as ``repo_id`` at ``revision``; returns the commit."""
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in model_dir.iterdir():
        if path.is_file():
            shutil.copy2(path, snapshot / path.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit


# Runs in a child process: `datasets` fixes its cache folder (from HF_HOME) when imported.
BUILD_DATASET_CACHE = textwrap.dedent("""
    import json, os, shutil, sys, tempfile
    from pathlib import Path
    hf_home, repo_id, config, splits = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    os.environ["HF_HOME"] = hf_home
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.packaged_modules.parquet.parquet import Parquet

    name = repo_id.split("/")[-1]
    with tempfile.TemporaryDirectory() as scratch:
        files = {}
        for split, rows in splits.items():
            files[split] = os.path.join(scratch, split + ".parquet")
            pq.write_table(pa.Table.from_pylist(rows), files[split])
        builder = Parquet(cache_dir=os.path.join(scratch, "cache"), data_files=files)
        builder.download_and_prepare()
        namespace = repo_id.replace("/", "___")
        target = Path(datasets.config.HF_DATASETS_CACHE) / namespace / config / "0.0.0" / "fitjobs0test"
        target.mkdir(parents=True, exist_ok=True)
        for path in Path(builder.cache_dir).iterdir():
            if path.suffix == ".arrow":
                shutil.copy(path, target / path.name.replace("parquet-", name + "-", 1))
            elif path.name == "dataset_info.json":
                info = json.loads(path.read_text())
                info.update(config_name=config, dataset_name=name)
                (target / path.name).write_text(json.dumps(info))
    print(target)
""")


def cache_hub_dataset(hf_home: Path, repo_id: str, config: str, splits: dict[str, list[dict[str, Any]]]) -> Path:
    """Write ``splits`` as the prepared cache of Hub dataset ``repo_id`` (configuration ``config``)."""
    done = subprocess.run([sys.executable, "-c", BUILD_DATASET_CACHE, str(hf_home), repo_id, config,
                           json.dumps(splits)], cwd=REPO_ROOT, check=True, capture_output=True, text=True,
                          timeout=120)
    return Path(done.stdout.strip().splitlines()[-1])
