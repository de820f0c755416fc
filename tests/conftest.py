import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def one_thread():
    """One intra-op thread for tests of tiny nets: as fast alone, and far faster on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    """The small offline ``digits`` datamodule, set up (8x8, 17 grey levels, 10 classes)."""
    from genbench.data.datamodule import GenDataModule

    dm = GenDataModule("digits")
    dm.setup()
    return dm
