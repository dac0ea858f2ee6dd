"""Training: labeled + pseudo-labeled images in every batch (eq. 5), SGD, AMP, DDP, checkpoints.

Single process::

    train(config, labeled, pseudo, out_path="models/m.pt", class_names=names)

N processes (GPUs with NCCL, or CPU processes with gloo), unchanged code::

    torchrun --nproc_per_node=N -m tsp_model.engine.train --config CFG.toml \
        --labeled ANN.json --images DIR [--pseudo SCORES.jsonl --pseudo-images DIR] --out M.pt

Checkpoints and resuming: after an epoch, when ``train.checkpoint_every_s`` have passed since the
last one (0: every epoch), rank 0 writes ``<out>.partial`` (atomic; the name
does not end in ``.pt``, so :func:`~tsp_model.engine.checkpoint.latest_checkpoint` and the
backend never serve a half-trained model). After the last epoch it writes ``<out>`` and removes
the partial file. ``resume=True`` continues from whichever of the two holds more epochs: model,
optimizer, scheduler, scaler and history are restored, and the data order and augmentation are
reseeded per epoch from ``train.seed``, so a resumed run repeats the uninterrupted one.

Learning rate: see :class:`tsp_model.core.config.TrainConfig` for the scaling rule
(``lr`` is for 8 processes x ``batch_size`` images; ``scale_lr`` applies lr x world / 8).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from tsp_model.core.config import TSPConfig, lr_milestones
from tsp_model.core.progress import progress as tsp_progress
from tsp_model.core.records import ImageScore
from tsp_model.engine import distributed as du
from tsp_model.engine.amp import autocast, make_grad_scaler
from tsp_model.engine.checkpoint import CheckpointError, load_checkpoint, make_model_version, save_checkpoint

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
EpochHook = Callable[[int, torch.nn.Module, dict[str, float]], None]


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite; the message names every loss term."""


def partial_path(out_path: str | Path) -> Path:
    """Where the per-epoch resume checkpoint of ``out_path`` lives."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + PARTIAL_SUFFIX)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def collate(batch: list) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Detection batches stay lists: images differ in size."""
    return [b[0] for b in batch], [b[1] for b in batch]


class MixedBatchSampler(Sampler[list[int]]):
    """Batches of ``ConcatDataset([labeled, pseudo])`` indices: ``batch_size`` labeled images,
    plus ``pseudo_per_batch`` pseudo-labeled ones on top (eq. 5 sums both losses per batch).

    The labeled part is exactly what training without pseudo labels sees: an epoch is one pass
    over the labeled images, ``ceil(L / (batch_size * world))`` batches per rank, each holding
    ``batch_size`` labeled images drawn from the same seeded permutation (repeated to fill the
    last batch) whether or not pseudo images exist. Pseudo images come from a permutation of
    their own (repeated when there are fewer than the slots), so adding them changes what each
    step also sees, never the labeled batches nor the number of steps: a comparison with and
    without pseudo labels measures the pseudo labels, not a schedule. Global batch j goes to
    rank ``j % world``; deterministic given ``seed`` and the epoch (call :meth:`set_epoch`, like
    ``DistributedSampler``). Use as ``DataLoader(batch_sampler=...)``.
    """

    def __init__(
        self,
        num_labeled: int,
        num_pseudo: int,
        batch_size: int,
        *,
        pseudo_per_batch: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        if num_labeled < 1:
            raise ValueError("training needs at least one labeled image")
        self.num_labeled, self.num_pseudo = num_labeled, num_pseudo
        self.batch_size = batch_size
        self.pseudo_per_batch = (batch_size if pseudo_per_batch is None else pseudo_per_batch) if num_pseudo else 0
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.epoch = 0
        self.batches_per_rank = math.ceil(num_labeled / (batch_size * num_replicas))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_rank

    @staticmethod
    def _draw(n: int, k: int, g: torch.Generator) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            out.extend(torch.randperm(n, generator=g).tolist())
        return out[:k]

    def __iter__(self) -> Iterator[list[int]]:
        n_batches = self.batches_per_rank * self.num_replicas
        bs, ps = self.batch_size, self.pseudo_per_batch
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        labeled = self._draw(self.num_labeled, n_batches * bs, g)
        pseudo: list[int] = []
        if ps:
            # a stream of its own: the labeled draws above do not depend on the pseudo set
            gp = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch + 1_000_000_007)
            pseudo = [self.num_labeled + i for i in self._draw(self.num_pseudo, n_batches * ps, gp)]
        for j in range(self.rank, n_batches, self.num_replicas):
            yield labeled[j * bs : (j + 1) * bs] + pseudo[j * ps : (j + 1) * ps]


