"""Uploaded datasets: upload (multipart or raw body), list, read, delete."""

from __future__ import annotations

import logging
from typing import IO, Any

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header

from service.api.auth import current_tenant, listed_tenant, visible
from service.api.context import current_settings
from service.api.paging import decode_cursor, encode_cursor
from service.api.sources import active_jobs_using, check_unavailable, current_check_runner, current_dataset_store
from service.api.tenant import quota_exceeded
from service.check_runner import CheckBusy, CheckFailed, CheckLimitExceeded
from service.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    ServiceUnavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from service.schemas import DatasetListQuerySchema, DatasetListSchema, DatasetSchema, ProblemSchema, UploadQuerySchema
from service.store.dataset_store import DatasetNotFound
from service.tenants import QuotaReached
from service.uploads import (
    UploadedDataset,
    UploadLimits,
    UploadRefused,
    clean_filename,
    keep_upload,
    new_dataset_id,
    remove_upload,
    store_upload,
    upload_suffix,
)

CURSOR_KIND = "ds"  # the prefix inside this list's cursors

blp = Blueprint("datasets", __name__, url_prefix="/v1/datasets",
                description="Uploaded datasets, referenced in specs as {\"upload\": id}.")
log = logging.getLogger(__name__)

# Room for the multipart boundaries and part headers around the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# The raw-body content types that name a format (application/octet-stream also works, with ?filename=).
RAW_UPLOAD_TYPES = ("text/csv", "application/json", "application/x-ndjson", "application/vnd.apache.parquet")
UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "A .csv, .json, .jsonl or .parquet file."}}},
            "encoding": {"file": {"contentType": ", ".join(RAW_UPLOAD_TYPES)}}},
        **{media: {"schema": {"type": "string", "format": "binary"},
                   "description": "The file itself, in the format its content type names; ?filename= (or a "
                                  "Content-Disposition header) may name it, and its suffix then fixes the format."}
           for media in RAW_UPLOAD_TYPES},
    },
}


REFUSALS: dict[int, type[ServiceError]] = {413: PayloadTooLarge, 415: UnsupportedMediaType, 422: ValidationFailed}


def dataset_document(dataset: UploadedDataset) -> dict[str, Any]:
    """The API representation of an uploaded dataset."""
    return {"id": dataset.id, "filename": dataset.filename, "format": dataset.format,
            "size_bytes": dataset.size_bytes, "sha256": dataset.sha256, "rows": dataset.rows,
            "columns": dataset.columns, "created_at": dataset.created_at, "tenant": dataset.tenant}


def load_dataset_record(dataset_id: str) -> UploadedDataset:
    """The caller's uploaded dataset with this id, or a 404 problem; another tenant's is missing alike."""
    try:
        dataset = current_dataset_store().get(dataset_id)
    except DatasetNotFound as exc:
        raise NotFound(f"No uploaded dataset has the id {dataset_id!r}.") from exc
    if not visible(dataset.tenant):
        raise NotFound(f"No uploaded dataset has the id {dataset_id!r}.")
    return dataset


def check_upload_room(size: int | None) -> None:
    """Refuse (429) an upload of ``size`` bytes, when known, that the tenant's upload_bytes quota has no room for."""
    tenant = current_tenant()
    quota = tenant.quotas.upload_bytes
    if not quota or size is None:
        return
    stored = current_dataset_store().stored_bytes(tenant.name)
    if stored + size > quota:
        raise quota_exceeded(QuotaReached("upload_bytes", quota, stored))


def too_large(limit: int) -> PayloadTooLarge:
    """The 413 problem of an upload over the limit."""
    return PayloadTooLarge(f"The upload is larger than the limit of {limit} bytes (FITJOBS_MAX_UPLOAD_BYTES).")


def upload_stream(query: dict[str, Any]) -> tuple[IO[bytes], str, str | None]:
    """(stream, file name, content type) of the uploaded file, from a multipart form or the raw body."""
    limit = current_settings().max_upload_bytes
    if request.mimetype == "multipart/form-data":
        # The form parser spools the file to disk; werkzeug refuses a body over the limit with 413.
        request.max_content_length = limit + MULTIPART_OVERHEAD_BYTES
        try:
            upload = request.files.get("file")
        except RequestEntityTooLarge as exc:
            raise too_large(limit) from exc
        if upload is None:
            fields = ", ".join(repr(name) for name in [*request.files, *request.form]) or "none"
            raise BadRequest(f"A multipart upload needs the file in a form field named 'file' (fields sent: {fields}).")
        return upload.stream, clean_filename(upload.filename) or query.get("filename", ""), upload.mimetype
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    # Bodies without a Content-Length (chunked) are cut off by werkzeug once they pass the limit.
    request.max_content_length = limit
    _, options = parse_options_header(request.headers.get("Content-Disposition"))
    filename = clean_filename(query.get("filename") or options.get("filename"))
    if not filename and request.mimetype in ("", "application/octet-stream"):
        raise BadRequest("Name the uploaded file with ?filename=train.csv (or a Content-Disposition header), "
                         "or send it as multipart/form-data.")
    return request.stream, filename or "upload", request.mimetype


