"""Training with devices=2 (CPU, gloo) through the real CLI for every family: each run in its own process.

The GAN's manual optimisation under DDP is covered in tests/test_gan.py; this file covers the others,
DDPM's EMA and latent diffusion's two stages and latent scale included: after DDP training both ranks must hold the same weights, which the checkpoint (written
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
from genbench.lightning_cli import make_cli
cli = make_cli(sys.argv[1:], run=False, trainer_defaults={{"callbacks": [DumpWeights()]}})
cli.trainer.fit(cli.model, datamodule=cli.datamodule)
torch.distributed.destroy_process_group()  # a clean exit of every rank
"""


# per model: arguments beyond its smoke profile (latent diffusion: both stages within the 4 steps)
EXTRA_ARGS = {"ldm": ["--model.init_args.autoencoder_steps=2"]}


@pytest.mark.parametrize("model", ["ddpm", "vae", "realnvp", "ldm"])
def test_two_process_ddp_training_keeps_ranks_identical(model, tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(RANK_DUMP.format(out=tmp_path))
    args = [f"--config={ROOT / 'configs' / p}" for p in
            ("trainer/default.yaml", "data/mnist.yaml", f"model/{model}.yaml", f"profile/smoke/{model}.yaml")]
    args += [*EXTRA_ARGS.get(model, []), "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_steps=4",
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
    if model in ("ddpm", "ldm"):
        ema = [k for k in r0 if k.startswith("ema.")]
        assert ema, f"{model} keeps an EMA copy"
    if model == "ldm":  # trained in both stages: one latent scale, estimated alike on both ranks
        assert float(r0["latent_scale"]) > 0
        assert not torch.equal(r0["ema.conv_out.weight"], torch.zeros_like(r0["ema.conv_out.weight"]))


RESUME_SCRIPT = """
import hashlib, os, sys, torch, lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
out = {out!r}
class Probe(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0:  # which random stream each rank trains with
            digest = hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()
            open(f"{{out}}/stream{{trainer.global_rank}}.txt", "w").write(digest)
    def on_train_end(self, trainer, pl_module):
        torch.save({{k: v.detach().cpu() for k, v in pl_module.state_dict().items()}},
                   f"{{out}}/{{os.environ['TAG']}}_rank{{trainer.global_rank}}.pt")
from genbench.lightning_cli import make_cli
ckpt = os.environ.get("CKPT") or None
every = ModelCheckpoint(dirpath=f"{{out}}/ckpt", filename="{{step}}", every_n_train_steps=1, save_top_k=-1)
cli = make_cli(sys.argv[1:], run=False, trainer_defaults={{"callbacks": [Probe(), every]}})
cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt, weights_only=True)
torch.distributed.destroy_process_group()
"""


def test_two_process_ddp_ranks_draw_their_own_noise_and_resume_exactly(tmp_path):
    """DDPM on 2 processes: each rank trains with its own RNG stream (different noise for different data),
    and a run resumed mid-epoch from a checkpoint ends with the uninterrupted run's weights on every rank."""
    import os

    script = tmp_path / "ddp_resume.py"
    script.write_text(RESUME_SCRIPT.format(out=str(tmp_path)))
    args = [f"--config={ROOT / 'configs' / p}" for p in
            ("trainer/default.yaml", "data/mnist.yaml", "model/ddpm.yaml", "profile/smoke/ddpm.yaml")]
    args += ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_steps=6",
             "--trainer.limit_val_batches=0", "--trainer.logger=false", "--trainer.deterministic=true",
             "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}", "--seed_everything=0"]
    base = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {"full": {}, "resumed": {"CKPT": str(tmp_path / "ckpt" / "step=3.ckpt")}}
    for tag, extra in runs.items():
        out = subprocess.run([sys.executable, str(script), *args], cwd=ROOT, capture_output=True, text=True,
                             timeout=600, env={**base, "TAG": tag, **extra})
        assert out.returncode == 0, out.stderr[-4000:]
        if tag == "full":
            streams = [(tmp_path / f"stream{r}.txt").read_text() for r in (0, 1)]
            assert streams[0] != streams[1], "both ranks train with the same random stream"
            state = torch.load(tmp_path / "ckpt" / "step=3.ckpt", weights_only=True)
            assert state["genbench_rng_states"]["per_rank"]["torch"].shape[0] == 2
    for r in (0, 1):
        full = torch.load(tmp_path / f"full_rank{r}.pt", weights_only=True)
        resumed = torch.load(tmp_path / f"resumed_rank{r}.pt", weights_only=True)
        diff = [k for k in full if not torch.equal(full[k], resumed[k])]
        assert not diff, f"rank {r}: the resumed DDP run differs in {diff[:5]}"
