"""Your own data: ``folder:PATH`` and ``hf:ID_OR_PATH[:COLUMN]``, inferred, split and checked (no network)."""

import numpy as np
import pytest
from PIL import Image

from genbench.data import GenDataModule, external
from genbench.data.external import ExternalDataError, load_external


def digit_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as 8-bit grey images (0..16 stretched to 0..240) and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.random.default_rng(seed).permutation(len(d.images))[:n]
    return (d.images[idx] * 15).astype(np.uint8), d.target[idx].astype(np.int64)


def write_pngs(folder, images, prefix="img"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{prefix}{i:03d}.png")


@pytest.fixture(autouse=True)
def fresh_cache():
    external._LOADED.clear()
    yield
    external._LOADED.clear()


def test_class_folders_are_inferred_and_split_by_seed(tmp_path):
    x, y = digit_images(30)
    for label in (0, 1, 2):  # three classes, by sub-folder name
        write_pngs(tmp_path / "digits" / f"class_{label}", x[label * 10:(label + 1) * 10])
    data = load_external(f"folder:{tmp_path / 'digits'}")
    assert data.spec.shape == (1, 8, 8) and data.spec.levels == 256 and data.spec.num_classes == 3
    assert data.inferred["classes"] == ["class_0", "class_1", "class_2"] and data.inferred["images"] == 30
    s = data.splits
    assert len(s.test_x) == 3 and len(s.train_x) == 27 and "seeded split" in data.inferred["split"]
    # PNG is lossless: every image comes back exactly, with its folder's label
    got = np.concatenate([s.train_x, s.test_x])[:, 0]
    labels = np.concatenate([s.train_y, s.test_y])
    expected = {img.tobytes(): k // 10 for k, img in enumerate(x)}
    assert sorted(expected[g.tobytes()] for g in got) == sorted(labels.tolist())
    assert all(expected[g.tobytes()] == lab for g, lab in zip(got, labels, strict=True))
    again = external._load_folder(f"folder:{tmp_path / 'digits'}")  # deterministic: same split, same name
    assert np.array_equal(again.splits.test_x, s.test_x) and again.spec.name == data.spec.name
    assert data.spec.name.startswith("folder-digits-")


def test_own_train_test_folders_and_colour_images(tmp_path):
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (25, 6, 5, 3), dtype=np.uint8)
    write_pngs(tmp_path / "c" / "train", colour[:20])
    write_pngs(tmp_path / "c" / "test", colour[20:])
    data = load_external(f"folder:{tmp_path / 'c'}")
    assert data.spec.shape == (3, 6, 5) and data.spec.num_classes == 0
    assert len(data.splits.train_x) == 20 and len(data.splits.test_x) == 5
    assert data.inferred["split"] == "the folder's own train/ and test/"
    assert np.array_equal(data.splits.test_x, colour[20:].transpose(0, 3, 1, 2))


@pytest.mark.parametrize("problem,match", [
    ("mixed", "mixed sizes: 8x8 .*; 6x6"),
    ("text", "not PNG/JPEG images: .*notes.txt"),
    ("broken", "broken.png is not a readable PNG/JPEG image"),
    ("few", "5 images found, at least 20"),
    ("missing", "is not a directory"),
])
def test_bad_folders_are_named(tmp_path, problem, match):
    x, _ = digit_images(25)
    folder = tmp_path / "d"
    write_pngs(folder, x[:5] if problem == "few" else x)
    if problem == "mixed":
        Image.fromarray(np.zeros((6, 6), dtype=np.uint8)).save(folder / "small.png")
    if problem == "text":
        (folder / "notes.txt").write_text("hello")
    if problem == "broken":
        (folder / "broken.png").write_bytes(b"not a png")
    name = f"folder:{tmp_path / 'nowhere'}" if problem == "missing" else f"folder:{folder}"
    with pytest.raises(ExternalDataError, match=match):
        load_external(name)


def test_datamodule_reads_a_folder_and_states_what_it_inferred(tmp_path):
    x, _ = digit_images(40)
    write_pngs(tmp_path / "flat", x)
    dm = GenDataModule(f"folder:{tmp_path / 'flat'}", batch_size=4)
    dm.setup()
    assert dm.data_shape == (1, 8, 8) and dm.num_levels == 256 and dm.num_classes == 0
    assert dm.dataset.startswith("folder-flat-") and "/" not in dm.dataset
    d = dm.describe()
    assert d["inferred"]["images"] == 40 and d["inferred"]["labels"] == "none (unlabelled)"
    assert d["sizes"] == {"train": 33, "val": 3, "test": 4}
    assert "40 images, shape 1x8x8 (1 channel), 256 levels, no classes" in external.describe_inferred(dm.external)


def _image_dataset(images, labels, names):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"image": [Image.fromarray(i) for i in images], "label": labels.tolist()},
                                      features=features)


def test_a_saved_datasets_dict_keeps_its_own_splits(tmp_path):
    import datasets

    x, y = digit_images(30)
    names = [str(k) for k in range(10)]
    dd = datasets.DatasetDict({"train": _image_dataset(x[:24], y[:24], names),
                               "test": _image_dataset(x[24:], y[24:], names)})
    dd.save_to_disk(str(tmp_path / "ds"))
    data = load_external(f"hf:{tmp_path / 'ds'}")
    assert data.spec.shape == (1, 8, 8) and data.spec.num_classes == 10
    assert np.array_equal(data.splits.train_x[:, 0], x[:24]) and np.array_equal(data.splits.test_y, y[24:])
    assert data.inferred["split"] == "the dataset's own train and test splits"
    assert data.spec.name.startswith("hf-ds-")


def test_a_single_dataset_with_an_array_column_is_split_by_seed(tmp_path):
    import datasets

    x, _ = digit_images(30)
    ds = datasets.Dataset.from_dict({"pixels": x.tolist(), "caption": ["a digit"] * len(x)})
    ds.save_to_disk(str(tmp_path / "arr"))
    with pytest.raises(ExternalDataError, match="no image column found among pixels, caption"):
        load_external(f"hf:{tmp_path / 'arr'}")
    with pytest.raises(ExternalDataError, match="has no column 'px'"):
        load_external(f"hf:{tmp_path / 'arr'}:px")
    data = load_external(f"hf:{tmp_path / 'arr'}:pixels")
    assert data.spec.shape == (1, 8, 8) and data.spec.num_classes == 0
    assert len(data.splits.test_x) == 3 and "seeded split" in data.inferred["split"]
    got = {img.tobytes() for img in np.concatenate([data.splits.train_x, data.splits.test_x])[:, 0]}
    assert got == {img.tobytes() for img in x}
