"""Length-bucketed batching: shapes from a fixed set, every row once an epoch, seeded order that changes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from service.trainer.batching import BucketedBatches, TokenColumns, padded_lengths

PAD = {"input_ids": 0, "attention_mask": 0}


def columns_of(lengths: list[int]) -> TokenColumns:
    """Rows whose input_ids are row_id + 1 repeated ``length`` times, so a batch tells which rows it holds."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.concatenate([np.full(length, row + 1, dtype=np.int32) for row, length in enumerate(lengths)])
    return TokenColumns(values={"input_ids": ids, "attention_mask": np.ones_like(ids)}, offsets=offsets,
                        labels=np.arange(len(lengths), dtype=np.int32) % 2)


def skewed_lengths(rows: int, max_length: int, seed: int = 0) -> list[int]:
    """Mostly short rows and a tail of long ones, like real texts."""
    rng = np.random.default_rng(seed)
    return [int(min(max_length, max(3, length))) for length in rng.lognormal(3.0, 0.8, rows)]


def test_padded_lengths_are_multiples_of_8_or_a_coarse_set_for_xla() -> None:
    assert padded_lengths(128) == tuple(range(8, 129, 8))
    assert padded_lengths(20, multiple=1) == tuple(range(1, 21))
    assert padded_lengths(100)[-2:] == (96, 100)
    assert padded_lengths(128, coarse=True) == (8, 16, 24, 32, 48, 64, 96, 128)
    assert padded_lengths(256, coarse=True)[-3:] == (128, 192, 256) and len(padded_lengths(256, coarse=True)) == 10
    assert padded_lengths(100, coarse=True)[-2:] == (96, 100)
    assert padded_lengths(8) == padded_lengths(8, coarse=True) == (8,)


def test_each_epoch_holds_every_row_once_in_batches_padded_to_an_allowed_length() -> None:
    lengths = skewed_lengths(1000, 128)
    batches = BucketedBatches(columns_of(lengths), 32, 128, PAD, seed=7)
    allowed = set(padded_lengths(128))
    for epoch in range(3):
        plan = batches.plan(epoch)
        rows = np.concatenate([batch.rows for batch in plan])
        assert sorted(rows.tolist()) == list(range(1000))
        assert len(plan) == len(batches) == 32
        for batch in plan:
            assert batch.length in allowed
            assert max(lengths[row] for row in batch.rows) <= batch.length
            # The next smaller allowed length would not hold the batch's longest row.
            smaller = [length for length in allowed if length < batch.length]
            assert not smaller or max(lengths[row] for row in batch.rows) > max(smaller)
        assert [len(batch.rows) for batch in plan[:-1]] == [32] * 31, "only the last batch is short"


def test_order_is_seeded_and_changes_across_epochs() -> None:
    columns = columns_of(skewed_lengths(500, 128))
    first, again = (BucketedBatches(columns, 16, 128, PAD, seed=3) for _ in range(2))
    orders = [np.concatenate([b.rows for b in first.plan(epoch)]).tolist() for epoch in range(3)]
    assert orders[0] == np.concatenate([b.rows for b in again.plan(0)]).tolist()
    assert orders[0] != orders[1] != orders[2] != orders[0]
    other_seed = BucketedBatches(columns, 16, 128, PAD, seed=4)
    assert np.concatenate([b.rows for b in other_seed.plan(0)]).tolist() != orders[0]


@pytest.mark.parametrize(("multiple", "coarse", "least"), [(1, False, 0.9), (8, False, 0.8), (8, True, 0.72)])
def test_bucketing_leaves_far_less_padding_than_random_batches_and_few_shapes(multiple: int, coarse: bool,
                                                                              least: float) -> None:
    lengths = skewed_lengths(2000, 128)
    batches = BucketedBatches(columns_of(lengths), 32, 128, PAD, seed=1, multiple=multiple, coarse=coarse)
    real, padded, shapes = batches.stats(range(3))
    rng = np.random.default_rng(1)
    random_padded = 0
    for _ in range(3):
        order = rng.permutation(2000)
        random_padded += sum(max(lengths[row] for row in order[at:at + 32]) * len(order[at:at + 32])
                             for at in range(0, 2000, 32))
    efficiency = real / padded
    assert efficiency > least, efficiency
    assert efficiency > 1.5 * real / random_padded
    assert len(shapes) <= len(padded_lengths(128, multiple, coarse)) + 1


def test_validation_batches_are_sorted_by_length_and_the_same_every_epoch() -> None:
    lengths = skewed_lengths(300, 64)
    batches = BucketedBatches(columns_of(lengths), 32, 64, PAD)
    plan = batches.plan(0)
    assert [b.rows.tolist() for b in plan] == [b.rows.tolist() for b in batches.plan(5)]
    longest = [max(lengths[row] for row in batch.rows) for batch in plan]
    assert longest == sorted(longest, reverse=True)


def test_arrays_pad_each_row_with_the_pad_value_of_its_input() -> None:
    batches = BucketedBatches(columns_of([3, 9, 5]), 3, 16, {"input_ids": 0, "attention_mask": 0})
    [batch] = batches.plan(0)
    features, labels = batches.arrays(batch)
    assert features["input_ids"].shape == (3, 16)
    assert features["input_ids"].dtype == np.int32
    assert features["input_ids"][0].tolist() == [2] * 9 + [0] * 7  # the longest row first
    assert features["attention_mask"].sum(axis=1).tolist() == [9, 5, 3]
    assert labels.tolist() == [1, 0, 0]


def test_the_dataset_yields_the_epoch_it_was_told_and_skips_batches_a_checkpoint_holds() -> None:
    pytest.importorskip("tensorflow")
    lengths = skewed_lengths(100, 32)
    batches = BucketedBatches(columns_of(lengths), 10, 32, PAD, seed=5)
    dataset = batches.dataset()

    def first_rows(expected_batches: int) -> list[list[int]]:
        # Read as Keras does: exactly the steps left in the epoch (a resumed epoch starts at
        # Keras' initial step, so it never asks for more than the batches not yet trained).
        seen = [(features["input_ids"].numpy()[:, 0] - 1).tolist()
                for features, _ in itertools.islice(dataset, expected_batches)]
        assert len(seen) == expected_batches
        return seen

    batches.start_epoch(2)
    assert first_rows(10) == [b.rows.tolist() for b in batches.plan(2)]
    batches.start_epoch(3, skip=4)
    assert first_rows(6) == [b.rows.tolist() for b in batches.plan(3)[4:]]
    batches.start_epoch(3)  # a skip holds for one pass only
    assert first_rows(10) == [b.rows.tolist() for b in batches.plan(3)]


def test_token_columns_read_a_tokenized_dataset_without_copying_rows_one_by_one() -> None:
    from datasets import Dataset

    tokens = Dataset.from_dict({"input_ids": [[101, 7, 102], [101, 102], [101, 5, 6, 7, 102]],
                                "attention_mask": [[1, 1, 1], [1, 1], [1, 1, 1, 1, 1]], "labels": [1, 0, 1]})
    columns = TokenColumns.from_dataset(tokens.select([2, 0, 1]))  # a selection reads through an index
    assert columns.lengths.tolist() == [5, 3, 2]
    assert columns.values["input_ids"].tolist() == [101, 5, 6, 7, 102, 101, 7, 102, 101, 102]
    assert columns.labels.tolist() == [1, 1, 0]
    assert "token_type_ids" not in columns.values
