"""Your own image data: ``folder:<path>`` and ``hf:<dataset id or saved path>[:<image column>]``.

* ``folder:PATH``: PNG/JPEG files, either flat (unlabelled) or one sub-folder per class (labels are the
  sorted folder names); ``PATH/train`` and ``PATH/test`` sub-folders (each flat or by class) are used as the
  dataset's own splits.
* ``hf:ID[:COLUMN]``: a Hugging Face ``datasets`` dataset, ``datasets.load_from_disk`` when ``ID`` is a local
  directory (a saved ``Dataset`` or ``DatasetDict``), else ``datasets.load_dataset(ID)``. The image column is
  ``COLUMN``, else the first column of feature type ``Image``, else ``image``/``img``; labels come from a
  ``ClassLabel`` column, else an integer ``label`` column, else none.

Shape, channels, grey levels and classes are inferred from the images and stated in the data description
of every record (``inferred``). Images must share one size; 8-bit grey images give 1 channel, and a dataset
with any colour image gives 3 (grey images are replicated). Splits: the dataset's own train/test where it has
them, else a seeded deterministic split that keeps :data:`TEST_FRACTION` of the images as test. Errors name
the file or column at fault and the fix, before any training starts.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genbench.data.sources import DatasetSpec, DataSourceError, Splits

FOLDER_PREFIX = "folder:"
HF_PREFIX = "hf:"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MIN_IMAGES = 20  # train (with its validation carve-out) and test need a few images each
TEST_FRACTION = 0.1
SPLIT_SEED = 0
LEVELS_8BIT = 256


class ExternalDataError(DataSourceError):
    """Your own data cannot be used as given (the message names the file or column and the fix)."""


def is_external(name: str) -> bool:
    return isinstance(name, str) and name.startswith((FOLDER_PREFIX, HF_PREFIX))


@dataclass
class ExternalData:
    spec: DatasetSpec
    splits: Splits
    inferred: dict[str, Any] = field(default_factory=dict)


_LOADED: dict[str, ExternalData] = {}


def load_external(name: str) -> ExternalData:
    """Load (once per process) the data named ``folder:...`` or ``hf:...``."""
    if name not in _LOADED:
        if name.startswith(FOLDER_PREFIX):
            _LOADED[name] = _load_folder(name)
        elif name.startswith(HF_PREFIX):
            _LOADED[name] = _load_hf(name)
        else:
            raise ValueError(f"{name!r} is neither folder:PATH nor hf:ID[:COLUMN]")
    return _LOADED[name]


# ---------------------------------------------------------------------------------------------- images
def _pil_to_array(img: Any, where: str) -> np.ndarray:
    """An 8-bit image as uint8 ``[H, W]`` (grey) or ``[H, W, 3]`` (colour)."""
    mode = img.mode
    if mode in ("1", "L", "LA"):
        img = img.convert("L")
    elif mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    else:
        raise ExternalDataError(f"{where}: image mode {mode!r} is not 8-bit grey or colour; convert it to an 8-bit "
                                "PNG (grey 'L' or colour 'RGB') first")
    return np.asarray(img, dtype=np.uint8)


def _array_image(value: Any, where: str) -> np.ndarray:
    """An image cell of a ``datasets`` column (PIL image or array) as uint8 ``[H, W]`` or ``[H, W, C]``."""
    if hasattr(value, "mode") and hasattr(value, "convert"):
        return _pil_to_array(value, where)
    arr = np.asarray(value)
    if arr.dtype == object or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3)):
        raise ExternalDataError(f"{where} is not an image (got {type(value).__name__} of shape {arr.shape}); "
                                "name the image column with hf:ID:COLUMN")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 255:
            raise ExternalDataError(f"{where}: pixel values must be 8-bit integers 0..255, got dtype {arr.dtype}")
        arr = arr.astype(np.uint8)
    return arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr


def stack_images(images: list[np.ndarray], names: list[str]) -> np.ndarray:
    """``[H, W]``/``[H, W, 3]`` uint8 images of one size -> ``[N, C, H, W]`` (C = 3 when any is colour)."""
    sizes: dict[tuple[int, int], str] = {}
    for img, name in zip(images, names, strict=True):
        sizes.setdefault(img.shape[:2], name)
    if len(sizes) > 1:
        listed = "; ".join(f"{h}x{w} (e.g. {n})" for (h, w), n in list(sizes.items())[:3])
        raise ExternalDataError(f"images of mixed sizes: {listed}; resize them to one size (H x W) first")
    colour = any(img.ndim == 3 for img in images)
    if colour:
        images = [img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=-1) for img in images]
        return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))
    return np.ascontiguousarray(np.stack(images)[:, None])


def read_image_files(files: list[Path]) -> np.ndarray:
    """PNG/JPEG files -> uint8 ``[N, C, H, W]``; a file that does not decode is named."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for f in files:
        try:
            with Image.open(f) as img:
                images.append(_pil_to_array(img, str(f)))
        except (UnidentifiedImageError, OSError) as err:
            raise ExternalDataError(f"{f} is not a readable PNG/JPEG image ({err}); remove it or replace it") from None
    return stack_images(images, [str(f) for f in files])


