"""Load a model downloaded from fitjobs and label some texts: python examples/predict.py MODEL_DIR TEXT..."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # transformers' TF models need Keras 2

import tensorflow as tf
from transformers import AutoTokenizer, TFAutoModelForSequenceClassification


def main(model_dir: str, texts: list[str]) -> None:
    """Print the predicted label name and its probability for every text."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = TFAutoModelForSequenceClassification.from_pretrained(model_dir)
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="tf")
    probabilities = tf.nn.softmax(model(**batch).logits, axis=-1).numpy()
    for text, row in zip(texts, probabilities, strict=True):
        best = int(row.argmax())
        print(f"{model.config.id2label[best]}\t{row[best]:.3f}\t{text}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python examples/predict.py MODEL_DIR TEXT [TEXT ...]")
    main(sys.argv[1], sys.argv[2:])
