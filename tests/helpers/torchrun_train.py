"""Run under torchrun by tests/training/test_distributed.py: every rank reads only its share of each batch
(the stream is cut by `distributed.shard_bounds`, as the workflow's cache reader is) and trains every variant;
rank 0's folder then holds the SAEs. Also writes each rank's `my_share` of a list, to check the evaluation split.

    torchrun --standalone --nproc_per_node 2 -m tests.helpers.torchrun_train OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from abstopk_eval.training import distributed
from abstopk_eval.training.trainer import TrainJob, train_jobs
from tests.helpers.training import D_IN, MEAN, PRESET, SCALE, VARIANTS, stream_factory


def main(out: Path) -> None:
    torch.set_num_threads(1)
    assert distributed.init_from_env("cpu"), "expected to be launched by torchrun with WORLD_SIZE > 1"
    try:
        jobs = [TrainJob(v, 2, 0, PRESET.name, out / v) for v in VARIANTS]
        stream = stream_factory(rows=distributed.shard_bounds(PRESET.batch_size))
        train_jobs(jobs, stream, d_in=D_IN, preset=PRESET, mean=MEAN, scale=SCALE, metadata={})
        share = distributed.my_share(list(range(7)))
        (out / f"share-{distributed.rank()}.json").write_text(json.dumps(share))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
