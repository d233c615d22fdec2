"""Cheaper graph building for the fit: variables made before the first trace, AutoGraph only if needed.

Building the train step's graph is a fixed cost of every fit, paid before the first step
(about 6 s for MiniLM-L6 on a 2-core CPU, more than 30 short-text steps). Two things make it
larger than it needs to be:

- Keras creates the optimizer's slots and the metrics' variables inside the first call of the
  train function. A ``tf.function`` that creates variables is traced twice: once to create
  them, and again for the function that runs. Creating them beforehand leaves one trace.
- AutoGraph converts the source of every layer's ``call`` (parsing and rewriting it) so that
  Python control flow on tensors becomes graph ops. transformers' classifiers need none of it:
  their conditions are on Python values. Tracing without AutoGraph halves the remaining trace.

A model whose Python does branch on tensors fails to trace without AutoGraph; ``StepFunction``
then traces it again with AutoGraph, so no model stops working.
"""

from __future__ import annotations

from typing import Any

from service.trainer.reporter import TrainingReporter


def build_training_variables(model: Any, features: dict[str, Any], labels: Any) -> None:
    """Create the optimizer's slots and the loss and metric variables of a compiled model.

    ``features`` and ``labels`` are a small batch (a row or two) of model inputs: one forward
    pass in inference mode gives the logits that the loss and metric containers are built for.
    """
    import tensorflow as tf

    from service.trainer.optimization import inner_optimizer

    with model.distribute_strategy.scope():
        inner_optimizer(model.optimizer).build(model.trainable_variables)
        logits = model(features, training=False).logits
        labels = tf.convert_to_tensor(labels)
        model.compiled_loss.build(logits)
        model.compiled_metrics.build(logits, labels)


class StepFunction:
    """A Keras step function (train, test or predict) traced without AutoGraph where it can be.

    Called like the ``tf.function`` Keras makes; ``autograph`` tells whether the fallback was used.
    """

    def __init__(self, python_function: Any, *, name: str = "step", input_signature: Any = None,
                 reporter: TrainingReporter | None = None) -> None:
        import tensorflow as tf

        self.name = name
        self.autograph = False
        self.fallback_reason: str | None = None
        self._python_function = python_function
        self._reporter = reporter
        self._options = {"input_signature": input_signature} if input_signature is not None else \
            {"reduce_retracing": True}
        self._function = tf.function(python_function, autograph=False, **self._options)
        self._traces_before_fallback = 0

    def __call__(self, *args: Any) -> Any:
        return self._traced(lambda function: function(*args))

    def get_concrete_function(self, *args: Any) -> Any:
        """Trace for these arguments now, as ``tf.function`` does (falling back to AutoGraph if needed)."""
        return self._traced(lambda function: function.get_concrete_function(*args))

    def _traced(self, use: Any) -> Any:
        """``use`` of the function, traced again with AutoGraph once if it cannot be traced without."""
        if not self.autograph:
            try:
                return use(self._function)
            except TypeError as exc:  # includes OperatorNotAllowedInGraphError: Python control flow on a tensor
                self._fall_back(exc)
        return use(self._function)

    def _fall_back(self, exc: TypeError) -> None:
        import tensorflow as tf

        self._traces_before_fallback = self._function.experimental_get_tracing_count()
        self.autograph = True
        self.fallback_reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        self._function = tf.function(self._python_function, autograph=True, **self._options)
        if self._reporter is not None:
            self._reporter.event("autograph_needed", f"The model's {self.name} function could not be traced "
                                 "without AutoGraph; it is traced with AutoGraph instead.",
                                 {"function": self.name, "reason": self.fallback_reason})

    def experimental_get_tracing_count(self) -> int:
        """Traces made so far, the ones before a fallback to AutoGraph included."""
        return int(self._traces_before_fallback + self._function.experimental_get_tracing_count())


def install_step_functions(model: Any, reporter: TrainingReporter | None = None) -> None:
    """Replace the compiled model's train and test functions with ``StepFunction``s.

    Keras builds a function only when it has none, so ``fit`` and ``evaluate`` use these. Call
    after ``compile`` and after any change of ``train_step``. With ``jit_compile``, Keras compiles
    the step inside these functions with XLA (and AutoGraph) as before.
    """
    for kind in ("train", "test"):
        setattr(model, f"{kind}_function", None)
        keras_function = getattr(model, f"make_{kind}_function")()
        setattr(model, f"{kind}_function", StepFunction(keras_function.python_function, name=kind,
                                                        reporter=reporter))
