"""Palimpsest: rewrite pre-training corpora with LLMs, on one machine or on Kubernetes."""

__version__ = "0.1.0"
