"""The SavedModel for TF Serving: the published model with its tokenizer in the graph.

``export_saved_model`` writes ``saved_model/1/`` (the version folder TF Serving expects) with
two signatures (and, when the first holds tensorflow-text ops, ``saved_model_ids/1/`` with the
second alone, for builds without those ops):

- ``serving_default`` takes raw strings (``text``, and ``text_pair`` for a job trained on
  pairs) and tokenizes them in the graph with tensorflow-text's FastBertTokenizer: the
  normalisation (cleaning, Chinese characters, accents, lower case), [CLS]/[SEP], truncation
  to the job's max_length ("longest first" for pairs), padding and token types of the Hugging
  Face fast tokenizer. Only WordPiece tokenizers (BERT, MiniLM, ...) are put in the graph;
  before it is saved, the graph tokenizer is checked against the Hugging Face one on probe
  texts, and a tokenizer it disagrees with is left out.
- ``serving_ids`` takes ``input_ids``/``attention_mask`` (and ``token_type_ids`` where the
  model has them), for TF Serving builds without tensorflow-text's ops.

Both answer ``logits``, ``probabilities`` (softmax, float32), ``label_ids`` and ``labels``
(the label names); the names are also the asset ``assets/labels.txt``, one per line in id
order. The weights are the published model files loaded again in float32, so the SavedModel
computes what ``from_pretrained`` on the downloaded model computes, whatever precision the
fit used.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from service.artifacts import SAVED_MODEL_FOLDER, SAVED_MODEL_IDS_FOLDER

SAVED_MODEL_VERSION = "1"
LABELS_ASSET = "labels.txt"
TEXT_SIGNATURE = "serving_default"
IDS_SIGNATURE = "serving_ids"
# Texts the graph tokenizer must encode exactly as the Hugging Face tokenizer does before it is exported:
# case, accents, punctuation, spacing, control characters, CJK, digits and long texts that are truncated.
PROBE_TEXTS = (
    "Hello, World!",
    "CAFÉ crème brûlée — naïve façade; Ångström.",
    "don't stop... (really?) #1 @home $5.99 50% a+b=c",
    "  tabs\tand\nnew lines\r\n  ",
    "zero\u200bwidth\u00adsoft hyphen\x00null",
    "line\u2028separator\u00a0no-break\x0bvertical\x0cfeed\x85next\u3000ideographic space",
    "中文字符 mixed with English",
    "",
    "supercalifragilisticexpialidocious antidisestablishmentarianism " * 30,
)


@dataclass(frozen=True)
class WordPieceRecipe:
    """What the graph needs to tokenize as a Hugging Face WordPiece (BERT) fast tokenizer does."""

    vocab: list[str]
    unknown_token: str
    suffix_indicator: str
    max_chars_per_word: int
    clean_text: bool
    handle_chinese_chars: bool
    strip_accents: bool
    lowercase: bool
    cls_id: int
    sep_id: int
    pad_id: int


@dataclass(frozen=True)
class SavedModelExport:
    """What was exported: the signatures, why ``serving_default`` is missing (if it is) and the seconds it took."""

    signatures: list[str]
    reason: str | None
    seconds: float
    ids_only: bool = False  # whether saved_model_ids/1 (serving_ids without tensorflow-text ops) was written

    def as_result(self) -> dict[str, Any]:
        """The job result's ``saved_model`` field."""
        result: dict[str, Any] = {"path": f"{SAVED_MODEL_FOLDER}/{SAVED_MODEL_VERSION}",
                                  "signatures": self.signatures, "seconds": round(self.seconds, 3)}
        if self.ids_only:
            result["ids_only_path"] = f"{SAVED_MODEL_IDS_FOLDER}/{SAVED_MODEL_VERSION}"
        if self.reason is not None:
            result["reason"] = self.reason
        return result


