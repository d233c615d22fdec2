"""The training child process: the only package that imports TensorFlow and transformers.

Importing this package itself is cheap; TensorFlow is imported by the modules that use it,
after ``service.trainer.tf_runtime`` has set the environment TensorFlow reads at import time.
"""
