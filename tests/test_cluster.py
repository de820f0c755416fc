"""Multi-node launch through Lightning's own cluster environments: dry runs of the environment parsing."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import lightning as L
t = L.Trainer(accelerator="cpu", devices={devices}, num_nodes={nodes}, strategy="ddp", logger=False,
              enable_checkpointing=False, enable_progress_bar=False)
env = t.strategy.cluster_environment
print(type(env).__name__, env.world_size(), env.global_rank(), env.local_rank(), env.node_rank())
"""


def probe(env: dict, devices: int, nodes: int) -> list[str]:
    base = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE",
                                                                                 "LOCAL_", "GROUP_", "MASTER_"))}
    out = subprocess.run([sys.executable, "-c", PROBE.format(devices=devices, nodes=nodes)], env={**base, **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1].split()


def test_slurm_environment_is_parsed():
    # task 5 of a 2-node x 4-task job: node 1, local rank 1
    env = {"SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
           "SLURM_NODEID": "1", "SLURM_NNODES": "2", "SLURM_JOB_ID": "123", "SLURM_JOB_NAME": "genbench",
           "SLURM_NODELIST": "node[0-1]", "SLURM_JOB_NUM_NODES": "2"}
    name, world, rank, local, node = probe(env, devices=4, nodes=2)
    assert name == "SLURMEnvironment"
    assert (int(world), int(rank), int(local), int(node)) == (8, 5, 1, 1)


def test_torchrun_environment_is_parsed():
    env = {"RANK": "6", "WORLD_SIZE": "8", "LOCAL_RANK": "2", "GROUP_RANK": "1", "LOCAL_WORLD_SIZE": "4",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511", "TORCHELASTIC_RUN_ID": "genbench"}
    name, world, rank, local, node = probe(env, devices=4, nodes=2)
    assert name == "TorchElasticEnvironment"
    assert (int(world), int(rank), int(local), int(node)) == (8, 6, 2, 1)


@pytest.mark.parametrize("script", ["slurm.sbatch", "torchrun.sh"])
def test_cluster_scripts_call_the_bench_with_lightning_flags(script):
    text = (ROOT / "configs" / "cluster" / script).read_text()
    assert re.search(r"-m genbench bench .*--num-nodes", text, re.S)
    out = subprocess.run(["bash", "-n", str(ROOT / "configs" / "cluster" / script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
