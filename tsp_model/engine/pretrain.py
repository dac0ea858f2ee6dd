"""Self-supervised pretraining of the detector's backbone and FPN on unlabeled slices (SimSiam).

Why SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021): no
negative pairs (SimCLR needs thousands per batch), no momentum encoder or queue (BYOL, MoCo), a
stop-gradient instead: it learns at batch sizes a department's GPU or a test's CPU holds, and its
representation transfers to detection (the paper's COCO results). What is trained is exactly what
the detector reuses: the backbone body and its FPN; the embedding of a slice is the average of
every FPN map, concatenated (as :mod:`tsp_model.engine.embeddings` pools them); the projector and
predictor are thrown away.

Views of a CT slice (:class:`TwoViews`): a random crop of ``pretrain.crop_scale`` of its area
resized to the model's input size, a horizontal flip, and contrast and brightness changes of at
most ``pretrain.intensity`` within the display window, values clipped to [0, 1]. No colour
jitter (the three channels of a window are one grey), no solarization: densities must keep their
order.

    python -m tsp_model.engine.pretrain --config CFG.toml --images slices.json --out backbone.pt
    torchrun --nproc_per_node=8 -m tsp_model.engine.pretrain ...

The checkpoint holds the backbone's state (``body.*``, ``fpn.*``: ``model.weights_backbone``
loads it), the config, the method, and what it was trained on (the number of slices and a
digest of their names); ``<out>.partial`` after every ``checkpoint_every_s`` resumes an
interrupted run where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tsp_model.core.config import TSPConfig
from tsp_model.core.progress import progress as tsp_progress
from tsp_model.engine import distributed as du
from tsp_model.engine.amp import autocast
from tsp_model.engine.checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

__all__ = ["METHOD", "SimSiam", "TwoViews", "backbone_embedding", "pretrain", "pretrained_embeddings"]

METHOD = "simsiam"


class TwoViews(Dataset):
    """Two augmented views of each slice: FloatTensor[3, size, size] twice (module docstring)."""

    def __init__(self, paths: Sequence[str | Path], size: int, crop_scale: Sequence[float] = (0.3, 1.0),
                 intensity: float = 0.2) -> None:
        self.paths = [Path(p) for p in paths]
        self.size, self.crop_scale, self.intensity = int(size), tuple(crop_scale), float(intensity)

    def __len__(self) -> int:
        return len(self.paths)

    def view(self, image: Tensor, g: torch.Generator) -> Tensor:
        """One view of ``image`` (FloatTensor[3, H, W] in 0..1)."""
        _, h, w = image.shape
        u = torch.rand(6, generator=g).tolist()
        area = (self.crop_scale[0] + (self.crop_scale[1] - self.crop_scale[0]) * u[0]) * h * w
        aspect = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
        ch, cw = round(math.sqrt(area / aspect)), round(math.sqrt(area * aspect))
        if ch > h or cw > w:  # that aspect does not fit: the slice's own (all of it at scale 1)
            ch, cw = round(math.sqrt(area * h / w)), round(math.sqrt(area * w / h))
        ch, cw = max(1, min(h, ch)), max(1, min(w, cw))
        y0, x0 = int(u[2] * (h - ch + 1)), int(u[3] * (w - cw + 1))
        crop = image[:, y0 : y0 + ch, x0 : x0 + cw]
        out = F.interpolate(crop[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
        if u[4] < 0.5:
            out = out.flip(-1)
        # contrast around the slice's mean and brightness, both within +-intensity
        a = 1.0 + self.intensity * (2 * torch.rand(1, generator=g).item() - 1)
        b = self.intensity * (2 * u[5] - 1)
        return ((out - out.mean()) * a + out.mean() + b).clamp(0.0, 1.0)

    def __getitem__(self, idx: int) -> tuple[Tensor, Tensor]:
        from tsp_model.data.image_io import read_image, to_tensor

        image = to_tensor(read_image(self.paths[idx]))
        g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,)).item()))
        return self.view(image, g), self.view(image, g)


def backbone_embedding(backbone: nn.Module, images: Tensor) -> Tensor:
    """FloatTensor[B, D]: every FPN map of ``images`` (FloatTensor[B, 3, H, W]) averaged over
    space, concatenated (D = maps x channels)."""
    return torch.cat([f.float().mean(dim=(2, 3)) for f in backbone(images).values()], dim=1)


def _mlp(dims: Sequence[int], last_bn: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = k == len(dims) - 2
        layers.append(nn.Linear(a, b, bias=last and not last_bn))
        if not last:
            layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*layers)


class SimSiam(nn.Module):
    """The backbone (body + FPN) with SimSiam's projector and predictor.

    ``forward(x1, x2)`` (FloatTensor[B, 3, H, W] each, two views of the same slices) returns the
    symmetric negative cosine loss ``(D(p1, z2) + D(p2, z1)) / 2`` with ``z`` detached.
    """

    def __init__(self, backbone: nn.Module, embedding_dim: int, projection_dim: int = 256,
                 prediction_dim: int = 64) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = _mlp([embedding_dim, projection_dim, projection_dim], last_bn=True)
        self.predictor = _mlp([projection_dim, prediction_dim, projection_dim], last_bn=False)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        z = self.projector(backbone_embedding(self.backbone, torch.cat([x1, x2])))
        p = self.predictor(z)
        z1, z2 = z.detach().chunk(2)
        p1, p2 = p.chunk(2)
        return -(F.cosine_similarity(p1, z2, dim=-1).mean() + F.cosine_similarity(p2, z1, dim=-1).mean()) / 2


def _normalize(images: Tensor) -> Tensor:
    # the detector normalizes its input this way (GeneralizedRCNNTransform's ImageNet statistics)
    mean = images.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = images.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (images - mean) / std


def images_digest(paths: Sequence[str | Path]) -> str:
    """sha1 of the sorted file names: which slices a backbone has seen."""
    h = hashlib.sha1()
    for name in sorted(Path(p).name for p in paths):
        h.update(name.encode() + b"\n")
    return h.hexdigest()[:12]


def pretrain(config: TSPConfig, image_paths: Sequence[str | Path], out_path: str | Path, *,
             dist: du.DistInfo | None = None, resume: bool = True, progress: bool = True) -> Path:
    """SimSiam on ``image_paths`` (labels are never read); writes and returns ``out_path``.

    The backbone is :func:`tsp_model.nn.model.build_backbone` of ``config.model`` (its norm
    resolved as for training from scratch: GroupNorm); ``config.pretrain`` sets the schedule (SGD,
    cosine learning rate, linear scaling with the total batch).
    """
    from tsp_model.nn.model import build_backbone, resolve_norm

    pc = config.pretrain
    dist = dist or du.init_distributed(pc.device)
    device = dist.device
    out_path = Path(out_path)
    if len(image_paths) < 2:
        raise ValueError(f"pretraining needs at least 2 slices, got {len(image_paths)}")
    model_cfg = dataclasses.replace(config.model, norm=resolve_norm(config.model), weights=None, weights_backbone=None)
    torch.manual_seed(pc.seed)
    backbone, _ = build_backbone(model_cfg)
    size = int(model_cfg.min_size)
    with torch.no_grad():
        dim = backbone_embedding(backbone, torch.zeros(2, 3, size, size)).shape[1]
    model = SimSiam(backbone, dim, pc.projection_dim, pc.prediction_dim).to(device)
    batch = min(pc.batch_size, len(image_paths) // dist.world_size or 1)
    lr = pc.lr * batch * dist.world_size / 256
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=pc.momentum, weight_decay=pc.weight_decay)
    start_epoch, history = 0, []
    partial = out_path.with_name(out_path.name + ".partial")
    if resume and out_path.is_file() and load_checkpoint(out_path).get("epoch", 0) >= pc.epochs:
        return out_path  # finished before
    if resume and partial.is_file():
        saved = load_checkpoint(partial)
        model.load_state_dict(saved["pretrain_state"]["model"])
        optimizer.load_state_dict(saved["pretrain_state"]["optimizer"])
        start_epoch, history = int(saved["epoch"]), list(saved.get("history", []))
    core = model
    if dist.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    data = TwoViews(image_paths, size, pc.crop_scale, pc.intensity)
    sampler = DistributedSampler(data, num_replicas=dist.world_size, rank=dist.rank, seed=pc.seed, drop_last=True)
    loader = DataLoader(data, batch_size=batch, sampler=sampler, num_workers=pc.workers, drop_last=True,
                        pin_memory=device.type == "cuda")
    steps_per_epoch = max(len(loader), 1)
    digest = images_digest(image_paths)

    def state(epoch: int, final: bool) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "model": core.backbone.state_dict(),  # body.* and fpn.*: what model.weights_backbone loads
            "config": dataclasses.replace(config, model=model_cfg).to_dict(), "epoch": epoch, "history": history,
            "pretrain": {"method": METHOD, "epochs": pc.epochs, "batch_size": batch, "world_size": dist.world_size,
                         "lr": lr, "image_size": size, "embedding_dim": dim},
            "data": {"images": len(image_paths), "digest": digest},
            "model_version": f"pretrain-{METHOD}-{digest}", "class_names": [],
        }
        if not final:
            doc["pretrain_state"] = {"model": core.state_dict(), "optimizer": optimizer.state_dict()}
        return doc

    bar = tsp_progress(total=pc.epochs, initial=start_epoch, desc="pretrain", unit="epoch",
                       enabled=progress and dist.is_main)
    t_start, last_save, seen = time.perf_counter(), time.monotonic(), 0
    model.train()
    for epoch in range(start_epoch, pc.epochs):
        sampler.set_epoch(epoch)
        torch.manual_seed(pc.seed + 1000 * (epoch + 1) + dist.rank)
        total = n = 0.0
        for k, (x1, x2) in enumerate(loader):
            step = epoch * steps_per_epoch + k
            for group in optimizer.param_groups:  # cosine decay over the whole run
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / (pc.epochs * steps_per_epoch)))
            x1, x2 = _normalize(x1.to(device, non_blocking=True)), _normalize(x2.to(device, non_blocking=True))
            with autocast(device, pc.amp):
                loss = model(x1, x2)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise RuntimeError(f"pretraining loss became {value} at epoch {epoch + 1}; lower pretrain.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, n, seen = total + value, n + 1, seen + 2 * len(x1) * dist.world_size
        history.append({"epoch": epoch + 1, "loss": total / max(n, 1)})
        bar.set_postfix(loss=f"{total / max(n, 1):.3f}")
        bar.update(1)
        if dist.is_main and epoch + 1 < pc.epochs and time.monotonic() - last_save >= pc.checkpoint_every_s:
            save_checkpoint(partial, state(epoch + 1, final=False))
            last_save = time.monotonic()
        du.barrier()
    bar.close()
    seconds = time.perf_counter() - t_start
    if dist.is_main:
        done = state(pc.epochs, final=True)
        done["cost"] = {"seconds": round(seconds, 1), "views_per_second": round(seen / max(seconds, 1e-9), 1),
                        "device": str(device), "world_size": dist.world_size}
        save_checkpoint(out_path, done)
        partial.unlink(missing_ok=True)
        log.info("pretrained on %d slices in %.0f s (%.1f views/s)", len(image_paths), seconds, seen / max(seconds, 1e-9))
    du.barrier()
    return out_path


@torch.inference_mode()
def pretrained_embeddings(checkpoint: str | Path, image_paths: Sequence[str | Path], *, batch_size: int = 16,
                          device: str | torch.device = "cpu") -> np.ndarray:
    """L2-normalized embeddings float[N, D] of whole slices by a pretrained backbone (TypiClust's
    cold start and the clusters, in place of thumbnails)."""
    from tsp_model.core.config import ModelConfig
    from tsp_model.data.image_io import read_image, to_tensor
    from tsp_model.nn.model import build_backbone

    state = load_checkpoint(checkpoint)
    model_cfg = ModelConfig(**{k: v for k, v in state["config"]["model"].items()})
    backbone, _ = build_backbone(dataclasses.replace(model_cfg, weights=None, weights_backbone=None))
    backbone.load_state_dict(state["model"])
    backbone.eval().to(device)
    size = int(state["pretrain"]["image_size"])
    rows = []
    for k in range(0, len(image_paths), batch_size):
        batch = [F.interpolate(to_tensor(read_image(p))[None], size=(size, size), mode="bilinear",
                               align_corners=False)[0] for p in image_paths[k : k + batch_size]]
        rows.append(F.normalize(backbone_embedding(backbone, _normalize(torch.stack(batch).to(device))), dim=1).cpu())
    return torch.cat(rows).numpy() if rows else np.zeros((0, 0), dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from tsp_model.core.config import ConfigError, load_config
    from tsp_model.engine.checkpoint import CheckpointError

    p = argparse.ArgumentParser(prog="python -m tsp_model.engine.pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="TSPConfig TOML ([model] the backbone, [pretrain] the schedule)")
    p.add_argument("--images", required=True, help="JSON list of the slices' paths")
    p.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return du.run_entry_point(
        lambda: pretrain(load_config(args.config), json.loads(Path(args.images).read_text()), args.out,
                         progress=not args.no_progress),
        (CheckpointError, ConfigError, RuntimeError, ValueError, FileNotFoundError),
    )


if __name__ == "__main__":
    sys.exit(main())
