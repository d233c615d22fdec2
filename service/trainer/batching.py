"""Length-bucketed batches: rows of similar token length share a batch, padded to one of a few lengths.

Random batches of texts of mixed lengths are mostly padding. Each epoch the rows are shuffled
(seeded by the spec's seed and the epoch), cut into chunks of ``CHUNK_BATCHES`` batches, and
each chunk is sorted by length before it is cut into batches, as Hugging Face's
``group_by_length`` does; the batches of the whole epoch are then shuffled again. A batch is
padded to the smallest of ``padded_lengths(...)`` that holds its longest row, so the
train step is traced once (and XLA-compiled, where on, a handful of times).

Batches are made in NumPy by a generator, not by tf.data's ragged ops: making a padded batch
of 32 rows costs microseconds, while ragged batching and a prefetch thread competed with the
train step for the two cores these machines have.

With gradient accumulation (``accumulate`` > 1) the rows are grouped as for batches of
``batch_size × accumulate`` rows, one optimizer update each, and every such group is cut into
micro-batches of ``batch_size``: the update sees exactly the rows one big batch would. Each
micro-batch then also carries its share of the update's rows (``update_weight``) and whether it
is the update's last (``apply_update``), for service.trainer.accumulation's train step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Extra features of a micro-batch when gradients are accumulated (see the module docstring).
UPDATE_WEIGHT = "update_weight"
APPLY_UPDATE = "apply_update"
# A feature of a batch: a padded token array, or one of the two scalars above.
Feature = np.ndarray | np.generic
# Sorted chunks of this many batches: large enough that a chunk's batches hold rows of nearly
# one length, small enough that every epoch still mixes rows from across the data.
CHUNK_BATCHES = 50


def padded_lengths(max_length: int, multiple: int = 8, coarse: bool = False) -> tuple[int, ...]:
    """The lengths batches are padded to: multiples of ``multiple`` up to max_length, or fewer when ``coarse``.

    Without XLA the train step is traced once whatever the shapes (they are dynamic in its
    signature), so the finest rounding the device likes wins: multiples of 8 on GPUs (what
    tensor cores want), every length (``multiple`` 1) on CPUs, which gain nothing from
    rounding. XLA compiles each shape anew, so with it (``coarse``) the lengths are powers of
    two from 8 and the multiples of 8 halfway between them: at most a third of padding from
    rounding, and ten lengths for max_length 256. max_length itself is always one of them.
    """
    if not coarse:
        return tuple(sorted({*range(multiple, max_length, multiple), max_length}))
    lengths = {max_length}
    power = 8
    while power < max_length:
        lengths.add(power)
        if power >= 16 and power * 3 // 2 < max_length:
            lengths.add(power * 3 // 2)
        power *= 2
    return tuple(sorted(lengths))


@dataclass(frozen=True)
class Batch:
    """The rows of one batch, in the order they are stacked, and the length they are padded to."""

    rows: np.ndarray
    length: int
    update_rows: int = 0  # rows of the optimizer update this batch belongs to (0: the batch's own)
    ends_update: bool = True  # whether the update is applied after this batch


@dataclass(frozen=True)
class TokenColumns:
    """Tokenized rows as flat arrays with row offsets (zero-copy from Arrow), plus their labels."""

    values: dict[str, np.ndarray]
    offsets: np.ndarray
    labels: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """Token count of each row."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_dataset(cls, tokens: Any) -> TokenColumns:
        """Read the model inputs and ``labels`` of a tokenized `datasets` Dataset without Python lists."""
        import pyarrow as pa

        names = [name for name in MODEL_INPUTS if name in tokens.column_names]
        table = tokens.with_format("arrow")[:]
        values: dict[str, np.ndarray] = {}
        offsets = None
        for name in names:
            column = table.column(name).combine_chunks()
            if isinstance(column, pa.ChunkedArray):  # an empty table keeps its chunks
                column = pa.concat_arrays(column.chunks) if column.num_chunks else pa.array([], pa.list_(pa.int32()))
            column_offsets = column.offsets.to_numpy().astype(np.int64)
            start = column_offsets[0]
            values[name] = column.values.to_numpy(zero_copy_only=False)[start:column_offsets[-1]].astype(np.int32)
            offsets = column_offsets - start
        assert offsets is not None, "tokenized data has no input_ids"
        labels = table.column("labels").to_numpy().astype(np.int32)
        return cls(values=values, offsets=offsets, labels=labels)


