"""Two gloo processes with the same global batch train the same SAEs as one process."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sae_lens import SAE

from abstopk_eval.training.trainer import TrainJob, train_jobs
from tests.helpers.training import D_IN, MEAN, PRESET, SCALE, stream_factory

VARIANTS = ("relu", "jumprelu", "topk", "abstopk")


def _train(root: Path) -> None:
    jobs = [TrainJob(v, 2, 0, PRESET.name, root / v) for v in VARIANTS]
    train_jobs(jobs, stream_factory(), d_in=D_IN, preset=PRESET, mean=MEAN, scale=SCALE, metadata={})


def _worker(rank: int, port: int, root: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        _train(Path(root))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_training_matches_one_process(tmp_path):
    _train(tmp_path / "single")
    mp.spawn(_worker, args=(_free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    for variant in VARIANTS:
        one = SAE.load_from_disk(tmp_path / "single" / variant / "sae").state_dict()
        two = SAE.load_from_disk(tmp_path / "ddp" / variant / "sae").state_dict()
        for name, value in one.items():
            assert torch.allclose(two[name], value, atol=1e-4, rtol=1e-4), (
                variant,
                name,
                (two[name] - value).abs().max(),
            )
