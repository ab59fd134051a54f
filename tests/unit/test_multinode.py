"""train.trainer.num_nodes reaches Lightning, and the environment torchrun or SLURM gives each
process becomes its rank: node 1's second process is global rank 3 of 4, not rank zero (it
trains, it does not log or register). No process group is started: only the Trainer is built."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bigdeep.config import Trainer
from bigdeep.training.plumbing import launched_as_rank_zero, make_trainer

TWO_BY_TWO = Trainer(accelerator="cpu", devices=2, num_nodes=2, strategy="ddp")
TORCHRUN = {  # what `torchrun --nnodes 2 --nproc-per-node 2` sets in node 1's second process
    "RANK": "3",
    "LOCAL_RANK": "1",
    "GROUP_RANK": "1",
    "WORLD_SIZE": "4",
    "LOCAL_WORLD_SIZE": "2",
    "TORCHELASTIC_RUN_ID": "bigdeep-1",
}
SLURM = {  # what `srun` sets for task 3 of `sbatch --nodes 2 --ntasks-per-node 2`
    "SLURM_NTASKS": "4",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_JOB_NAME": "bigdeep",
    "SLURM_JOB_ID": "7",
    "SLURM_NODELIST": "node[1-2]",
}


@pytest.mark.parametrize(
    ("env", "cluster"), [(TORCHRUN, "TorchElasticEnvironment"), (SLURM, "SLURMEnvironment")]
)
def test_a_launcher_s_environment_makes_the_rank(env, cluster, monkeypatch, tmp_path):
    for key in ("MASTER_ADDR", "MASTER_PORT", *TORCHRUN, *SLURM):  # restored after the test
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    trainer = make_trainer(TWO_BY_TWO, 1, 1, None, tmp_path)
    assert type(trainer.strategy.cluster_environment).__name__ == cluster
    assert (trainer.num_nodes, trainer.world_size) == (2, 4)
    assert (trainer.global_rank, trainer.node_rank, trainer.local_rank) == (3, 1, 1)
    assert not launched_as_rank_zero()


def test_one_node_is_the_default(tmp_path):
    trainer = make_trainer(Trainer(accelerator="cpu", devices=1), 1, 1, None, tmp_path)
    assert (trainer.num_nodes, trainer.world_size) == (1, 1)


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"num_nodes": 0}, "greater than or equal to 1"),
        ({"num_nodes": 2, "strategy": "single_device"}, "train.trainer.num_nodes is 2"),
    ],
)
def test_num_nodes_is_checked(fields, said):
    with pytest.raises(ValidationError, match=said):
        Trainer(**fields)
