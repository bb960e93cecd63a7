"""Names the pipeline, its workers and the operator must spell the same way.

The operator imports these; the pipeline never imports the operator. Kept in one module so a
folder name or an exit code cannot drift between the process that writes and the one that reads.
"""

from __future__ import annotations

from typing import Final

API_GROUP: Final = "palimpsest.dev"
API_VERSION: Final = f"{API_GROUP}/v1alpha1"
KIND: Final = "RewriteJob"

PLANS_DIR: Final = "_plans"
"""Under a job's output URI: the shard plans (`plan-<plan-id>.json`)."""
JOBS_DIR: Final = "_jobs"
"""Under a job's output URI: the job documents workers read (`job-<content-hash>.json`)."""
PROBE_DIR: Final = "_probe"
"""Scratch keys of the conditional-put probe under an output; any left over are garbage."""
MANIFESTS_DIR: Final = "_manifests"
"""Under a job's output URI: the final dataset manifests (`<stage-id>.json`)."""
LIMITED_DIR: Final = "_limited"
"""Under a job's output URI: local runs' copies of the input's first N records."""

EXIT_CONFIG_ERROR: Final = 3
"""Exit code of a worker or command whose configuration can never work (a bad job document,
tool versions other than the pins): Jobs fail that index at once instead of retrying it."""

INDEX_ENV: Final = "JOB_COMPLETION_INDEX"
"""The environment variable an Indexed Job sets to the pod's completion index."""
GIVE_UP_DIR: Final = "_give-up"
"""Under a job's output URI, per Job name: `index-<i>` objects telling the pod of Job index i
to exit with EXIT_CONFIG_ERROR at once (the operator gave that index up)."""


def give_up_key(index: int) -> str:
    return f"index-{index}"