# ---------------------------------------------------------------------------------------------- folder
def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _image_files(directory: Path) -> list[Path]:
    files = sorted(p for p in directory.iterdir() if p.is_file() and _visible(p))
    bad = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if bad:
        listed = ", ".join(str(p) for p in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ExternalDataError(f"not PNG/JPEG images: {listed}; a data folder holds only .png/.jpg/.jpeg files "
                                "(flat, or one sub-folder per class)")
    return files


def _scan(directory: Path) -> tuple[list[Path], list[int], list[str]]:
    """Files, labels and class names of a flat folder (no classes) or a folder of class sub-folders."""
    subdirs = sorted(p for p in directory.iterdir() if p.is_dir() and _visible(p))
    if not subdirs:
        files = _image_files(directory)
        return files, [0] * len(files), []
    loose = [p for p in directory.iterdir() if p.is_file() and _visible(p)]
    if loose:
        raise ExternalDataError(f"{directory} mixes files ({loose[0].name}, ...) with class sub-folders; put every "
                                "image in a class sub-folder, or use a flat folder without sub-folders")
    files, labels = [], []
    for label, sub in enumerate(subdirs):
        nested = [p for p in sub.iterdir() if p.is_dir() and _visible(p)]
        if nested:
            raise ExternalDataError(f"{nested[0]}: class folders hold images, not further folders")
        own = _image_files(sub)
        files += own
        labels += [label] * len(own)
    return files, labels, [s.name for s in subdirs]


def _load_folder(name: str) -> ExternalData:
    root = Path(name[len(FOLDER_PREFIX):]).expanduser()
    if not root.is_dir():
        raise ExternalDataError(f"{name}: {root} is not a directory; pass folder:PATH naming a folder of PNG/JPEG images")
    root = root.resolve()
    own_splits = (root / "train").is_dir() and (root / "test").is_dir()
    if own_splits:
        tr_files, tr_y, tr_classes = _scan(root / "train")
        te_files, te_y, te_classes = _scan(root / "test")
        if tr_classes != te_classes:
            raise ExternalDataError(f"{root}/train and {root}/test have different class folders "
                                    f"({tr_classes} vs {te_classes}); give both the same classes")
        _check_count(name, len(tr_files) + len(te_files))
        x = read_image_files(tr_files + te_files)
        y = np.asarray(tr_y + te_y, dtype=np.int64)
        train_idx, test_idx = np.arange(len(tr_files)), np.arange(len(tr_files), len(x))
        split_rule, classes = "the folder's own train/ and test/", tr_classes
    else:
        files, labels, classes = _scan(root)
        _check_count(name, len(files))
        x, y = read_image_files(files), np.asarray(labels, dtype=np.int64)
        train_idx, test_idx, split_rule = seeded_split(len(x))
    return _finish("folder", root.name, name, x, y, train_idx, test_idx, split_rule, classes, f"folder:{root}")


# ---------------------------------------------------------------------------------------------- datasets
def _parse_hf(name: str) -> tuple[str, str | None]:
    body = name[len(HF_PREFIX):]
    if not body:
        raise ExternalDataError("hf: needs a dataset id or a saved dataset's path, e.g. hf:ylecun/mnist or hf:./my_ds:image")
    head, sep, tail = body.rpartition(":")
    if sep and tail and "/" not in tail and head:
        return head, tail
    return body, None


def _open_hf(ident: str):
    import datasets

    if Path(ident).expanduser().exists():
        return datasets.load_from_disk(str(Path(ident).expanduser()))
    try:
        return datasets.load_dataset(ident)
    except Exception as err:  # network and hub errors come in many types
        raise ExternalDataError(f"hf:{ident}: cannot load it with datasets.load_dataset ({type(err).__name__}: "
                                f"{err}); check the id, or save the dataset locally and pass hf:PATH") from err


def _image_column(ds: Any, wanted: str | None, where: str) -> str:
    import datasets

    if wanted is not None:
        if wanted not in ds.column_names:
            raise ExternalDataError(f"{where} has no column {wanted!r}; its columns: {', '.join(ds.column_names)}")
        return wanted
    for col, feat in ds.features.items():
        if isinstance(feat, datasets.Image):
            return col
    for col in ("image", "img"):
        if col in ds.column_names:
            return col
    raise ExternalDataError(f"{where}: no image column found among {', '.join(ds.column_names)}; name it with "
                            "hf:ID:COLUMN")


def _labels(ds: Any) -> tuple[np.ndarray | None, list[str] | None]:
    import datasets

    for col, feat in ds.features.items():
        if isinstance(feat, datasets.ClassLabel):
            return np.asarray(ds[col], dtype=np.int64), list(feat.names)
    if "label" in ds.column_names:
        y = np.asarray(ds["label"])
        if np.issubdtype(y.dtype, np.integer) and y.min() >= 0:
            return y.astype(np.int64), None
    return None, None


def _hf_images(ds: Any, column: str, where: str) -> np.ndarray:
    images = [_array_image(v, f"{where} row {i} column {column!r}") for i, v in enumerate(ds[column])]
    return stack_images(images, [f"row {i}" for i in range(len(images))])


def _load_hf(name: str) -> ExternalData:
    import datasets

    ident, column = _parse_hf(name)
    loaded = _open_hf(ident)
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise ExternalDataError(f"{name}: the dataset has splits {list(loaded)} but no 'train' split")
        parts = [("train", loaded["train"])] + ([("test", loaded["test"])] if "test" in loaded else [])
    else:
        parts = [("train", loaded)]
    col = _image_column(parts[0][1], column, name)
    xs, ys, names = [], [], None
    for split, ds in parts:
        xs.append(_hf_images(ds, col, f"{name} [{split}]"))
        y, names_ = _labels(ds)
        ys.append(y)
        names = names or names_
    _check_count(name, sum(len(x) for x in xs))
    if len({x.shape[1:] for x in xs}) > 1:
        raise ExternalDataError(f"{name}: train and test images differ in shape ({xs[0].shape[1:]} vs "
                                f"{xs[1].shape[1:]}); give both splits one size")
    x = np.concatenate(xs)
    labelled = all(y is not None for y in ys)
    y = np.concatenate(ys) if labelled else np.zeros(len(x), dtype=np.int64)
    if labelled and names is None:
        names = [str(k) for k in range(int(y.max()) + 1)]
    if len(parts) == 2:
        train_idx, test_idx = np.arange(len(xs[0])), np.arange(len(xs[0]), len(x))
        split_rule = "the dataset's own train and test splits"
    else:
        train_idx, test_idx, split_rule = seeded_split(len(x))
    base = Path(ident).name or ident
    return _finish("hf", base, name, x, y, train_idx, test_idx, split_rule, names or [], f"hf:{ident} column {col!r}")


# ---------------------------------------------------------------------------------------------- shared
def _check_count(name: str, n: int) -> None:
    if n < MIN_IMAGES:
        raise ExternalDataError(f"{name}: {n} images found, at least {MIN_IMAGES} are needed (train, validation "
                                "and test each need some); add images")


def seeded_split(n: int, fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray, str]:
    """Train and test indices of a deterministic split of ``n`` images (a seeded permutation)."""
    n_test = max(1, math.ceil(n * fraction))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test]), f"seeded split: {n_test} of {n} images as test (seed {seed})"


