"""Shared pytest fixtures, loaded for every test directory."""

pytest_plugins = ["tests.support.fixtures", "tests.vllm.fixtures", "tests.cluster.fixtures"]