def wordpiece_recipe(tokenizer: Any) -> WordPieceRecipe | str:
    """The tokenizer's WordPiece recipe, or why it cannot be run in a TensorFlow graph."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return (f"{type(tokenizer).__name__} is a slow (Python) tokenizer; only fast WordPiece tokenizers are "
                "put in the graph.")
    state = json.loads(backend.to_str())
    model, normalizer, pre_tokenizer = state.get("model") or {}, state.get("normalizer"), state.get("pre_tokenizer")
    kind = model.get("type")
    if kind != "WordPiece":
        spm = " (a SentencePiece model)" if getattr(tokenizer, "vocab_file", "") and str(
            tokenizer.vocab_file).endswith(".model") else ""
        return (f"{type(tokenizer).__name__} uses a {kind} vocabulary{spm}; only WordPiece vocabularies are "
                "tokenized in the graph (tensorflow-text's FastBertTokenizer).")
    if normalizer is None or normalizer.get("type") != "BertNormalizer":
        return f"the tokenizer's normalizer is {normalizer and normalizer.get('type')}, not BERT's."
    if pre_tokenizer is None or pre_tokenizer.get("type") != "BertPreTokenizer":
        return f"the tokenizer's pre-tokenizer is {pre_tokenizer and pre_tokenizer.get('type')}, not BERT's."
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        return "the tokenizer has no [CLS] or [SEP] token."
    if getattr(tokenizer, "truncation_side", "right") != "right" or getattr(tokenizer, "padding_side",
                                                                             "right") != "right":
        return "the tokenizer truncates or pads on the left."
    vocab = tokenizer.get_vocab()
    ordered = sorted(vocab.items(), key=lambda item: item[1])
    if [index for _, index in ordered] != list(range(len(ordered))):
        return "the tokenizer's vocabulary ids are not contiguous."
    lowercase = bool(normalizer.get("lowercase", True))
    strip_accents = normalizer.get("strip_accents")
    return WordPieceRecipe(
        vocab=[token for token, _ in ordered], unknown_token=str(model.get("unk_token", "[UNK]")),
        suffix_indicator=str(model.get("continuing_subword_prefix", "##")),
        max_chars_per_word=int(model.get("max_input_chars_per_word", 100)),
        clean_text=bool(normalizer.get("clean_text", True)),
        handle_chinese_chars=bool(normalizer.get("handle_chinese_chars", True)),
        # As in tokenizers' BertNormalizer: accents follow lower case unless set on their own.
        strip_accents=lowercase if strip_accents is None else bool(strip_accents),
        lowercase=lowercase, cls_id=int(tokenizer.cls_token_id), sep_id=int(tokenizer.sep_token_id),
        pad_id=int(tokenizer.pad_token_id or 0))


# The CJK ideograph blocks tokenizers' BertNormalizer puts spaces around (is_chinese_char).
CJK_RANGES = ("\\x{4E00}-\\x{9FFF}", "\\x{3400}-\\x{4DBF}", "\\x{20000}-\\x{2A6DF}", "\\x{2A700}-\\x{2B73F}",
              "\\x{2B740}-\\x{2B81F}", "\\x{2B920}-\\x{2CEAF}", "\\x{F900}-\\x{FAFF}", "\\x{2F800}-\\x{2FA1F}")


def build_graph_tokenizer(recipe: WordPieceRecipe, max_length: int) -> Any:
    """A tf.Module whose ``encode(text[, text_pair])`` gives padded int32 input_ids, attention_mask, token_type_ids."""
    import tensorflow as tf
    import tensorflow_text as tf_text

    class GraphTokenizer(tf.Module):
        """The Hugging Face BERT fast tokenizer's encoding, as TensorFlow ops."""

        def __init__(self) -> None:
            super().__init__(name="tokenizer")
            # Normalisation is done by the ops below, in tokenizers' order; FastBertTokenizer only
            # splits on whitespace and punctuation and looks up word pieces.
            self.wordpiece = tf_text.FastBertTokenizer(
                vocab=recipe.vocab, suffix_indicator=recipe.suffix_indicator,
                max_bytes_per_word=recipe.max_chars_per_word, token_out_type=tf.int32,
                unknown_token=recipe.unknown_token, lower_case_nfd_strip_accents=False)

        def normalize(self, text: Any) -> Any:
            if recipe.clean_text:
                # As tokenizers does: tab and line ends become spaces, other control and format
                # characters (\v, \f and U+0085 among them) go, then separators become spaces.
                text = tf.strings.regex_replace(text, "[\\t\\n\\r]", " ")
                text = tf.strings.regex_replace(text, "[\\x{FFFD}\\p{C}]", "")
                text = tf.strings.regex_replace(text, "\\p{Z}", " ")
            if recipe.handle_chinese_chars:
                text = tf.strings.regex_replace(text, "([" + "".join(CJK_RANGES) + "])", " \\1 ")
            if recipe.strip_accents:
                text = tf.strings.regex_replace(tf_text.normalize_utf8(text, "NFD"), "\\p{Mn}", "")
            if recipe.lowercase:
                text = tf.strings.lower(text, encoding="utf-8")
            return text

        def pieces(self, text: Any) -> Any:
            pieces = self.wordpiece.tokenize(self.normalize(text))
            # [batch, (words), (pieces)] -> [batch, (pieces)]
            return pieces.merge_dims(1, -1) if pieces.ragged_rank > 1 else pieces

        def encode(self, text: Any, text_pair: Any = None) -> dict[str, Any]:
            if text_pair is None:
                first = self.pieces(text)[:, :max_length - 2]
                segments = [first]
            else:
                segments = list(truncate_longest_first(self.pieces(text), self.pieces(text_pair), max_length - 3))
            ids, types = tf_text.combine_segments(segments, start_of_sequence_id=recipe.cls_id,
                                                  end_of_segment_id=recipe.sep_id)
            ids = tf.cast(ids, tf.int32)
            return {"input_ids": ids.to_tensor(default_value=recipe.pad_id),
                    "attention_mask": tf.ones_like(ids).to_tensor(default_value=0),
                    "token_type_ids": tf.cast(types, tf.int32).to_tensor(default_value=0)}

    def truncate_longest_first(first: Any, second: Any, budget: int) -> tuple[Any, Any]:
        # tokenizers' TruncationStrategy::LongestFirst, row by row: the shorter segment keeps
        # its length while the longer fits in what is left, else each gets half.
        n1, n2 = first.row_lengths(), second.row_lengths()
        shorter, longer = tf.minimum(n1, n2), tf.maximum(n1, n2)
        budget64 = tf.constant(budget, tf.int64)
        keep_longer = tf.maximum(shorter, budget64 - shorter)
        halves = shorter + keep_longer > budget64
        keep_shorter = tf.where(halves, budget64 // 2, shorter)
        keep_longer = tf.where(halves, budget64 // 2 + budget64 % 2, keep_longer)
        keep_longer = tf.minimum(keep_longer, longer)
        swapped = n1 > n2
        keep1 = tf.where(swapped, keep_longer, keep_shorter)
        keep2 = tf.where(swapped, keep_shorter, keep_longer)

        def head(tokens: Any, keep: Any) -> Any:
            positions = tf.ragged.range(tokens.row_lengths())
            return tf.ragged.boolean_mask(tokens, positions < tf.expand_dims(keep, 1))

        return head(first, keep1), head(second, keep2)

    return GraphTokenizer()


def probe_mismatch(graph_tokenizer: Any, tokenizer: Any, max_length: int, pair: bool,
                   input_names: list[str]) -> str | None:
    """The first probe text the graph tokenizer encodes differently from the Hugging Face tokenizer, or None."""
    import tensorflow as tf

    texts = list(PROBE_TEXTS)
    pairs = list(reversed(PROBE_TEXTS)) if pair else None
    expected = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=True, return_tensors="np")
    got = graph_tokenizer.encode(tf.constant(texts), tf.constant(pairs) if pairs else None)
    for name in input_names:
        want, have = expected[name], got[name].numpy()
        if want.shape != have.shape:
            return f"the in-graph tokenizer pads to {have.shape[1]} tokens where the tokenizer pads to {want.shape[1]}."
        for row, text in enumerate(texts):
            if (want[row] != have[row]).any():
                return f"the in-graph tokenizer's {name} differ from the tokenizer's for the text {text[:60]!r}."
    return None


def export_saved_model(model_dir: Path, staging: Path, *, max_length: int, pair: bool) -> SavedModelExport:
    """Write the SavedModels of the model and tokenizer saved in ``model_dir`` into the artifacts folder ``staging``.

    ``saved_model/1`` has both signatures; when its serving_default holds tensorflow-text ops,
    ``saved_model_ids/1`` has serving_ids alone, for TensorFlow builds without those ops (which
    cannot load a SavedModel that has them in any signature).
    """
    started = time.monotonic()
    import tensorflow as tf
    import tf_keras
    from transformers import AutoTokenizer, TFAutoModelForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    # The published files in float32, whatever policy the fit ran under.
    tf_keras.mixed_precision.set_global_policy("float32")
    model = TFAutoModelForSequenceClassification.from_pretrained(str(model_dir))
    input_names = [name for name in ("input_ids", "attention_mask", "token_type_ids")
                   if name in tokenizer.model_input_names]
    labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    recipe = wordpiece_recipe(tokenizer)
    graph_tokenizer = None
    reason: str | None = recipe if isinstance(recipe, str) else None
    if isinstance(recipe, WordPieceRecipe):
        try:
            import tensorflow_text  # noqa: F401 - registers the ops the graph tokenizer uses
        except ImportError as exc:
            reason = f"tensorflow-text cannot be imported here ({exc})."
        else:
            graph_tokenizer = build_graph_tokenizer(recipe, max_length)
            reason = probe_mismatch(graph_tokenizer, tokenizer, max_length, pair, input_names)
            if reason is not None:
                graph_tokenizer = None
    with tempfile.TemporaryDirectory(prefix="fitjobs-labels-") as scratch:
        # Copied into the SavedModel's assets/ under its own name.
        labels_file = Path(scratch) / LABELS_ASSET
        labels_file.write_text("".join(f"{label}\n" for label in labels))
        module = build_serving_module(model, graph_tokenizer, labels, labels_file, input_names, pair)
        signatures = {IDS_SIGNATURE: module.serve_ids}
        if graph_tokenizer is not None:
            signatures[TEXT_SIGNATURE] = module.serve_text
        tf.saved_model.save(module, str(staging / SAVED_MODEL_FOLDER / SAVED_MODEL_VERSION), signatures=signatures)
        if graph_tokenizer is not None:
            # The same traced function and variables, without the tokenizer's ops.
            ids_only = tf.Module(name="fitjobs_classifier_ids")
            ids_only.model_variables, ids_only.labels_asset = module.model_variables, module.labels_asset
            ids_only.label_names, ids_only.serve_ids = module.label_names, module.serve_ids
            tf.saved_model.save(ids_only, str(staging / SAVED_MODEL_IDS_FOLDER / SAVED_MODEL_VERSION),
                                signatures={IDS_SIGNATURE: module.serve_ids})
    return SavedModelExport(signatures=sorted(signatures), reason=reason, seconds=time.monotonic() - started,
                            ids_only=graph_tokenizer is not None)


def build_serving_module(model: Any, graph_tokenizer: Any, labels: list[str], labels_file: Path,
                         input_names: list[str], pair: bool) -> Any:
    """The tf.Module saved: the model, the tokenizer (or None), the labels asset and the signature functions."""
    import tensorflow as tf

    class ServingModule(tf.Module):
        """Holds what the SavedModel keeps; its functions are the signatures."""

        def __init__(self) -> None:
            super().__init__(name="fitjobs_classifier")
            # The variables, not the Keras model: saving a Keras model also traces every layer's
            # call for Keras' own loader, several times the cost of the two signatures.
            self.model_variables = list(model.variables)
            self.tokenizer = graph_tokenizer
            self.labels_asset = tf.saved_model.Asset(str(labels_file))
            self.label_names = tf.constant(labels)

        def classify(self, inputs: dict[str, Any]) -> dict[str, Any]:
            logits = tf.cast(model({name: inputs[name] for name in input_names}, training=False).logits,
                             tf.float32)
            label_ids = tf.argmax(logits, axis=-1, output_type=tf.int32)
            return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1), "label_ids": label_ids,
                    "labels": tf.gather(self.label_names, label_ids)}

    module = ServingModule()
    id_specs = [tf.TensorSpec([None, None], tf.int32, name=name) for name in input_names]
    # One traced function of the model that both signatures call: the model is traced once.
    # No AutoGraph: the transformers model is written for graphs, and converting it costs seconds.
    classify = tf.function(lambda *tensors: module.classify(dict(zip(input_names, tensors, strict=True))),
                           input_signature=id_specs, autograph=False)
    module.serve_ids = tf.function(lambda *tensors: classify(*tensors), input_signature=id_specs, autograph=False)
    if graph_tokenizer is not None:
        text_specs = [tf.TensorSpec([None], tf.string, name="text")]
        if pair:
            text_specs.append(tf.TensorSpec([None], tf.string, name="text_pair"))

        def serve_text(*texts: Any) -> dict[str, Any]:
            encoded = module.tokenizer.encode(*texts)
            return cast(dict[str, Any], classify(*(encoded[name] for name in input_names)))

        module.serve_text = tf.function(serve_text, input_signature=text_specs, autograph=False)
    return module
