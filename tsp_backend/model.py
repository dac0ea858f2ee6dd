"""The Label Studio ML backend's model: ``TSPBackend``, shaped like label-studio-ml 2.x's class.

``TSPBackend(project_id, label_config)`` with ``predict(tasks, context=None, **kwargs)`` and
``fit(event, data)``, as in label-studio-ml 2.x's ``LabelStudioMLBase``, without depending on it
(see :mod:`tsp_backend.api` for why). Thin by design (as in label-studio-ml-backend's examples):
it loads the newest checkpoint from the model directory, runs inference, and shapes regions with
:mod:`tsp_labelstudio.regions`. Training happens elsewhere (``tsp-sync``); ``fit`` only records that
labels changed.

Environment:
    TSP_MODEL_DIR      directory of ``*.pt`` checkpoints (newest by mtime is served; reloaded
                       when a newer one appears).
    TSP_EVENTS_FILE    where annotation events are appended (default
                       ``<TSP_MODEL_DIR>/label_events.jsonl``).
    TSP_DEVICE         ``cpu``, ``cuda``, ``cuda:1``... (default: cuda when available).
    LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, TSP_ALLOWED_URL_PREFIXES, TSP_ALLOWED_DIRS: see
                       :mod:`tsp_labelstudio.images`; the limits: :mod:`tsp_backend.limits`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tsp_labelstudio.images import ImageFetcher, ImageFetchError
from tsp_backend.limits import ENV_PREDICT_TIMEOUT, Limits
from tsp_labelstudio.regions import TagTarget, parse_label_config, prediction_for_task
from tsp_model.data.image_io import to_tensor
from tsp_model.engine.checkpoint import CheckpointError, LoadedModel, latest_checkpoint, load_model
from tsp_model.engine.predict import predict_images
from tsp_model.core.records import ImageScore

logger = logging.getLogger(__name__)

__all__ = ["CheckpointWatcher", "TSPBackend", "infer_record", "NO_CHECKPOINT_VERSION"]

NO_CHECKPOINT_VERSION = "no-checkpoint"


def _default_device() -> str:
    env = os.environ.get("TSP_DEVICE")
    if env:
        return env
    return "cuda" if torch.cuda.is_available() else "cpu"


class CheckpointWatcher:
    """Serves the newest checkpoint of a directory; reloads when a newer file appears.

    The directory is looked at no more often than every ``poll_s`` seconds. A checkpoint that
    fails to load is logged once and the previous model keeps serving.
    """

    _instances: dict[tuple[str, str], "CheckpointWatcher"] = {}
    _instances_lock = threading.Lock()

    def __init__(self, model_dir: str | Path, device: str | None = None, poll_s: float = 1.0) -> None:
        self.model_dir = Path(model_dir)
        self.device = device or _default_device()
        self.poll_s = poll_s
        self._loaded: LoadedModel | None = None
        self._key: tuple[str, int] | None = None
        self._bad: tuple[str, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.infer_lock = threading.Lock()  # one forward pass at a time per process

    @classmethod
    def for_dir(cls, model_dir: str | Path, device: str | None = None) -> "CheckpointWatcher":
        """The process-wide watcher of ``model_dir`` (one model in memory per worker)."""
        key = (str(Path(model_dir).resolve()), device or _default_device())
        with cls._instances_lock:
            if key not in cls._instances:
                cls._instances[key] = cls(model_dir, device)
            return cls._instances[key]

    def current(self) -> LoadedModel | None:
        """The newest loadable checkpoint's model, or None when there is none yet."""
        with self._lock:
            now = time.monotonic()
            if self._loaded is not None and now - self._checked < self.poll_s:
                return self._loaded
            self._checked = now
            path = latest_checkpoint(self.model_dir)
            if path is None:
                if self._loaded is None:
                    logger.warning("no checkpoint (*.pt) in %s yet: predictions are empty until one is written", self.model_dir)
                return self._loaded
            try:
                key = (str(path), path.stat().st_mtime_ns)
            except OSError:  # replaced between listing and stat: look again next time
                return self._loaded
            if key == self._key or key == self._bad:
                return self._loaded
            try:
                loaded = load_model(path, device=self.device)
            except (CheckpointError, OSError) as exc:
                self._bad = key
                logger.error("cannot load checkpoint %s (%s); still serving %s", path, exc,
                             self._loaded.model_version if self._loaded else "nothing")
                return self._loaded
            self._loaded, self._key = loaded, key
            logger.info("serving checkpoint %s (model_version %s, classes %s)", path.name,
                        loaded.model_version, ", ".join(loaded.class_names))
            return self._loaded


def infer_record(loaded: LoadedModel, image: np.ndarray) -> ImageScore:
    """Run the model on one ``float32 [H, W, 3]`` image: its score record (every detection with
    c, b, m, s and an RLE mask; S under the checkpoint's ``[active]`` thresholds).

    Goes through ``tsp_model.engine.predict.predict_images``, the same code that scores the pool
    for ``tsp-sync``, so served and pushed predictions hold the same numbers and masks.
    """
    return predict_images(
        loaded.model, [to_tensor(image)], loaded.class_names, loaded.config.active,
        model_version=loaded.model_version,
    )[0]


