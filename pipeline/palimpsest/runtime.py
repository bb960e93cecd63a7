"""What every image and every pod the operator builds agree on: the user and the writable paths.

The images run with a read-only root filesystem, as a non-root user, with every capability
dropped. Whatever a process must write (temporary files, the model hub's cache, vLLM's and
torch's compile caches) goes under two folders that the pods mount as emptyDirs with a size
limit (or, for model weights, a volume the user names). The Dockerfiles set the same values in
their `ENV` and `USER` lines; a unit test keeps them identical to these constants, and an e2e
test runs each image under the pod the operator builds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

RUN_AS_UID: Final = 10001
"""The user (and group) every image declares and every pod runs as."""

TMP_DIR: Final = "/tmp"
"""Temporary files (lint work folders, record parts before upload); an emptyDir in pods."""

CACHE_DIR: Final = "/var/cache/palimpsest"
"""Caches that may be lost with the pod: the model hub cache, vLLM/torch/triton caches and
models downloaded from s3://. An emptyDir with a size limit, or a PVC the spec names."""

PROMPTS_DIR: Final = "/opt/palimpsest/prompts"
"""The built-in prompt files inside the images (read-only)."""

CACHE_ENV: Final[Mapping[str, str]] = {
    "HOME": TMP_DIR,
    "XDG_CACHE_HOME": CACHE_DIR,
    "HF_HOME": f"{CACHE_DIR}/huggingface",
    "VLLM_CACHE_ROOT": f"{CACHE_DIR}/vllm",
    "TORCHINDUCTOR_CACHE_DIR": f"{CACHE_DIR}/torchinductor",
    "TRITON_CACHE_DIR": f"{CACHE_DIR}/triton",
    "PALIMPSEST_MODEL_CACHE": f"{CACHE_DIR}/models",
}
"""Environment every image sets (and pods repeat), so that nothing writes under the read-only
root: each tool's cache lives under CACHE_DIR, and HOME is the temporary folder."""