def slug(kind: str, base: str, x: np.ndarray, y: np.ndarray) -> str:
    """A file-name-safe dataset name that changes with the content (caches and run directories use it)."""
    digest = hashlib.sha256(x.tobytes() + y.tobytes() + str(x.shape).encode()).hexdigest()[:8]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("_.") or "data"
    return f"{kind}-{safe}-{digest}"


def _finish(kind: str, base: str, name: str, x: np.ndarray, y: np.ndarray, train_idx: np.ndarray,
            test_idx: np.ndarray, split_rule: str, classes: list[str], location: str) -> ExternalData:
    num_classes = len(classes) if len(classes) >= 2 else 0
    if num_classes == 0:
        y = np.zeros_like(y)
    dataset = slug(kind, base, x, y)
    shape = tuple(int(s) for s in x.shape[1:])
    spec = DatasetSpec(dataset, "image", shape, LEVELS_8BIT, num_classes)
    splits = Splits(x[train_idx], y[train_idx], x[test_idx], y[test_idx], location)
    inferred = {"spec": name, "location": location, "images": int(len(x)), "shape": list(shape),
                "channels": shape[0], "levels": LEVELS_8BIT, "levels_rule": "8-bit PNG/JPEG pixels",
                "classes": classes if num_classes else [],
                "labels": "class sub-folders / label column" if num_classes else "none (unlabelled)",
                "split": split_rule, "train": int(len(train_idx)), "test": int(len(test_idx))}
    return ExternalData(spec=spec, splits=splits, inferred=inferred)


def describe_inferred(data: ExternalData) -> str:
    """One line that states what was inferred (printed when a run starts)."""
    i = data.inferred
    classes = f"{len(i['classes'])} classes ({', '.join(i['classes'][:5])}{', ...' if len(i['classes']) > 5 else ''})" \
        if i["classes"] else "no classes"
    return (f"{i['spec']}: {i['images']} images, shape {'x'.join(map(str, i['shape']))} ({i['channels']} channel"
            f"{'s' if i['channels'] > 1 else ''}), {i['levels']} levels, {classes}; {i['split']}; "
            f"named {data.spec.name}")