class TSPBackend:
    """Predicts lesion outlines with scores for BrushLabels or PolygonLabels projects.

    One instance per request (the request's own label config); the checkpoint, the image
    fetcher and the limits are shared by the process.

    Args:
        project_id: Label Studio's project id (for log lines).
        label_config: the project's XML label config.
        model_dir: checkpoints folder (default ``TSP_MODEL_DIR``).
        fetcher: the process's :class:`ImageFetcher` (default: one from the environment).
        limits: per-request limits (default :meth:`Limits.from_env`); the ``/predict`` time limit
            counts from construction.

    Raises:
        LabelConfigError: the label config cannot be served (``/setup`` and ``/predict`` answer
            it as a 400 naming the tag or labels).
    """

    TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "PROJECT_UPDATED")

    def __init__(
        self,
        project_id: str | None = None,
        label_config: str | None = None,
        *,
        model_dir: str | Path | None = None,
        fetcher: ImageFetcher | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.started = time.monotonic()
        self.project_id = project_id
        model_dir = model_dir or os.environ.get("TSP_MODEL_DIR")
        if not model_dir:
            raise RuntimeError("TSP_MODEL_DIR is not set: start the backend with tsp-backend --model-dir DIR")
        self.model_dir = Path(model_dir)
        self.limits = limits or Limits.from_env()
        self.watcher = CheckpointWatcher.for_dir(self.model_dir)
        self.loaded = self.watcher.current()
        class_names = self.loaded.class_names if self.loaded else None
        self.label_config = label_config or ""
        self.target: TagTarget = parse_label_config(self.label_config, class_names)
        self.fetcher = fetcher or ImageFetcher(max_pixels=self.limits.max_image_pixels)

    @property
    def model_version(self) -> str:
        return self.loaded.model_version if self.loaded else NO_CHECKPOINT_VERSION

    def predict(self, tasks: list[dict], context: dict | None = None, **kwargs: Any) -> list[dict]:
        """One prediction per task (same order); a task that fails gets a dict without "result".

        Label Studio skips such an entry (and logs it) and stores the others. With no checkpoint
        the answer is an empty list (Label Studio stores nothing). Tasks not started within the
        time limit (``limits.predict_timeout_s`` from construction) get such an entry too.
        ``context`` (interactive pre-annotation) is not used.
        """
        if self.loaded is None:
            logger.warning("predict: no checkpoint in %s yet; answering no predictions for %d task(s)",
                           self.model_dir, len(tasks))
            return []
        version = self.loaded.model_version
        show_threshold = self.loaded.config.active.show_threshold
        deadline = self.started + self.limits.predict_timeout_s
        predictions = []
        late = 0
        for task in tasks:
            task_id = task.get("id") if isinstance(task, dict) else None
            try:
                if not isinstance(task, dict):
                    raise ImageFetchError("task is not a JSON object")
                if time.monotonic() >= deadline:
                    raise _OutOfTime(self.limits.predict_timeout_s)
                url = (task.get("data") or {}).get(self.target.value_key)
                if url is None:
                    raise ImageFetchError(f"task data has no {self.target.value_key!r} key (the Image tag's value)")
                image = self.fetcher.read(url, deadline=deadline)
                if not self.watcher.infer_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    raise _OutOfTime(self.limits.predict_timeout_s)
                try:
                    record = infer_record(self.loaded, image)
                finally:
                    self.watcher.infer_lock.release()
                predictions.append(
                    prediction_for_task(record, self.target, model_version=version, show_threshold=show_threshold)
                )
            except _OutOfTime as exc:  # logged once below, not once per task
                late += 1
                predictions.append({"model_version": version, "error": f"task {task_id}: {exc}"})
            except ImageFetchError as exc:
                logger.error("task %s: no prediction: %s", task_id, exc)
                predictions.append({"model_version": version, "error": f"task {task_id}: {exc}"})
            except Exception as exc:  # one bad task must not sink the batch
                logger.exception("task %s: no prediction: %s", task_id, exc)
                predictions.append({"model_version": version, "error": f"task {task_id}: {type(exc).__name__}: {exc}"})
        if late:
            logger.warning("predict for project %s: the time limit (%g s, %s) ran out; %d of %d task(s) not predicted",
                           self.project_id, self.limits.predict_timeout_s, ENV_PREDICT_TIMEOUT, late, len(tasks))
        return predictions

    def fit(self, event: str, data: dict, **kwargs: Any) -> dict:
        """Record an annotation event for ``tsp-sync`` and return at once (never trains here)."""
        return record_event(self.model_dir, event, data)


class _OutOfTime(Exception):
    def __init__(self, limit_s: float) -> None:
        super().__init__(
            f"not predicted: the request's time limit ({limit_s:g} s, {ENV_PREDICT_TIMEOUT}) ran out before "
            "this task; Label Studio asks again for tasks without a prediction"
        )


def events_file(model_dir: str | Path) -> Path:
    return Path(os.environ.get("TSP_EVENTS_FILE") or Path(model_dir) / "label_events.jsonl")


def record_event(model_dir: str | Path, event: str, data: dict) -> dict:
    """Append one JSON line ``{time, event, project, task, annotation}`` to the events file.

    Small single ``write`` calls on an ``O_APPEND`` file do not interleave between workers.
    """
    def _id(key: str) -> Any:
        v = data.get(key)
        return v.get("id") if isinstance(v, dict) else v

    entry = {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "event": event,
        "project": _id("project"),
        "task": _id("task"),
        "annotation": _id("annotation"),
    }
    path = events_file(model_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)
    logger.info("recorded %s (project %s, task %s) in %s", event, entry["project"], entry["task"], path)
    return {"recorded": entry}
