"""Palimpsest: rewrite pre-training corpora with LLMs, on one machine or on Kubernetes."""

from importlib.metadata import version

__version__ = version("palimpsest")
"""The installed package's version: pyproject.toml's, the one source that image tags follow."""
