"""Data-parallel training (gloo on CPU) equals one process with the same global batch, for every variant,
batch-level selection included; launched both with torch.multiprocessing and with torchrun itself."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sae_lens import SAE

from abstopk_eval.training.trainer import TrainJob, train_jobs
from tests.helpers.training import D_IN, MEAN, PRESET, SCALE, VARIANTS, stream_factory

ROOT = Path(__file__).resolve().parents[2]


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


def _assert_same_saes(one: Path, two: Path) -> None:
    for variant in VARIANTS:
        a = SAE.load_from_disk(one / variant / "sae").state_dict()
        b = SAE.load_from_disk(two / variant / "sae").state_dict()
        for name, value in a.items():
            assert torch.allclose(b[name], value, atol=1e-4, rtol=1e-4), (variant, name, (b[name] - value).abs().max())


def test_two_process_gloo_training_matches_one_process(tmp_path):
    """Every rank reads the global batch and cuts its share (the trainer's `distributed.shard`)."""
    _train(tmp_path / "single")
    mp.spawn(_worker, args=(_free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    _assert_same_saes(tmp_path / "single", tmp_path / "ddp")


def test_torchrun_sharded_reading_and_global_batch_selection_match_one_process(tmp_path):
    """torchrun, 2 gloo processes, each reading only its rows: batchtopk and batch-abstopk select over the
    global batch, so they too equal one process; the evaluation split gives each item to exactly one rank."""
    _train(tmp_path / "single")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "tests.helpers.torchrun_train", str(tmp_path / "ddp")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_saes(tmp_path / "single", tmp_path / "ddp")
    shares = [json.loads((tmp_path / "ddp" / f"share-{r}.json").read_text()) for r in (0, 1)]
    assert sorted(shares[0] + shares[1]) == list(range(7)) and not set(shares[0]) & set(shares[1])
