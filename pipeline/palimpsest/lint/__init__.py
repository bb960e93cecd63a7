"""The SwallowCode pylint filter: published scores, computed in-process and in parallel."""
