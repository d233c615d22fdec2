"""fitjobs: a training microservice that fine-tunes transformers models with TensorFlow."""

__version__ = "0.1.0"
