"""Training with devices=2 (CPU, gloo) through the real CLI for every family: each run in its own process.

The GAN's manual optimisation under DDP is covered in tests/test_gan.py; this file covers the others,
DDPM's EMA included: after DDP training both ranks must hold the same weights, which the checkpoint (written
by rank 0) and a second rank-1 dump are compared on.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

RANK_DUMP = """
import sys, torch, lightning as L
class DumpWeights(L.Callback):
    def on_train_end(self, trainer, pl_module):
        torch.save({{k: v.detach().cpu() for k, v in pl_module.state_dict().items()}},
                   "{out}/rank%d.pt" % trainer.global_rank)
from genbench.cli import make_cli
cli = make_cli(sys.argv[1:], run=False, trainer_defaults={{"callbacks": [DumpWeights()]}})
cli.trainer.fit(cli.model, datamodule=cli.datamodule)
torch.distributed.destroy_process_group()  # a clean exit of every rank
"""


@pytest.mark.parametrize("model", ["ddpm", "vae", "realnvp"])
def test_two_process_ddp_training_keeps_ranks_identical(model, tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(RANK_DUMP.format(out=tmp_path))
    args = [f"--config={ROOT / 'configs' / p}" for p in
            ("trainer/default.yaml", "data/mnist.yaml", f"model/{model}.yaml", f"profile/smoke/{model}.yaml")]
    args += ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_steps=4",
             "--trainer.limit_val_batches=0", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
             "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"]
    out = subprocess.run([sys.executable, str(script), *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-4000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.isfinite(r0[k].float()).all(), k
        assert torch.equal(r0[k], r1[k]), f"{k} differs between ranks after DDP training"
    if model == "ddpm":
        ema = [k for k in r0 if k.startswith("ema.")]
        assert ema, "DDPM keeps an EMA copy"