def _to_device(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]


def _check_finite(losses: dict[str, float], epoch: int, step: int) -> None:
    if all(math.isfinite(v) for v in losses.values()):
        return
    terms = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
    raise NonFiniteLossError(
        f"non-finite loss at epoch {epoch} step {step}: {terms}; stopping. Lower train.lr, "
        "set train.warmup_iters, or check the labels (empty or degenerate masks/boxes)"
    )


def train_one_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    *,
    config: TSPConfig,
    device: torch.device,
    epoch: int,
    base_lrs: list[float],
    start_iter: int,
    progress: bool = True,
) -> dict[str, float]:
    """One pass over ``loader``; returns the epoch's mean of every loss term (averaged over ranks)."""
    tc = config.train
    model.train()
    sums: dict[str, float] = collections.defaultdict(float)
    n = 0
    # the steps of an epoch: a bar on a terminal; a log gets the epoch's line from train()
    bar = tsp_progress(loader, desc=f"epoch {epoch}/{tc.epochs}", unit="batch",
                       enabled=progress and du.is_main_process(), log_lines=False, leave=False)
    for step, (images, targets) in enumerate(bar, start=1):
        it = start_iter + step - 1
        if tc.warmup_iters > 0:
            f = min(1.0, 0.001 + 0.999 * it / tc.warmup_iters)
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * f
        images = [im.to(device, non_blocking=True) for im in images]
        targets = _to_device(targets, device)
        with autocast(device, tc.amp):
            loss_dict = model(images, targets)
        loss = sum(loss_dict.values())
        # one all-reduce per step: every rank sees the same values, so all stop together
        # on a non-finite loss instead of the others hanging in the gradient all-reduce
        keys = sorted(loss_dict)
        vals = torch.stack([loss_dict[k].detach().float() for k in keys])
        if du.is_dist():
            torch.distributed.all_reduce(vals)
            vals /= du.get_world_size()
        values = dict(zip(keys, vals.tolist()))  # one host sync per step
        _check_finite(values, epoch, step)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if tc.clip_grad_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if tc.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad_norm)
            optimizer.step()
        total = sum(values.values())
        for k, v in values.items():
            sums[k] += v
        sums["loss"] += total
        n += 1
        if step % max(1, tc.log_every) == 0 or step == len(loader):
            bar.set_postfix(loss=f"{total:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    bar.close()
    return {k: v / max(n, 1) for k, v in sums.items()}


def _load_resume_state(out_path: Path) -> tuple[dict[str, Any] | None, Path | None]:
    """The checkpoint to resume from: ``<out>.partial`` or ``<out>``, whichever has more epochs."""
    best: tuple[dict[str, Any] | None, Path | None] = (None, None)
    for path in (partial_path(out_path), out_path):
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("cannot resume from %s: %s", path, exc)
            continue
        if best[0] is None or state["epoch"] > best[0]["epoch"]:
            best = (state, path)
    return best


def train(
    config: TSPConfig,
    labeled: Dataset,
    pseudo: Dataset | None = None,
    init_checkpoint: str | Path | None = None,
    *,
    out_path: str | Path,
    class_names: list[str] | None = None,
    resume: bool = False,
    model_version: str | None = None,
    dist: du.DistInfo | None = None,
    on_epoch_end: EpochHook | None = None,
    progress: bool = True,
) -> Path:
    """Train a TSP model on ``labeled`` (+ ``pseudo``) and write the checkpoint ``out_path``.

    Args:
        config: the whole config (``model`` builds the network, ``train`` the schedule).
        labeled: items ``(FloatTensor[3, H, W], target)`` with ``target["pseudo"] = False``.
        pseudo: same items with ``target["pseudo"] = True`` (eq. 4 losses), or None.
        init_checkpoint: start from these weights only (fine-tune the previous cycle's model);
            optimizer and schedule start fresh.
        out_path: final checkpoint; ``<out_path>.partial`` holds per-epoch resume state.
        class_names: names of labels 1..K (default ``labeled.class_names``).
        resume: continue an interrupted run (see the module docstring).
        model_version: stored in the checkpoint; default ``tsp-<UTC time>-<weights hash>``.
        dist: from :func:`~tsp_model.engine.distributed.init_distributed` (default: that call).
        on_epoch_end: ``hook(epoch, model, mean_losses)`` on every rank after each epoch.

    Returns:
        ``out_path`` (written by rank 0; every rank returns after it exists).

    Raises:
        NonFiniteLossError: a loss term became NaN/inf (the message lists all terms).
    """
    from tsp_model.nn.model import build_model, resolve_norm

    # the checkpoint records the norm actually built ("auto" resolved): load_model rebuilds it
    # without the initial weights
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, norm=resolve_norm(config.model)))
    tc = config.train
    dist = dist or du.init_distributed(tc.device)
    device = dist.device
    out_path = Path(out_path)
    class_names = list(class_names if class_names is not None else labeled.class_names)

    seed_all(tc.seed)
    model = build_model(config.model, len(class_names) + 1)
    if init_checkpoint is not None:
        init = load_checkpoint(init_checkpoint)
        if list(init["class_names"]) != class_names:
            raise CheckpointError(
                f"{init_checkpoint}: classes {init['class_names']} differ from the data's {class_names}; "
                "start without --init or use matching data"
            )
        model.load_state_dict(init["model"])
    model.to(device)

    lr = tc.lr * dist.world_size / 8 if tc.scale_lr else tc.lr
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=lr_milestones(tc), gamma=tc.lr_gamma)
    scaler = make_grad_scaler(device, tc.amp)
    start_epoch, history = 0, []

    if resume:
        state, source = _load_resume_state(out_path)
        if state is not None and list(state["class_names"]) != class_names:
            raise CheckpointError(f"{source}: classes {state['class_names']} differ from {class_names}; cannot resume")
        if state is not None and state["epoch"] >= tc.epochs and source == out_path:
            log.info("%s already holds %d epochs; nothing to resume", out_path, state["epoch"])
            return out_path
        if state is not None:
            model.load_state_dict(state["model"])
            if state.get("optimizer"):
                optimizer.load_state_dict(state["optimizer"])
            if state.get("scheduler"):
                scheduler.load_state_dict(state["scheduler"])
                # the config may have grown (more epochs): its milestones win
                scheduler.milestones = collections.Counter(lr_milestones(tc))
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            start_epoch, history = int(state["epoch"]), list(state.get("history", []))
            if du.is_main_process():
                log.info("resuming %s from %s after epoch %d", out_path, source, start_epoch)

    model_without_ddp = model
    if dist.distributed:
        # no find_unused_parameters: the model gives every parameter a gradient on every batch
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    parts = [labeled] + ([pseudo] if pseudo is not None and len(pseudo) else [])
    dataset = ConcatDataset(parts) if len(parts) > 1 else labeled
    sampler = MixedBatchSampler(
        len(labeled),
        len(parts[1]) if len(parts) > 1 else 0,
        tc.batch_size,
        pseudo_per_batch=tc.pseudo_per_batch,
        num_replicas=dist.world_size,
        rank=dist.rank,
        seed=tc.seed,
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=tc.workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
    )
    if du.is_main_process():
        log.info(
            "training %d labeled + %d pseudo images on %d process(es), %d batches/epoch, lr %.3g",
            len(labeled), sampler.num_pseudo, dist.world_size, len(loader), lr,
        )

    def checkpoint_state(epoch: int, version: str) -> dict[str, Any]:
        return {
            "model": model_without_ddp.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "config": config.to_dict(),
            "class_names": class_names,
            "epoch": epoch,
            "model_version": version,
            "history": history,
            "data": {"labeled": len(labeled), "pseudo": sampler.num_pseudo, "world_size": dist.world_size},
        }

    last_save = time.monotonic()
    epochs = tsp_progress(total=tc.epochs, initial=start_epoch, desc="train", unit="epoch",
                          enabled=progress and du.is_main_process())
    for epoch in range(start_epoch, tc.epochs):
        sampler.set_epoch(epoch)
        # reseed per epoch (and rank): augmentation and worker seeds no longer depend on
        # how many epochs ran in this process, so a resumed run repeats the original
        seed_all(tc.seed + 1000 * (epoch + 1) + dist.rank)
        t0 = time.perf_counter()
        stats = train_one_epoch(
            model, loader, optimizer, scaler,
            config=config, device=device, epoch=epoch + 1,
            base_lrs=scheduler.get_last_lr(), start_iter=epoch * len(loader), progress=progress,
        )
        stats.update(epoch=epoch + 1, lr=optimizer.param_groups[0]["lr"], seconds=time.perf_counter() - t0)
        # warmup may have scaled the lr; MultiStepLR decays from the group's current value
        for group, base in zip(optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = base
        scheduler.step()
        history.append(stats)
        epochs.set_postfix(loss=f"{stats['loss']:.3f}")
        epochs.update(1)
        if du.is_main_process():
            terms = " ".join(f"{k}={v:.4f}" for k, v in stats.items() if k.startswith("loss"))
            log.info("epoch %d/%d loss=%.4f %s (%.1f s)", epoch + 1, tc.epochs, stats["loss"], terms, stats["seconds"])
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model_without_ddp, stats)
        if du.is_main_process() and epoch + 1 < tc.epochs and time.monotonic() - last_save >= tc.checkpoint_every_s:
            save_checkpoint(partial_path(out_path), checkpoint_state(epoch + 1, ""))
            last_save = time.monotonic()
        du.barrier()
    epochs.close()

    if du.is_main_process():
        version = model_version or make_model_version(model_without_ddp.state_dict())
        save_checkpoint(out_path, checkpoint_state(tc.epochs, version))
        partial_path(out_path).unlink(missing_ok=True)
    du.barrier()
    return out_path


