"""Inference and pool scoring: model outputs -> per-instance (c, b, m, s) and per-image S.

:func:`predict_images` turns a list of image tensors into :class:`~tsp_model.records.ImageScore`
records (plus binary masks for callers that need pixels, such as the Label Studio backend).
:func:`score_pool` runs it over the unlabeled pool in batches, sharded across torchrun ranks,
and writes one JSON line per image atomically (Algorithm 1, lines 7-8).

Strategy data in ``ImageScore.extras`` (asked for by the strategy's ``needs``, see
:func:`tsp_model.strategies.scoring_options`): ``embedding`` (pooled FPN features, base64
float16, :mod:`tsp_model.embeddings`), ``mc_uncertainty`` and friends (T batched dropout
passes of the heads, :mod:`tsp_model.mc_dropout`), ``predicted_loss`` (whenever the model has a
loss-prediction module).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from tsp_model.config import TSPConfig
from tsp_model.engine import distributed as du
from tsp_model.engine.amp import autocast
from tsp_model.engine.evaluate import MASK_THRESHOLD, encode_masks
from tsp_model.records import ImageScore, InstanceScore
from tsp_model.scoring import class_entropy, image_score, instance_score

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def output_to_record(
    output: dict[str, torch.Tensor],
    *,
    image_id: int | str,
    file_name: str,
    width: int,
    height: int,
    class_names: Sequence[str],
    empty_image_score: float = 1.0,
    model_version: str = "",
    store_masks: bool = True,
) -> tuple[ImageScore, np.ndarray]:
    """One model output dict (eval mode) -> (ImageScore, bool masks [N, H, W]).

    ``s`` is eq. 2 of (c, b, m) = (scores, box_iou, mask_iou); ``S`` is eq. 3 of the image's
    ``s`` (``empty_image_score`` without detections); ``entropy`` is the Shannon entropy of
    ``class_probs``; masks are the probabilities binarized at 0.5.
    """
    # float64: scores are stored and compared as Python floats
    c = output["scores"].detach().double().cpu()
    b = output["box_iou"].detach().double().cpu()
    m = output["mask_iou"].detach().double().cpu()
    s = instance_score(c, b, m)
    S = float(image_score(s, empty_score=empty_image_score))
    entropy = class_entropy(output["class_probs"].detach().double().cpu())
    boxes = output["boxes"].detach().float().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    masks = (output["masks"].detach().float().cpu()[:, 0] > MASK_THRESHOLD).numpy()
    rles = encode_masks(masks) if store_masks else [None] * len(labels)
    instances = []
    for i, label in enumerate(labels):
        instances.append(
            InstanceScore(
                label=int(label),
                category=class_names[int(label) - 1],
                box=[float(v) for v in boxes[i]],
                c=float(c[i]),
                b=float(b[i]),
                m=float(m[i]),
                s=float(s[i]),
                entropy=float(entropy[i]),
                mask=rles[i],
            )
        )
    extras = {}
    if "predicted_loss" in output:
        extras["predicted_loss"] = float(output["predicted_loss"].detach().double().cpu())
    record = ImageScore(
        image_id=image_id,
        file_name=file_name,
        width=int(width),
        height=int(height),
        S=S,
        instances=instances,
        model_version=model_version,
        extras=extras,
    )
    return record, masks


def forward_with_extras(
    model: torch.nn.Module, images: list[torch.Tensor], *, embeddings: bool = False, mc_passes: int = 0
) -> tuple[list[dict[str, torch.Tensor]], list[dict]]:
    """``model(images)`` in eval mode, plus per-image extras from the same backbone pass.

    The detections are those of ``GeneralizedRCNN.forward`` (same calls, dropout off); with
    ``embeddings`` each extras dict gets ``embedding`` (base64 float16), with ``mc_passes`` = T
    >= 2 the MC-dropout statistics of the detections (T batched head passes).
    """
    from collections import OrderedDict

    from tsp_model.embeddings import encode_embedding, pooled_embeddings
    from tsp_model.mc_dropout import mc_head_passes, mc_image_stats

    original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    image_list, _ = model.transform(images)
    features = model.backbone(image_list.tensors)
    if isinstance(features, torch.Tensor):
        features = OrderedDict([("0", features)])
    proposals, _ = model.rpn(image_list, features)
    detections, _ = model.roi_heads(features, proposals, image_list.image_sizes)
    extras: list[dict] = [{} for _ in images]
    module = getattr(model, "loss_prediction_module", None)
    if module is not None:
        for det, value in zip(detections, module(features)):
            det["predicted_loss"] = value.float()
    if embeddings:
        padded = tuple(image_list.tensors.shape[-2:])
        for ex, vec in zip(extras, pooled_embeddings(features, image_list.image_sizes, padded).cpu()):
            ex["embedding"] = encode_embedding(vec)
    if mc_passes:
        if mc_passes < 2:
            raise ValueError(f"active.mc_passes: MC dropout needs >= 2 passes, got {mc_passes}")
        probs, masks = mc_head_passes(
            model.roi_heads, features, [d["boxes"] for d in detections], [d["labels"] for d in detections],
            image_list.image_sizes, mc_passes,
        )
        start = 0
        for ex, det in zip(extras, detections):
            n = int(det["boxes"].shape[0])
            ex.update(mc_image_stats(probs[:, start : start + n], masks[:, start : start + n], mc_passes))
            start += n
    detections = model.transform.postprocess(detections, image_list.image_sizes, original_sizes)
    return detections, extras


@torch.inference_mode()
def predict_images(
    model: torch.nn.Module,
    images: Sequence[torch.Tensor],
    class_names: Sequence[str],
    empty_image_score: float = 1.0,
    model_version: str = "",
    *,
    image_ids: Sequence[int | str] | None = None,
    file_names: Sequence[str] | None = None,
    amp: bool = True,
    store_masks: bool = True,
    embeddings: bool = False,
    mc_passes: int = 0,
) -> tuple[list[ImageScore], list[np.ndarray]]:
    """Run ``model`` (switched to eval mode) on ``images`` (FloatTensor[3, H, W] in 0..1).

    ``embeddings`` / ``mc_passes`` (T, 0 = off) add strategy data to each record's ``extras``
    (see :func:`forward_with_extras`); off, the model is simply called.

    Returns:
        ``(records, masks)``: one :class:`ImageScore` per image (ids default to the list index,
        file names to ``""``) and, aligned with each record's instances, bool masks [N, H, W].
    """
    model.eval()
    device = next(model.parameters()).device
    extras: list[dict] = [{} for _ in images]
    with autocast(device, amp):
        if embeddings or mc_passes:
            outputs, extras = forward_with_extras(
                model, [im.to(device) for im in images], embeddings=embeddings, mc_passes=mc_passes
            )
        else:
            outputs = model([im.to(device) for im in images])
    records, all_masks = [], []
    for i, (im, out) in enumerate(zip(images, outputs)):
        rec, masks = output_to_record(
            out,
            image_id=image_ids[i] if image_ids is not None else i,
            file_name=file_names[i] if file_names is not None else "",
            width=int(im.shape[-1]),
            height=int(im.shape[-2]),
            class_names=class_names,
            empty_image_score=empty_image_score,
            model_version=model_version,
            store_masks=store_masks,
        )
        rec.extras.update(extras[i])
        records.append(rec)
        all_masks.append(masks)
    return records, all_masks


class PoolDataset(Dataset):
    """Unlabeled images: items ``(FloatTensor[3, H, W], image_id, file_name)``.

    Args:
        items: ``(image_id, path)`` or ``(image_id, path, file_name)`` tuples; ``file_name``
            (what the score record stores) defaults to the path's name.

    An unreadable image yields ``None`` with a warning naming its path; :func:`pool_collate`
    drops it, so one bad file costs one record, not the run.
    """

    def __init__(self, items: Sequence[tuple]) -> None:
        self.items = []
        for item in items:
            image_id, path = item[0], Path(item[1])
            file_name = str(item[2]) if len(item) > 2 else path.name
            self.items.append((image_id, path, file_name))

    @classmethod
    def from_folder(cls, folder: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> PoolDataset:
        """Every image file under ``folder`` (sorted); image_id = file_name = its relative path."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: image folder not found")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        return cls([(str(p.relative_to(folder)), p, str(p.relative_to(folder))) for p in files])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int | str, str] | None:
        from tsp_model.data.image_io import ImageError, read_image, to_tensor

        image_id, path, file_name = self.items[idx]
        try:
            return to_tensor(read_image(path)), image_id, file_name
        except ImageError as exc:
            log.warning("skipping pool image %s: %s", path, exc)
            return None


