"""Inference and pool scoring: model outputs -> per-instance (c, b, m, s) and per-image S.

:func:`predict_images` turns a list of image tensors into :class:`~tsp_model.core.records.ImageScore`
records: every detection (c >= ``model.box_score_thresh``) with its mask as COCO RLE, and the
image score S over the scored ones (``active.score_threshold``). Masks are never pasted at full
size all at once (:func:`postprocess_to_rle`), so memory stays flat on large slices.
:func:`score_pool` runs it over the unlabeled pool in batches, sharded across torchrun ranks,
and writes one JSON line per image atomically (Algorithm 1, lines 7-8).

Strategy data in ``ImageScore.extras`` (asked for by the strategy's ``needs``, see
:func:`tsp_model.al.strategies.scoring_options`): ``embedding`` (pooled FPN features, base64
float16, :mod:`tsp_model.engine.embeddings`), ``mc_uncertainty`` and friends (T batched dropout
passes of the heads, :mod:`tsp_model.engine.mc_dropout`), ``predicted_loss`` (whenever the model has a
loss-prediction module).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tsp_model.core.config import ActiveConfig, TSPConfig
from tsp_model.core.progress import progress as tsp_progress
from tsp_model.core.records import ImageScore, InstanceScore, record_image_score
from tsp_model.core.scoring import class_entropy, instance_score
from tsp_model.engine import distributed as du
from tsp_model.engine.amp import autocast
from tsp_model.engine.evaluate import MASK_THRESHOLD, encode_mask, encode_masks
from tsp_model.nn.roi_heads import mask_threshold_of

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def paste_mask_rle(mask_probs: torch.Tensor, box: torch.Tensor, height: int, width: int,
                   canvas: np.ndarray | None = None, threshold: float = MASK_THRESHOLD) -> dict:
    """One instance's mask probabilities on its box -> COCO RLE of the binary mask at full size.

    torchvision's ``paste_masks_in_image`` (what ``GeneralizedRCNNTransform.postprocess`` calls)
    allocates a float H x W image per detection, all at once: on an 8000 x 8000 slice with 100
    detections that is 25 GB. Here the same torchvision paste runs on a canvas around the box
    only, is binarized at ``threshold`` (the model's ``mask_threshold``, which its mask-IoU head
    was trained with; torchvision's 0.5 by default) and written into ``canvas``, a reusable
    uint8 [H, W] buffer (zeroed again before returning), whose RLE is taken: memory O(H x W)
    bytes once per image, not per detection.

    Args:
        mask_probs (FloatTensor[1, M, M]): the mask head's probabilities of the detected class.
        box (FloatTensor[4]): the detection's box (x1, y1, x2, y2) in original-image pixels.
        height, width: the original image size.
        canvas: optional uint8 [height, width] Fortran-ordered zero buffer to reuse.
    """
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    if canvas is None:
        canvas = np.zeros((height, width), dtype=np.uint8, order="F")
    x1, y1, x2, y2 = (float(v) for v in box)
    # torchvision expands the box by (M + 2) / M and rounds outward: a margin of half the box
    # plus 2 px holds every pixel it can paste
    mx, my = 0.5 * (x2 - x1) + 2.0, 0.5 * (y2 - y1) + 2.0
    cx0, cy0 = max(int(np.floor(x1 - mx)), 0), max(int(np.floor(y1 - my)), 0)
    cx1, cy1 = min(int(np.ceil(x2 + mx)) + 1, width), min(int(np.ceil(y2 + my)) + 1, height)
    if cx1 <= cx0 or cy1 <= cy0:
        return encode_mask(canvas)
    shifted = box.detach().float().cpu().reshape(1, 4) - torch.tensor([cx0, cy0, cx0, cy0], dtype=torch.float32)
    local = paste_masks_in_image(mask_probs.detach().float().cpu().reshape(1, 1, *mask_probs.shape[-2:]),
                                 shifted, (cy1 - cy0, cx1 - cx0))[0, 0]
    canvas[cy0:cy1, cx0:cx1] = (local > threshold).numpy()
    rle = encode_mask(canvas)
    canvas[cy0:cy1, cx0:cx1] = 0
    return rle


def postprocess_to_rle(
    detections: list[dict[str, torch.Tensor]],
    image_sizes: Sequence[tuple[int, int]],
    original_sizes: Sequence[tuple[int, int]],
    mask_threshold: float = MASK_THRESHOLD,
) -> list[dict[str, Any]]:
    """``GeneralizedRCNNTransform.postprocess`` with masks as RLE instead of full-size pastes.

    Boxes are resized to the original image (torchvision's ``resize_boxes``); each detection's
    ``masks`` (FloatTensor[N, 1, M, M] probabilities on its box) becomes ``mask_rles``, a list
    of N COCO RLEs of the mask binarized at ``mask_threshold`` in original pixels
    (:func:`paste_mask_rle`).
    """
    from torchvision.models.detection.transform import resize_boxes

    out = []
    for det, size, (height, width) in zip(detections, image_sizes, original_sizes):
        det = dict(det)
        boxes = resize_boxes(det["boxes"], size, (height, width))
        det["boxes"] = boxes
        masks = det.pop("masks", None)
        if masks is not None:
            canvas = np.zeros((height, width), dtype=np.uint8, order="F") if len(boxes) else None
            det["mask_rles"] = [paste_mask_rle(masks[k], boxes[k], height, width, canvas, mask_threshold)
                                for k in range(len(boxes))]
        out.append(det)
    return out


def output_to_record(
    output: dict[str, Any],
    *,
    image_id: int | str,
    file_name: str,
    width: int,
    height: int,
    class_names: Sequence[str],
    active: ActiveConfig | None = None,
    model_version: str = "",
    mask_threshold: float = MASK_THRESHOLD,
) -> ImageScore:
    """One detection dict (eval mode) -> :class:`ImageScore` with every detection kept.

    ``s`` is eq. 2 of (c, b, m) = (scores, box_iou, mask_iou); ``S`` is eq. 3 over the scored
    instances (``c >= active.score_threshold``), else the empty-image rule
    (:func:`tsp_model.core.scoring.scored_image_score`); ``entropy`` is the Shannon entropy of
    ``class_probs``. Masks: ``mask_rles`` (from :func:`postprocess_to_rle`) or, for a model that
    returns torchvision's full-size ``masks``, those binarized at ``mask_threshold``.
    """
    active = active or ActiveConfig()
    # float64: scores are stored and compared as Python floats
    c = output["scores"].detach().double().cpu()
    b = output["box_iou"].detach().double().cpu()
    m = output["mask_iou"].detach().double().cpu()
    s = instance_score(c, b, m)
    S = record_image_score(c.numpy(), b.numpy(), m.numpy(), active)
    entropy = class_entropy(output["class_probs"].detach().double().cpu())
    boxes = output["boxes"].detach().float().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    if "mask_rles" in output:
        rles = list(output["mask_rles"])
    else:
        rles = encode_masks((output["masks"].detach().float().cpu()[:, 0] > mask_threshold).numpy())
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
    return ImageScore(
        image_id=image_id,
        file_name=file_name,
        width=int(width),
        height=int(height),
        S=S,
        instances=instances,
        model_version=model_version,
        extras=extras,
    )


def forward_with_extras(
    model: torch.nn.Module, images: list[torch.Tensor], *, embeddings: bool = False, mc_passes: int = 0
) -> tuple[list[dict[str, Any]], list[dict]]:
    """A torchvision detection model's eval forward, plus per-image extras from the same pass.

    The detections are those of ``GeneralizedRCNN.forward`` (one :func:`detector_pass`, dropout
    off), except that masks come back as ``mask_rles`` binarized at the model's
    ``mask_threshold`` (:func:`postprocess_to_rle`), never as full-size probability images. With
    ``embeddings`` each extras dict gets ``embedding`` (base64 float16), with ``mc_passes`` = T >= 2
    the MC-dropout statistics of the detections (T batched head passes). A model that is not a
    ``GeneralizedRCNN`` is simply called.
    """
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    from tsp_model.engine.embeddings import encode_embedding, pooled_embeddings
    from tsp_model.engine.mc_dropout import mc_head_passes, mc_image_stats
    from tsp_model.nn.detector_pass import detector_pass

    extras: list[dict] = [{} for _ in images]
    if not isinstance(model, GeneralizedRCNN):
        if embeddings or mc_passes:
            raise ValueError(f"{type(model).__name__}: embeddings and MC dropout need a torchvision detection model")
        return model(images), extras
    run = detector_pass(model, images)
    features, image_list, detections = run.features, run.image_list, run.detections
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
    return postprocess_to_rle(detections, image_list.image_sizes, run.original_sizes, mask_threshold_of(model)), extras


@torch.inference_mode()
def predict_images(
    model: torch.nn.Module,
    images: Sequence[torch.Tensor],
    class_names: Sequence[str],
    active: ActiveConfig | None = None,
    model_version: str = "",
    *,
    image_ids: Sequence[int | str] | None = None,
    file_names: Sequence[str] | None = None,
    amp: bool = True,
    embeddings: bool = False,
    mc_passes: int = 0,
) -> list[ImageScore]:
    """Run ``model`` (switched to eval mode) on ``images`` (FloatTensor[3, H, W] in 0..1).

    Every detection is kept in the records, its mask as COCO RLE at the image's size; ``S``
    follows ``active`` (scoring threshold and empty-image rule; default ``ActiveConfig()``).
    ``embeddings`` / ``mc_passes`` (T, 0 = off) add strategy data to each record's ``extras``
    (see :func:`forward_with_extras`).

    Returns:
        One :class:`ImageScore` per image (ids default to the list index, file names to ``""``).
    """
    model.eval()
    device = next(model.parameters()).device
    with autocast(device, amp):
        outputs, extras = forward_with_extras(
            model, [im.to(device) for im in images], embeddings=embeddings, mc_passes=mc_passes
        )
    records = []
    for i, (im, out) in enumerate(zip(images, outputs)):
        rec = output_to_record(
            out,
            image_id=image_ids[i] if image_ids is not None else i,
            file_name=file_names[i] if file_names is not None else "",
            width=int(im.shape[-1]),
            height=int(im.shape[-2]),
            class_names=class_names,
            active=active,
            model_version=model_version,
            mask_threshold=mask_threshold_of(model),
        )
        rec.extras.update(extras[i])
        records.append(rec)
    return records


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
    embeddings: bool = False,
    mc_passes: int = 0,
) -> Path:
    """Score every pool image and write ``out_path`` (JSON lines, one :class:`ImageScore` each,
    in pool order).

    ``embeddings`` / ``mc_passes``: strategy data for ``extras`` (see :func:`predict_images`;
    what a strategy needs: :func:`tsp_model.al.strategies.scoring_options`).

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
    header = {
        "model_version": model_version, "pool": pool_digest(pool.items), "size": len(pool),
        "world_size": dist.world_size, "rank": dist.rank, "embeddings": bool(embeddings),
        "mc_passes": int(mc_passes), "store_masks": bool(sc.store_masks),
        # S_i follows these; a change needs no new inference (records.rescore), but a shard
        # scored under other ones is not resumed
        "score_threshold": float(config.active.score_threshold), "empty_image_rule": config.active.empty_image_rule,
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
        bar = tsp_progress(
            total=len(indices), initial=len(indices) - len(todo), unit="img",
            desc=f"score pool [{dist.rank}]" if dist.distributed else "score pool",
            enabled=progress and dist.is_main,
        )
        for batch in loader:
            if batch:
                positions, items = zip(*batch)
                images, ids, names = zip(*items)
                recs = predict_images(
                    model, list(images), class_names, config.active, model_version,
                    image_ids=list(ids), file_names=list(names), amp=sc.amp,
                    embeddings=embeddings, mc_passes=mc_passes,
                )
                if not sc.store_masks:
                    for rec in recs:
                        for inst in rec.instances:
                            inst.mask = None
                shard.append(list(zip(positions, recs)))
            bar.update(len(batch))
        bar.close()
    du.barrier()
    if dist.is_main:
        merge_shards(out_path, dist.world_size)
    du.barrier()
    return out_path
