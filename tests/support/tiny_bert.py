"""A 2-layer BERT with a locally written WordPiece vocabulary: `python -m tests.support.tiny_bert DEST`."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.sentiment_data import WORDS

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_tiny_bert(dest: Path, max_positions: int = 128) -> Path:
    """Save a seeded, randomly initialised tiny BERT encoder (TF weights) and its tokenizer to ``dest``."""
    from service.trainer.tf_runtime import prepare_tensorflow

    prepare_tensorflow(0)
    import tf_keras
    from transformers import BertConfig, BertTokenizerFast, TFBertModel

    dest.mkdir(parents=True, exist_ok=True)
    vocab = dest / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL_TOKENS + WORDS) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True, model_max_length=max_positions)
    config = BertConfig(vocab_size=len(SPECIAL_TOKENS) + len(WORDS), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=max_positions)
    tf_keras.utils.set_random_seed(0)  # the same "pretrained" weights in every test run
    # An encoder without a head, like a Hub checkpoint: fine-tuning adds a new classifier.
    model = TFBertModel(config)
    model(model.dummy_inputs, training=False)
    model.save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))
    return dest


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m tests.support.tiny_bert DEST [MAX_POSITIONS]")
    build_tiny_bert(Path(sys.argv[1]), *(int(arg) for arg in sys.argv[2:]))
