"""Large review tables with planted problems, for the dry run: an unknown validation label,
validation rows copied from the training rows, and texts far longer than max_length."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tests.support.sentiment_data import FILLER, NEGATIVE, POSITIVE, write_table

EXTRA_WORDS = ["director", "camera", "dialogue", "scene", "actor", "actress", "script", "screen", "score",
               "moment", "character", "twist", "ending", "sequel", "budget", "audience", "critic", "theatre",
               "performance", "editing", "lighting", "costume", "cinematography", "pacing", "runtime"]


def review(rng: random.Random, label: str, words: int) -> str:
    """A review of about ``words`` words carrying cues of its label."""
    cues = POSITIVE if label == "positive" else NEGATIVE
    body = [rng.choice(FILLER + EXTRA_WORDS) for _ in range(max(words - 2, 1))] + rng.sample(cues, 2)
    rng.shuffle(body)
    return " ".join(body)


def planted_tables(folder: Path, train_rows: int = 20_000, validation_rows: int = 2_000, *,
                   long_share: float = 0.3, duplicate_share: float = 0.05,
                   unknown_label_row: int = 7, seed: int = 0) -> dict[str, Any]:
    """Write train.csv and validation.csv under ``folder``; returns the paths and what was planted.

    ``long_share`` of all rows have 200-400 words (cut at any usual max_length); ``duplicate_share``
    of the validation rows copy a training row's text; validation row ``unknown_label_row``
    (from 1) has the label "neutral", which the training rows lack.
    """
    rng = random.Random(seed)

    def row(index: int) -> dict[str, Any]:
        label = "positive" if index % 2 == 0 else "negative"
        words = rng.randint(200, 400) if rng.random() < long_share else rng.randint(5, 40)
        return {"text": review(rng, label, words), "label": label}

    train = [row(index) for index in range(train_rows)]
    validation = [row(index) for index in range(validation_rows)]
    copied = rng.sample(range(validation_rows), round(duplicate_share * validation_rows))
    for index in copied:
        validation[index] = dict(rng.choice(train))
    validation[unknown_label_row - 1] = {"text": review(rng, "positive", 12), "label": "neutral"}
    duplicated_rows = sorted(index + 1 for index in copied if index != unknown_label_row - 1)
    return {"train": write_table(train, folder / "train.csv"),
            "validation": write_table(validation, folder / "validation.csv"),
            "duplicated_rows": duplicated_rows, "unknown_label_row": unknown_label_row}
