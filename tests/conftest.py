"""Shared test setup: small thread pools so the suite behaves on a 2-core machine."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
