"""DatasetStore on SQLite and PostgreSQL: records of uploaded datasets, newest first, and their removal."""

from __future__ import annotations

import pytest

from service.store import JobStore
from service.store.dataset_store import DatasetNotFound, DatasetStore
from service.uploads import new_dataset_id


def test_add_get_list_remove(store: JobStore) -> None:
    datasets = DatasetStore(store.engine)
    ids = [new_dataset_id() for _ in range(3)]
    for index, dataset_id in enumerate(ids):
        added = datasets.add(dataset_id=dataset_id, filename=f"part-{index}.csv", format="csv",
                             size_bytes=5 * 2**30 + index, sha256="ab" * 32, rows=10 + index,
                             columns=["text", "label"])
        assert added.id == dataset_id and added.created_at.tzinfo is not None
    got = datasets.get(ids[1])
    assert (got.filename, got.size_bytes, got.rows, got.columns) == ("part-1.csv", 5 * 2**30 + 1, 11, ["text", "label"])

    page, next_seq = datasets.list(limit=2)
    assert [d.id for d in page] == [ids[2], ids[1]] and next_seq is not None
    rest, end = datasets.list(limit=2, before_seq=next_seq)
    assert [d.id for d in rest] == [ids[0]] and end is None

    datasets.remove(ids[1])
    with pytest.raises(DatasetNotFound):
        datasets.get(ids[1])
    with pytest.raises(DatasetNotFound):
        datasets.remove(ids[1])
    assert [d.id for d in datasets.list()[0]] == [ids[2], ids[0]]
