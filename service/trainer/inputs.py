"""A job's stored inputs copied to this node's scratch space before it trains.

With an object store (FITJOBS_STORAGE_URL), uploaded datasets and the models of earlier jobs
live in storage, not on a shared disk: they are fetched into the same local folders a local
storage keeps them in ($FITJOBS_HOME/uploads, $FITJOBS_HOME/artifacts), so the data and model
loaders read them as they always do. With local storage there is nothing to fetch.
"""

from __future__ import annotations

import logging
from typing import Any

from service.artifacts import artifacts_key, job_artifacts_dir
from service.config import Settings
from service.locations import DATASET_ID, JOB_ID, upload_dir
from service.uploads import upload_key

log = logging.getLogger(__name__)


def fetch_inputs(spec: dict[str, Any], settings: Settings) -> None:
    """Copy the uploads and job models a spec reads from object storage to scratch, where missing."""
    storage = settings.storage
    if storage.is_local:
        return
    for role in ("train", "validation"):
        dataset_id = (spec["data"].get(role) or {}).get("upload")
        if isinstance(dataset_id, str) and DATASET_ID.match(dataset_id):
            fetch_upload(settings, dataset_id)
    model = spec.get("model")
    if isinstance(model, dict) and isinstance(model.get("job"), str) and JOB_ID.match(model["job"]):
        local = job_artifacts_dir(settings.artifacts_dir, model["job"])
        if not local.is_dir():
            # Missing in storage too: the model loader then reports model_not_found.
            storage.fetch_published(artifacts_key(model["job"]), local)


def fetch_upload(settings: Settings, dataset_id: str) -> None:
    """Copy an uploaded dataset's file from storage into its local folder, unless it is there already."""
    storage = settings.storage
    key = upload_key(storage, dataset_id)
    if key is None:
        return  # deleted: the data loader reports upload_not_found
    local = upload_dir(settings.uploads_dir, dataset_id) / key.rsplit("/", 1)[1]
    if local.is_file() and local.stat().st_size == storage.size(key):
        return
    log.info("fetching upload %s from %s", dataset_id, storage.describe(key))
    storage.get_file(key, local)
