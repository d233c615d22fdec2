"""Small, learnable sentiment data sets made by the tests (no downloads)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

POSITIVE = ["wonderful", "delightful", "brilliant", "moving", "charming", "superb", "great", "lovely"]
NEGATIVE = ["boring", "awful", "dull", "clumsy", "tedious", "painful", "terrible", "bland"]
FILLER = ["the", "film", "movie", "story", "acting", "was", "is", "really", "quite", "and", "plot", "cast"]
WORDS = POSITIVE + NEGATIVE + FILLER


def sentiment_rows(n: int, seed: int, pair: bool = False) -> list[dict[str, Any]]:
    """``n`` rows alternating "positive"/"negative", each text carrying two cue words."""
    rng = random.Random(seed)
    rows = []
    for index in range(n):
        label = "positive" if index % 2 == 0 else "negative"
        cues = POSITIVE if label == "positive" else NEGATIVE
        words = rng.sample(FILLER, 3) + rng.sample(cues, 2)
        rng.shuffle(words)
        row: dict[str, Any] = {"text": " ".join(words), "label": label}
        if pair:
            row["context"] = " ".join(rng.sample(FILLER, 3))
        rows.append(row)
    return rows


def write_table(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write rows as .csv, .json, .jsonl or .parquet, chosen by the file's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix in (".csv", ".parquet"):
        import pandas as pd

        frame = pd.DataFrame(rows)
        if suffix == ".csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
    else:
        raise ValueError(f"unsupported table type {suffix!r}")
    return path