class BucketedBatches:
    """Padded (features, labels) batches of one split, grouped by length; shuffled per epoch when seeded."""

    def __init__(self, columns: TokenColumns, batch_size: int, max_length: int, pad_values: dict[str, int],
                 seed: int | None = None, multiple: int = 8, coarse: bool = False, accumulate: int = 1) -> None:
        self.columns = columns
        self.batch_size = batch_size
        self.accumulate = accumulate
        self.lengths_allowed = np.asarray(padded_lengths(max_length, multiple, coarse))
        self.pad_values = pad_values
        self.seed = seed
        self.epoch = 0
        self.skip = 0  # batches of self.epoch already trained (a resumed attempt)

    def __len__(self) -> int:
        """Batches per epoch."""
        return -(-len(self.columns) // self.batch_size)

    def start_epoch(self, epoch: int, skip: int = 0) -> None:
        """Make the next pass over the data yield ``epoch``'s batches, without its first ``skip``."""
        self.epoch = int(epoch)
        self.skip = int(skip)

    def updates(self) -> int:
        """Optimizer updates per epoch."""
        return -(-len(self.columns) // (self.batch_size * self.accumulate))

    def ends_update(self, epoch: int, batch: int) -> bool:
        """Whether batch ``batch`` (0-based) of ``epoch`` is the last of its optimizer update."""
        if self.accumulate == 1:
            return True
        if getattr(self, "_ends_epoch", None) != epoch:
            self._ends = [planned.ends_update for planned in self.plan(epoch)]
            self._ends_epoch = epoch
        return self._ends[batch]

    def plan(self, epoch: int) -> list[Batch]:
        """The batches of ``epoch``: the same for the same seed and epoch, different across epochs."""
        groups = self._groups(epoch, self.batch_size * self.accumulate)
        if self.accumulate == 1:
            return [self._batch(group) for group in groups]
        batches = []
        for group in groups:
            micro = [group[at:at + self.batch_size] for at in range(0, len(group), self.batch_size)]
            batches += [self._batch(rows, len(group), index == len(micro) - 1) for index, rows in enumerate(micro)]
        return batches

    def _batch(self, rows: np.ndarray, update_rows: int = 0, ends_update: bool = True) -> Batch:
        length = self._padded_length(int(self.columns.lengths[rows].max()))
        return Batch(rows=rows, length=length, update_rows=update_rows or len(rows), ends_update=ends_update)

    def _groups(self, epoch: int, size: int) -> list[np.ndarray]:
        """Row groups of ``size`` (one batch, or one update's micro-batches), grouped by length."""
        lengths = self.columns.lengths
        if self.seed is None:
            # Validation: order is irrelevant, so sort everything for the least padding.
            order = np.argsort(-lengths, kind="stable")
            groups = [order[start:start + size] for start in range(0, len(order), size)]
        else:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(lengths))
            chunk = size * CHUNK_BATCHES
            groups = []
            for start in range(0, len(order), chunk):
                part = order[start:start + chunk]
                part = part[np.argsort(-lengths[part], kind="stable")]
                groups += [part[at:at + size] for at in range(0, len(part), size)]
            # The one short batch stays last, so every other step has the full batch size.
            full = [group for group in groups if len(group) == size]
            short = [group for group in groups if len(group) < size]
            groups = [full[i] for i in rng.permutation(len(full))] + short
        return groups

    def _padded_length(self, longest: int) -> int:
        index = int(np.searchsorted(self.lengths_allowed, longest))
        return int(self.lengths_allowed[min(index, len(self.lengths_allowed) - 1)])

    def arrays(self, batch: Batch) -> tuple[dict[str, Feature], np.ndarray]:
        """The padded NumPy features and the labels of one batch."""
        offsets = self.columns.offsets
        features: dict[str, Feature] = {}
        for name, flat in self.columns.values.items():
            padded = np.full((len(batch.rows), batch.length), self.pad_values.get(name, 0), dtype=np.int32)
            for slot, row in enumerate(batch.rows):
                start, end = offsets[row], offsets[row + 1]
                padded[slot, :end - start] = flat[start:end]
            features[name] = padded
        if self.accumulate > 1:
            features[UPDATE_WEIGHT] = np.float32(len(batch.rows) / batch.update_rows)
            features[APPLY_UPDATE] = np.bool_(batch.ends_update)
        return features, self.columns.labels[batch.rows]

    def sample(self, rows: int) -> tuple[dict[str, Feature], np.ndarray]:
        """Model inputs and labels of the first ``rows`` rows of the first batch (no accumulation fields)."""
        features, labels = self.arrays(self._batch(np.arange(min(rows, len(self.columns)))))
        return {name: features[name] for name in self.columns.values}, labels

    def _generate(self) -> Iterator[tuple[dict[str, Feature], np.ndarray]]:
        batches = self.plan(self.epoch)[self.skip:]
        self.skip = 0
        for batch in batches:
            yield self.arrays(batch)

    def dataset(self) -> Any:
        """A tf.data.Dataset of this split's batches for the current epoch, with dynamic shapes.

        The generator runs when the first batch is fetched, after Keras' on_epoch_begin, so
        ``start_epoch`` called from a callback picks the epoch. No prefetch: it would start
        the generator before the epoch is known.
        """
        import tensorflow as tf

        names = list(self.columns.values)
        features = {name: tf.TensorSpec(shape=(None, None), dtype=tf.int32) for name in names}
        if self.accumulate > 1:
            features[UPDATE_WEIGHT] = tf.TensorSpec(shape=(), dtype=tf.float32)
            features[APPLY_UPDATE] = tf.TensorSpec(shape=(), dtype=tf.bool)
        signature = (features, tf.TensorSpec(shape=(None,), dtype=tf.int32))
        dataset = tf.data.Dataset.from_generator(self._generate, output_signature=signature)
        return dataset.apply(tf.data.experimental.assert_cardinality(len(self)))

    def stats(self, epochs: range) -> tuple[int, int, set[tuple[int, int]]]:
        """Real tokens, padded tokens and the distinct (rows, length) shapes over ``epochs``."""
        lengths = self.columns.lengths
        real = padded = 0
        shapes: set[tuple[int, int]] = set()
        for epoch in epochs:
            for batch in self.plan(epoch):
                real += int(lengths[batch.rows].sum())
                padded += len(batch.rows) * batch.length
                shapes.add((len(batch.rows), batch.length))
        return real, padded, shapes