@dataclasses.dataclass
class TrainedModel:
    checkpoint: Path
    pseudo_images: int  # pool images that held a pseudo label
    pseudo_instances: int


def train_with_pseudo_labels(
    config: TSPConfig,
    labeled: Dataset,
    pool_records: Sequence[ImageScore] | None = None,
    image_paths: Mapping[Any, str | Path] | None = None,
    init_checkpoint: str | Path | None = None,
    *,
    out_path: str | Path,
    class_names: list[str] | None = None,
    exclude: Iterable[Any] = (),
    dist: du.DistInfo | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: EpochHook | None = None,
) -> TrainedModel:
    """Algorithm 1, line 10-11: the pseudo labels the previous model's pool scores hold, then
    :func:`train` on the labeled images plus them (eq. 5). The one training step of a cycle,
    whether people labeled (``tsp-sync retrain``, also under torchrun) or an oracle did
    (:func:`tsp_model.al.cycle.run_cycle`).

    Args:
        pool_records: score records of pool images by the previous model (None, or
            ``active.pseudo_labels = false``: no pseudo labels). Each instance with ``c > sigma_c``
            and ``b > sigma_b`` and ``m > sigma_m`` becomes a pseudo label
            (:class:`~tsp_model.data.pseudo.PseudoLabelDataset`).
        image_paths: image_id -> image file of every pool record.
        exclude: image ids labeled since the records were scored (never pseudo-labeled).
        init_checkpoint: start from these weights (M_{k-1} when ``active.finetune``).
        other arguments: as for :func:`train`.
    """
    from tsp_model.data.pseudo import PseudoLabelDataset

    class_names = list(class_names if class_names is not None else labeled.class_names)
    pseudo = None
    if pool_records is not None and config.active.pseudo_labels:
        a, skip = config.active, set(exclude)
        pseudo = PseudoLabelDataset(
            [r for r in pool_records if r.image_id not in skip], image_paths or {}, class_names,
            sigma_c=a.sigma_c, sigma_b=a.sigma_b, sigma_m=a.sigma_m, train=True, hflip_prob=config.train.hflip_prob,
        )
    checkpoint = train(config, labeled, pseudo, init_checkpoint, out_path=out_path, class_names=class_names,
                       dist=dist, resume=resume, progress=progress, on_epoch_end=on_epoch_end)
    return TrainedModel(checkpoint, len(pseudo) if pseudo is not None else 0,
                        pseudo.num_instances if pseudo is not None else 0)


