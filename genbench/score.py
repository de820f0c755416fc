"""``genbench score``: score pre-generated samples (a folder of PNG/JPEG or an ``.npz``) against a dataset.

The samples are read once and handed to :func:`genbench.api.evaluate` in order, so the numbers are the
harness's own (FID, KID, precision/recall, domain metric) and compare with the leaderboard's at equal n.
An ``.npz`` holds one uint8 array (or one named ``samples``/``images``) shaped ``[N, C, H, W]``,
``[N, H, W, C]`` or ``[N, H, W]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from genbench import paths

NPZ_KEYS = ("samples", "images", "x", "arr_0")


class SamplesError(ValueError):
    """The samples cannot be scored as given (the message names the problem and the fix)."""


def load_npz(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.keys())
        key = next((k for k in NPZ_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise SamplesError(f"{path} holds arrays {keys}; name the samples array one of {', '.join(NPZ_KEYS)}")
        return np.asarray(z[key])


def to_nchw(x: np.ndarray, shape: tuple[int, ...], source: str) -> np.ndarray:
    """uint8 samples in ``[N, C, H, W]`` matching the dataset's ``shape`` (``[N, H, W]`` and channels-last
    accepted); a clear error for any other dtype or shape."""
    if x.dtype != np.uint8:
        raise SamplesError(f"{source}: samples must be uint8 pixels 0..255, got dtype {x.dtype}; convert with "
                           "np.clip(np.rint(x), 0, 255).astype(np.uint8)")
    c, h, w = shape
    if x.ndim == 3 and c == 1 and x.shape[1:] == (h, w):
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1:] != (c, h, w) and x.shape[1:] == (h, w, c):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim == 4 and c == 3 and x.shape[1:] == (1, h, w):
        x = np.repeat(x, 3, axis=1)
    if x.ndim != 4 or x.shape[1:] != (c, h, w):
        raise SamplesError(f"{source}: samples of shape {list(x.shape)} do not match the data's [N, {c}, {h}, {w}]; "
                           "generate them at the data's size")
    return np.ascontiguousarray(x)


def load_samples(source: Path, shape: tuple[int, ...]) -> np.ndarray:
    from genbench.data.external import ExternalDataError, _image_files, read_image_files

    if source.is_dir():
        try:
            files = _image_files(source)
            if not files:
                raise SamplesError(f"{source} holds no PNG/JPEG images")
            x = read_image_files(files)
        except ExternalDataError as err:
            raise SamplesError(str(err)) from None
    elif source.suffix == ".npz" and source.is_file():
        x = load_npz(source)
    else:
        raise SamplesError(f"--samples {source}: give a folder of PNG/JPEG images or an .npz file")
    return to_nchw(x, shape, str(source))


def sequential_sampler(samples: np.ndarray):
    """``sample_fn(n, generator)`` handing out the given samples in order (the generator is not used)."""
    import torch

    state = {"next": 0}
    pool = torch.from_numpy(samples)

    def sample_fn(n: int, generator=None):
        start = state["next"]
        state["next"] = start + n
        return pool[start:start + n].clone()

    return sample_fn


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="genbench score", description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=Path, required=True, help="a folder of PNG/JPEG samples or an .npz file")
    p.add_argument("--data", default="mnist", help="the dataset they imitate: a name, folder:PATH or hf:ID[:COLUMN]")
    p.add_argument("--metrics", nargs="+", default=["fid", "kid", "prc"],
                   help="any of fid kid prc domain memorization (default: fid kid prc)")
    p.add_argument("--num-samples", type=int, default=None, help="score the first N samples (default: all)")
    p.add_argument("--reference-split", default="test", choices=["test", "train"])
    p.add_argument("--feature-batch-size", type=int, default=64)
    p.add_argument("--output", type=Path, default=None,
                   help="write the record here (default: OUTPUT_DIR/benchmarks/scores/<data>-<samples>.json)")
    p.add_argument("--output-dir", type=Path, default=None,
                   help=f"root of benchmarks/ (default: ${paths.HOME_ENV}, else the working directory)")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from genbench.api import evaluate
    from genbench.data import GenDataModule
    from genbench.data.sources import DataSourceError
    from genbench.io import atomic_write_text
    from genbench.metrics.inception import InceptionWeightsError

    if "bpd" in args.metrics:
        print("genbench score: bits/dim needs a model's likelihood, not samples; use genbench.evaluate(..., "
              "log_likelihood=fn)", file=sys.stderr)
        return 2
    try:
        dm = GenDataModule(args.data)
        samples = load_samples(args.samples, tuple(dm.data_shape))
        n = len(samples) if args.num_samples is None else args.num_samples
        if not 2 <= n <= len(samples):
            raise SamplesError(f"--num-samples {n}: {len(samples)} samples were given; score between 2 and that many")
        if int(samples.max()) >= dm.num_levels:
            raise SamplesError(f"samples hold value {int(samples.max())} >= the data's {dm.num_levels} levels")
        dm.prepare_data()
        dm.setup()
        record = evaluate(sequential_sampler(samples), data=dm, num_samples=n, metrics=args.metrics,
                          reference_split=args.reference_split, feature_batch_size=args.feature_batch_size,
                          memorization_samples=n, progress=args.progress)
    except (SamplesError, DataSourceError, InceptionWeightsError, ValueError) as err:
        print(f"genbench score: {err}", file=sys.stderr)
        return 2
    record["samples"] = {"source": str(args.samples.resolve()), "n_given": int(len(samples)), "n_scored": n}
    out = args.output or (paths.output_root(args.output_dir) / "benchmarks" / "scores"
                          / f"{dm.dataset}-{args.samples.resolve().stem}.json")
    atomic_write_text(Path(out), json.dumps(record, indent=2, default=str) + "\n")
    summary = {k: v.get("value") for k, v in record["metrics"].items() if isinstance(v, dict) and "value" in v}
    print(json.dumps({"samples": str(args.samples), "data": dm.dataset, "n": n, **summary}))
    print(f"genbench: wrote {out}")
    return 0
