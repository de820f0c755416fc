"""Train the shipped domain classifier of a dataset (default MNIST) with the fixed recipe and compare its
sha256 with the pinned one in ``genbench/metrics/domain.py``.

    .venv/bin/python benchmarks/train_domain_classifier.py            # checks: writes to a temporary file
    .venv/bin/python benchmarks/train_domain_classifier.py --write    # replaces the shipped file

Training is deterministic on one machine (own generators, one thread); another CPU type may round
differently, which is why the weights themselves ship with the project and are loaded by sha256.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from genbench.data import GenDataModule  # noqa: E402
from genbench.metrics import domain  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="mnist")
    p.add_argument("--write", action="store_true", help="write genbench/metrics/assets/<data>-classifier.pt")
    args = p.parse_args()
    dm = GenDataModule(args.data)
    dm.prepare_data()
    dm.setup()
    if args.write:
        path = domain.ASSETS / f"{args.data}-classifier.pt"
    else:
        path = Path(tempfile.mkdtemp()) / f"{args.data}-classifier.pt"
    info = domain.build(dm, path)
    sha = domain.file_sha256(path)
    pinned = domain.SHIPPED.get(args.data)
    print(json.dumps({**info, "path": str(path), "sha256": sha, "pinned_sha256": pinned,
                      "matches_pinned": sha == pinned}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
