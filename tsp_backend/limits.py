"""What one request may cost the backend: body size, image pixels, time.

Defaults, and why:

- ``TSP_MAX_REQUEST_MB`` = 64: a ``/predict`` body holds the tasks with their annotations and
  older predictions (Label Studio's "Retrieve Predictions" sends every selected task in one
  request); 64 MiB is a few hundred brush-annotated tasks. Larger bodies get a 413.
- ``TSP_MAX_IMAGE_PIXELS`` = 25,000,000: every radiograph format we know fits (a 4096 x 5120
  mammogram is 21 MP; CT and MR slices are 0.26 MP), while a decompression bomb (a tiny PNG that
  decodes to 8000 x 8000 or more) is refused from its header before decoding.
- ``TSP_PREDICT_TIMEOUT`` = 90 s: Label Studio gives up on ``/predict`` after its
  ``ML_TIMEOUT_PREDICT`` (100 s by default) and then stores nothing; stopping at 90 s answers
  the tasks done so far, and the rest get a per-task error (Label Studio asks again later).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "DEFAULT_MAX_REQUEST_MB", "DEFAULT_PREDICT_TIMEOUT_S", "Limits"]

DEFAULT_MAX_REQUEST_MB = 64.0
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000
DEFAULT_PREDICT_TIMEOUT_S = 90.0

ENV_MAX_REQUEST_MB = "TSP_MAX_REQUEST_MB"
ENV_MAX_IMAGE_PIXELS = "TSP_MAX_IMAGE_PIXELS"
ENV_PREDICT_TIMEOUT = "TSP_PREDICT_TIMEOUT"


@dataclass(frozen=True)
class Limits:
    """Per-request limits of the backend (see the module docstring for the defaults)."""

    max_request_mb: float = DEFAULT_MAX_REQUEST_MB
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    predict_timeout_s: float = DEFAULT_PREDICT_TIMEOUT_S

    def __post_init__(self) -> None:
        for name, value in (("max_request_mb", self.max_request_mb), ("max_image_pixels", self.max_image_pixels),
                            ("predict_timeout_s", self.predict_timeout_s)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 1024 * 1024)

    @classmethod
    def from_env(cls) -> "Limits":
        """From ``TSP_MAX_REQUEST_MB``, ``TSP_MAX_IMAGE_PIXELS``, ``TSP_PREDICT_TIMEOUT``; unset: defaults."""

        def get(name: str, default: float, kind: type) -> float:
            raw = os.environ.get(name, "").strip()
            if not raw:
                return default
            try:
                return kind(float(raw)) if kind is int else kind(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number") from None

        return cls(
            max_request_mb=get(ENV_MAX_REQUEST_MB, DEFAULT_MAX_REQUEST_MB, float),
            max_image_pixels=int(get(ENV_MAX_IMAGE_PIXELS, DEFAULT_MAX_IMAGE_PIXELS, int)),
            predict_timeout_s=get(ENV_PREDICT_TIMEOUT, DEFAULT_PREDICT_TIMEOUT_S, float),
        )