@blp.route("")
class Datasets(MethodView):
    RAW_BODY = True  # an upload's body is the file itself, whatever its content type (see service.api.edge)

    @blp.arguments(DatasetListQuerySchema, location="query")
    @blp.response(200, DatasetListSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """Uploaded datasets, newest first; follow `next` for more."""
        before = decode_cursor(CURSOR_KIND, query["cursor"]) if "cursor" in query else None
        page, next_seq = current_dataset_store().list(limit=query["limit"], before_seq=before,
                                                      tenant=listed_tenant())
        return {"datasets": [dataset_document(dataset) for dataset in page],
                "next": encode_cursor(CURSOR_KIND, next_seq) if next_seq is not None else None}

    @blp.arguments(UploadQuerySchema, location="query")
    @blp.doc(requestBody=UPLOAD_BODY)
    @blp.response(201, DatasetSchema)
    @blp.alt_response(413, schema=ProblemSchema, description="Larger than FITJOBS_MAX_UPLOAD_BYTES.")
    @blp.alt_response(415, schema=ProblemSchema, description="Not a .csv, .json, .jsonl or .parquet file.")
    @blp.alt_response(422, schema=ProblemSchema,
                      description="Not a readable table, compressed data or an archive, over a FITJOBS_UPLOAD_MAX_* "
                                  "limit, or over the check's memory or CPU limit; `detail` says which.")
    @blp.alt_response(429, schema=ProblemSchema,
                      description="The tenant's uploads would exceed its upload_bytes quota (`quota` names it).")
    @blp.alt_response(503, schema=ProblemSchema,
                      description="Every check process stayed busy; retry after `Retry-After` seconds.")
    def post(self, query: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
        """Upload a CSV, JSON, JSON Lines or Parquet file; answers with its id, rows and columns.

        Send it as multipart/form-data (field `file`) or as the raw body with `?filename=`. The
        file is streamed to disk, hashed (sha256) and read the way training reads it, so a file
        that is not a usable table is refused here rather than when a job starts.
        """
        settings = current_settings()
        tenant = current_tenant()
        # A raw body's size is known before it is read; a multipart file's only once it is stored.
        check_upload_room(request.content_length if request.mimetype != "multipart/form-data" else None)
        stream, filename, content_type = upload_stream(query)
        dataset_id = new_dataset_id()
        try:
            suffix = upload_suffix(filename, content_type)
            path, size, sha256 = store_upload(stream, settings.uploads_dir, dataset_id, suffix,
                                              settings.max_upload_bytes)
        except UploadRefused as refused:
            raise REFUSALS[refused.status](refused.message) from refused
        except RequestEntityTooLarge as exc:
            raise too_large(settings.max_upload_bytes) from exc
        try:
            # Before the file is read: an upload over the quota costs no check.
            check_upload_room(size)
            table = current_check_runner().run(
                "inspect_upload", {"path": str(path), "limits": UploadLimits.from_settings(settings).to_dict()},
                settings.check_timeout)
            if "problem" in table:
                message = table["problem"][0].upper() + table["problem"][1:]
                raise ValidationFailed(f"{message}.", errors={"file": [f"{message}."]})
            keep_upload(settings.storage, path, dataset_id)
            dataset = current_dataset_store().add(
                dataset_id=dataset_id, filename=filename, format=suffix.lstrip("."), size_bytes=size,
                sha256=sha256, rows=table["rows"], columns=table["columns"], tenant=tenant.name,
                max_tenant_bytes=tenant.quotas.upload_bytes)
        except QuotaReached as exc:
            remove_upload(settings.uploads_dir, dataset_id, settings.storage)
            raise quota_exceeded(exc) from exc
        except CheckLimitExceeded as exc:
            remove_upload(settings.uploads_dir, dataset_id, settings.storage)
            message = f"The uploaded file could not be checked within its limits: {exc}."
            raise ValidationFailed(message, errors={"file": [message]}) from exc
        except CheckBusy as exc:
            remove_upload(settings.uploads_dir, dataset_id, settings.storage)
            raise ServiceUnavailable(f"The uploaded file could not be checked: {exc}; try again later.",
                                     extra={"retryable": True},
                                     headers={"Retry-After": str(exc.retry_after)}) from exc
        except CheckFailed as exc:
            remove_upload(settings.uploads_dir, dataset_id, settings.storage)
            raise check_unavailable(exc, "The uploaded file could not be checked") from exc
        except BaseException:
            remove_upload(settings.uploads_dir, dataset_id, settings.storage)
            raise
        log.info("stored upload %s (%s, %d bytes, %d rows)", dataset_id, filename, size, dataset.rows)
        return dataset_document(dataset), 201, {"Location": f"/v1/datasets/{dataset_id}"}


@blp.route("/<dataset_id>")
class DatasetResource(MethodView):
    @blp.response(200, DatasetSchema)
    def get(self, dataset_id: str) -> dict[str, Any]:
        """An uploaded dataset: file name, format, size, sha256, rows and columns."""
        return dataset_document(load_dataset_record(dataset_id))

    @blp.response(204)
    @blp.alt_response(409, schema=ProblemSchema, description="A queued or running job reads it.")
    def delete(self, dataset_id: str) -> Response:
        """Delete an uploaded dataset; refused while a queued or running job reads it."""
        load_dataset_record(dataset_id)

        def refuse_while_read() -> None:
            using = active_jobs_using(dataset_id)
            if using:
                ids = [job.id for job in using]
                raise Conflict(f"Dataset {dataset_id} is read by {len(ids)} queued or running job(s): "
                               f"{', '.join(ids)}; cancel them or wait until they end.", extra={"jobs": ids})

        try:
            # Checked with the dataset locked: a submit naming it waits, or has already created its job.
            current_dataset_store().remove(dataset_id, unless=refuse_while_read)
        except DatasetNotFound as exc:
            raise NotFound(f"No uploaded dataset has the id {dataset_id!r}.") from exc
        remove_upload(current_settings().uploads_dir, dataset_id, current_settings().storage)
        return Response(status=204)
