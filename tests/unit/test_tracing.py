"""Step functions traced without AutoGraph, and the fallback for Python that branches on tensors."""

from __future__ import annotations

from typing import Any

import pytest

from service.trainer.tf_runtime import prepare_tensorflow

prepare_tensorflow(0)  # selects tf-keras before TensorFlow loads

import tensorflow as tf  # noqa: E402 - after prepare_tensorflow

from service.trainer.tracing import StepFunction  # noqa: E402 - after prepare_tensorflow


class Events:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any] | None]] = []

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        self.events.append((kind, message, data))


SIGNATURE = [tf.TensorSpec(shape=(None,), dtype=tf.float32)]


def test_a_branch_free_step_is_traced_once_without_autograph() -> None:
    events = Events()
    step = StepFunction(lambda x: tf.reduce_sum(x * 2.0), name="train", input_signature=SIGNATURE,
                        reporter=events)  # type: ignore[arg-type]
    assert float(step(tf.constant([1.0, 2.0]))) == 6.0
    assert float(step(tf.constant([1.0, 2.0, 3.0, 4.0]))) == 20.0
    assert step.autograph is False and step.fallback_reason is None
    assert step.experimental_get_tracing_count() == 1
    assert events.events == []


def branching(x: tf.Tensor) -> tf.Tensor:
    # Python control flow on a tensor's value: only AutoGraph can turn this into a graph.
    if tf.reduce_sum(x) > 0:
        return x * 2.0
    return -x


def test_python_branching_on_a_tensor_falls_back_to_autograph_and_computes_both_branches() -> None:
    with pytest.raises(TypeError):
        tf.function(branching, autograph=False, input_signature=SIGNATURE)(tf.constant([1.0]))
    events = Events()
    step = StepFunction(branching, name="train", input_signature=SIGNATURE, reporter=events)  # type: ignore[arg-type]
    assert step(tf.constant([1.0, 2.0])).numpy().tolist() == [2.0, 4.0]
    assert step(tf.constant([-1.0, -2.0])).numpy().tolist() == [1.0, 2.0]
    assert step.autograph is True and "OperatorNotAllowedInGraphError" in (step.fallback_reason or "")
    [(kind, message, data)] = events.events
    assert kind == "autograph_needed" and data is not None and data["function"] == "train"
    assert "AutoGraph" in message
    # The failed trace without AutoGraph made no graph; the AutoGraph one serves every call.
    assert step.experimental_get_tracing_count() == 1


def test_errors_while_running_the_graph_are_not_taken_for_tracing_problems() -> None:
    def checked(x: tf.Tensor) -> tf.Tensor:
        with tf.control_dependencies([tf.debugging.assert_positive(x)]):
            return tf.identity(x)

    step = StepFunction(checked, input_signature=SIGNATURE)
    assert step(tf.constant([1.0])).numpy().tolist() == [1.0]
    with pytest.raises(tf.errors.InvalidArgumentError):
        step(tf.constant([-1.0]))
    assert step.autograph is False


def test_a_type_error_in_both_modes_is_raised() -> None:
    def broken(x: tf.Tensor) -> tf.Tensor:
        return x + "text"

    step = StepFunction(broken, input_signature=SIGNATURE)
    with pytest.raises((TypeError, ValueError)):
        step(tf.constant([1.0]))


def test_tracing_ahead_falls_back_as_a_call_does() -> None:
    step = StepFunction(branching, name="train", input_signature=SIGNATURE)
    concrete = step.get_concrete_function()
    assert step.autograph is True and concrete is not None
    assert step(tf.constant([3.0])).numpy().tolist() == [6.0]
    assert step.experimental_get_tracing_count() == 1
