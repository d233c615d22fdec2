"""The predict process's model cache: least recently used models dropped by count and by bytes of weights.

The cache holds whatever its load function returns; here that function makes LoadedModel
records of given sizes (no TensorFlow), and the real models are covered in
tests/integration/test_predictions.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from service.config import MAX_SOCKET_PATH_BYTES, Settings
from service.trainer.predict_server import LoadedModel, ModelCache

MIB = 1 << 20


def records(sizes: dict[str, int], loads: list[str]) -> ModelCache:
    def load(job_id: str) -> LoadedModel:
        loads.append(job_id)
        time.sleep(0.05)
        return LoadedModel(job_id, None, lambda inputs: inputs, (), ("a", "b"), sizes[job_id], 1.0)

    return ModelCache(10, 100 * MIB, load)


def test_the_least_recently_used_model_goes_first_beyond_the_count() -> None:
    loads: list[str] = []
    cache = records({"a": MIB, "b": MIB, "c": MIB}, loads)
    cache.max_models = 2
    assert cache.get("a")[1] and cache.get("b")[1]
    assert not cache.get("a")[1]  # a is now the most recently used
    assert cache.get("c")[1]
    assert cache.state()["models"] == ["a", "c"]
    assert cache.get("b")[1] and loads == ["a", "b", "c", "b"]


def test_models_beyond_the_memory_cap_are_dropped_but_one_large_model_is_kept_alone() -> None:
    loads: list[str] = []
    cache = records({"a": 40 * MIB, "b": 50 * MIB, "c": 30 * MIB, "huge": 500 * MIB}, loads)
    for job_id in ("a", "b"):
        cache.get(job_id)
    assert cache.state()["models"] == ["a", "b"] and cache.state()["bytes"] == 90 * MIB
    cache.get("c")
    assert cache.state()["models"] == ["b", "c"]
    cache.get("huge")
    assert cache.state()["models"] == ["huge"]


def test_concurrent_requests_for_a_cold_model_load_it_once() -> None:
    loads: list[str] = []
    cache = records({"a": MIB}, loads)
    loaded: list[bool] = []
    threads = [threading.Thread(target=lambda: loaded.append(cache.get("a")[1])) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == ["a"] and sorted(loaded) == [False] * 7 + [True]


def test_the_socket_sits_in_the_home_folder_unless_its_path_is_too_long(tmp_path: Path) -> None:
    short = Settings.from_env({"FITJOBS_HOME": str(tmp_path)})
    assert short.predict_socket == tmp_path / "predict.sock"
    deep = tmp_path / ("d" * 120)
    long = Settings.from_env({"FITJOBS_HOME": str(deep)})
    assert long.predict_socket.parent != deep and len(str(long.predict_socket)) <= MAX_SOCKET_PATH_BYTES
    assert long.predict_socket == Settings.from_env({"FITJOBS_HOME": str(deep)}).predict_socket