# --------------------------------------------------------------------------- torchrun entry
def train_from_files(
    *,
    config_path: str | Path | None,
    labeled: str | Path,
    images: str | Path | None,
    out: str | Path,
    pseudo: str | Path | None = None,
    pseudo_images: str | Path | None = None,
    init: str | Path | None = None,
    resume: bool = False,
    overrides: dict[str, Any] | None = None,
    on_epoch_end: EpochHook | None = None,
    progress: bool = True,
) -> TrainedModel:
    """Load config and data from files, then :func:`train_with_pseudo_labels` (the torchrun
    entry's body). ``pseudo``: the previous model's pool score file."""
    from tsp_model.core.config import load_config
    from tsp_model.core.records import read_jsonl
    from tsp_model.data.coco import CocoInstanceDataset

    config = load_config(config_path, overrides)
    tc = config.train
    dist = du.init_distributed(tc.device)
    class_names = None
    if init is not None:
        class_names = list(load_checkpoint(init)["class_names"])
    labeled_ds = CocoInstanceDataset(labeled, images, train=True, hflip_prob=tc.hflip_prob, class_names=class_names)
    records, paths = None, None
    if pseudo is not None:
        if pseudo_images is None:
            raise SystemExit("--pseudo needs --pseudo-images (the folder its file_name entries are relative to)")
        records = read_jsonl(pseudo)
        paths = {r.image_id: Path(pseudo_images) / r.file_name for r in records}
    return train_with_pseudo_labels(
        config, labeled_ds, records, paths, init, out_path=out, class_names=labeled_ds.class_names, resume=resume,
        dist=dist, on_epoch_end=on_epoch_end, progress=progress,
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tsp_model.engine.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="TOML config (default: the paper's defaults)")
    p.add_argument("--labeled", required=True, help="COCO json of the labeled images")
    p.add_argument("--images", help="folder of the labeled images (default: the json's folder)")
    p.add_argument("--pseudo", help="pool-score JSONL whose confident instances become pseudo labels")
    p.add_argument("--pseudo-images", help="folder the JSONL's file_name entries are relative to")
    p.add_argument("--out", required=True, help="checkpoint to write (.pt)")
    p.add_argument("--init", help="start from this checkpoint's weights")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run of --out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return du.run_entry_point(
        lambda: train_from_files(
            config_path=args.config, labeled=args.labeled, images=args.images, out=args.out,
            pseudo=args.pseudo, pseudo_images=args.pseudo_images, init=args.init, resume=args.resume,
        ).checkpoint,
        (NonFiniteLossError, CheckpointError, ValueError, FileNotFoundError),
    )


if __name__ == "__main__":
    sys.exit(main())
