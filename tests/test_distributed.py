"""torchrun with 2 CPU processes (gloo): same weights on both ranks, one checkpoint, sharded scoring."""

import os
import subprocess
import sys
import textwrap
import time

from helpers import tiny_config, write_tiny_coco
from tsp_model.core.config import dump_toml
from tsp_model.engine.checkpoint import load_checkpoint
from tsp_model.core.records import read_jsonl

SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from tsp_model.engine import distributed as du
    from tsp_model.engine.checkpoint import load_model, weights_digest
    from tsp_model.engine.predict import PoolDataset, score_pool
    from tsp_model.engine.train import train_from_files

    work = Path(sys.argv[1])
    rank = int(os.environ["RANK"])

    def hook(epoch, model, stats):
        # parameters, not BatchNorm running stats: DDP syncs buffers from rank 0 at the start
        # of each forward, so after the last step they legitimately differ
        params = {n: p.detach() for n, p in model.named_parameters()}
        (work / f"rank{rank}.txt").write_text(f"{du.get_world_size()} {weights_digest(params, 40)}")

    out = train_from_files(config_path=work / "cfg.toml", labeled=work / "data" / "annotations.json",
                           images=work / "data" / "images", out=work / "m.pt", on_epoch_end=hook).checkpoint
    loaded = load_model(out)
    dist = du.init_distributed("cpu")
    score_pool(loaded.model, PoolDataset.from_folder(work / "data" / "images"),
               class_names=loaded.class_names, config=loaded.config, out_path=work / "scores.jsonl",
               model_version=loaded.model_version, dist=dist, progress=False)
    du.cleanup()
    """
)


def test_torchrun_two_cpu_processes(tmp_path):
    write_tiny_coco(tmp_path / "data", count=5, seed=4)
    cfg = tiny_config(epochs=2, device="cpu")
    (tmp_path / "cfg.toml").write_text(dump_toml(cfg))
    (tmp_path / "run.py").write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(tmp_path / "run.py"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.time() - t0 < 60

    r0 = (tmp_path / "rank0.txt").read_text().split()
    r1 = (tmp_path / "rank1.txt").read_text().split()
    assert r0[0] == r1[0] == "2"  # really two processes in one group
    assert r0[1] == r1[1]  # identical parameters on both ranks

    # one final checkpoint, no partial or temp files; 5 images / (2 ranks x 2) = 2 steps/epoch
    assert sorted(p.name for p in tmp_path.glob("*.pt*")) == ["m.pt"]
    state = load_checkpoint(tmp_path / "m.pt")
    assert state["epoch"] == 2 and state["data"]["world_size"] == 2

    # sharded scoring merged back into pool order, one record per image, no shards left
    recs = read_jsonl(tmp_path / "scores.jsonl")
    assert [r.image_id for r in recs] == [f"img_{i:03d}.png" for i in range(5)]
    assert not list(tmp_path.glob(".scores.jsonl*"))
