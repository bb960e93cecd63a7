"""Rebuild python-sample.jsonl.gz from the CPython standard library of the running Python.

The standard library is under the PSF License; see examples/data/README.md. Files are taken in
sorted order, every STRIDE-th file between MIN and MAX bytes, so the sample is reproducible
for a given Python version.
"""

from __future__ import annotations

import gzip
import json
import sys
import sysconfig
from pathlib import Path

STRIDE = 3
MIN_BYTES, MAX_BYTES = 300, 12_000
COUNT = 300


def main() -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p
        for p in stdlib.rglob("*.py")
        if "site-packages" not in p.parts and MIN_BYTES <= p.stat().st_size <= MAX_BYTES
    )
    chosen = files[::STRIDE][:COUNT]
    out = Path(__file__).with_name("python-sample.jsonl.gz")
    with gzip.open(out, "wt", encoding="utf-8") as handle:
        for path in chosen:
            rel = path.relative_to(stdlib).as_posix()
            text = path.read_text(encoding="utf-8", errors="replace")
            record = {
                "id": f"cpython-{sys.version_info.major}.{sys.version_info.minor}/{rel}",
                "text": text,
                "path": rel,
                "license": "PSF-2.0",
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {len(chosen)} records to {out}")


if __name__ == "__main__":
    main()
