"""Pool scoring streams its records to a shard, resumes after an interruption, merges in pool order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.ls_fixtures import make_tiny_checkpoint, write_png
from tsp_model.engine.checkpoint import load_model
from tsp_model.engine.predict import score_pool
from tsp_model.core.records import read_jsonl

N = 10
BATCH = 3


class Counting(torch.nn.Module):
    """The tiny model, counting the images it sees; raises KeyboardInterrupt on call ``stop_at``."""

    def __init__(self, inner: torch.nn.Module, stop_at: int | None = None) -> None:
        super().__init__()
        self.inner, self.stop_at, self.calls, self.images = inner, stop_at, 0, 0

    def forward(self, images):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        self.images += len(images)
        return self.inner(images)


@pytest.fixture
def pool(tmp_path: Path):
    items = [(100 + i, write_png(tmp_path / "img" / f"{i}.png", 64, seed=i), f"{i}.png") for i in range(N)]
    loaded = load_model(make_tiny_checkpoint(tmp_path / "m", detections=3))
    cfg = loaded.config
    cfg.score.batch_size, cfg.score.workers, cfg.score.amp = BATCH, 0, False
    return items, loaded, cfg


def _score(model, items, loaded, cfg, out: Path, version: str = "v") -> list:
    score_pool(model, items, class_names=loaded.class_names, config=cfg, out_path=out, model_version=version,
               progress=False)
    return read_jsonl(out)


def test_interrupted_scoring_continues_where_it_stopped(pool, tmp_path):
    items, loaded, cfg = pool
    reference = _score(loaded.model, items, loaded, cfg, tmp_path / "ref.jsonl")

    out = tmp_path / "scores.jsonl"
    first = Counting(loaded.model, stop_at=3)  # two batches (6 images) written, the third interrupted
    with pytest.raises(KeyboardInterrupt):
        _score(first, items, loaded, cfg, out)
    assert not out.exists()  # the score file appears complete or not at all
    shard = tmp_path / ".scores.jsonl.rank0"
    assert len(shard.read_text().splitlines()) == 1 + 2 * BATCH  # header + the finished batches

    with shard.open("a") as fh:
        fh.write("7\t{\"image_id\": 10")  # a line cut short by the interruption
    second = Counting(loaded.model)
    resumed = _score(second, items, loaded, cfg, out)
    assert second.images == N - 2 * BATCH  # only what was missing
    assert [r.to_json() for r in resumed] == [r.to_json() for r in reference]
    assert not shard.exists()


def test_a_shard_of_another_model_is_started_over(pool, tmp_path):
    items, loaded, cfg = pool
    out = tmp_path / "scores.jsonl"
    with pytest.raises(KeyboardInterrupt):
        _score(Counting(loaded.model, stop_at=2), items, loaded, cfg, out, version="old")
    again = Counting(loaded.model)
    records = _score(again, items, loaded, cfg, out, version="new")
    assert again.images == N and {r.model_version for r in records} == {"new"}


def test_unreadable_images_are_skipped_and_order_kept(pool, tmp_path):
    items, loaded, cfg = pool
    Path(items[4][1]).write_bytes(b"not an image")
    records = _score(loaded.model, items, loaded, cfg, tmp_path / "scores.jsonl")
    assert [r.image_id for r in records] == [100 + i for i in range(N) if i != 4]