def pool_collate(batch: list) -> list[tuple[torch.Tensor, int | str, str]]:
    return [item for item in batch if item is not None]


class _Indexed(Dataset):
    """``pool[i]`` for the pool indices ``indices``, tagged with ``i`` (None stays None)."""

    def __init__(self, pool: PoolDataset, indices: Sequence[int]) -> None:
        self.pool, self.indices = pool, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, tuple] | None:
        item = self.pool[self.indices[k]]
        return None if item is None else (self.indices[k], item)


def score_pool(
    model: torch.nn.Module,
    pool: PoolDataset | Sequence[tuple],
    *,
    class_names: Sequence[str],
    config: TSPConfig,
    out_path: str | Path,
    model_version: str,
    dist: du.DistInfo | None = None,
    progress: bool = True,
    embeddings: bool | None = None,
    mc_passes: int | None = None,
) -> Path:
    """Score every pool image and write ``out_path`` (JSON lines, one :class:`ImageScore` each,
    in pool order).

    ``embeddings`` / ``mc_passes``: strategy data for ``extras`` (see :func:`predict_images`);
    None (default) = what ``config.active.strategy`` needs (``active.mc_passes`` passes).

    ``pool`` is a :class:`PoolDataset` or a list of ``(image_id, path[, file_name])``. Each rank
    (one without torchrun) scores every world-th image and appends each batch's records to its
    shard as they come (:mod:`tsp_model.engine.score_shards`: memory holds one batch; a rerun
    after an interruption continues the shard); rank 0 then merges the shards into
    ``out_path`` (atomic) and removes them. Unreadable images are skipped with a warning.
    Returns ``out_path``.
    """
    from tsp_model.engine.score_shards import ScoreShard, merge_shards, pool_digest

    dist = dist or du.DistInfo()
    out_path = Path(out_path)
    if not isinstance(pool, PoolDataset):
        pool = PoolDataset(pool)
    sc = config.score
    if embeddings is None or mc_passes is None:
        from tsp_model.strategies import scoring_options

        opts = scoring_options(config.active.strategy, config.active.mc_passes)
        embeddings = bool(opts["embeddings"]) if embeddings is None else embeddings
        mc_passes = int(opts["mc_passes"]) if mc_passes is None else mc_passes
    header = {
        "model_version": model_version, "pool": pool_digest(pool.items), "size": len(pool),
        "world_size": dist.world_size, "rank": dist.rank, "embeddings": bool(embeddings),
        "mc_passes": int(mc_passes), "store_masks": bool(sc.store_masks),
        "empty_image_score": float(config.active.empty_image_score), "class_names": list(class_names),
    }
    indices = range(dist.rank, len(pool), dist.world_size)
    model.eval()
    with ScoreShard(out_path, dist.rank, header) as shard:
        todo = [i for i in indices if i not in shard.done]
        loader = DataLoader(
            _Indexed(pool, todo), batch_size=sc.batch_size, shuffle=False, num_workers=sc.workers,
            collate_fn=pool_collate,
        )
        bar = tqdm(
            total=len(indices), initial=len(indices) - len(todo), unit="img", file=sys.stderr,
            desc=f"score pool [{dist.rank}]" if dist.distributed else "score pool",
            disable=not (progress and dist.is_main),
        )
        for batch in loader:
            if batch:
                positions, items = zip(*batch)
                images, ids, names = zip(*items)
                recs, _ = predict_images(
                    model, list(images), class_names, config.active.empty_image_score, model_version,
                    image_ids=list(ids), file_names=list(names), amp=sc.amp, store_masks=sc.store_masks,
                    embeddings=embeddings, mc_passes=mc_passes,
                )
                shard.append(list(zip(positions, recs)))
            bar.update(len(batch))
        bar.close()
    du.barrier()
    if dist.is_main:
        merge_shards(out_path, dist.world_size)
    du.barrier()
    return out_path
