"""Helpers for backend and Label Studio tests: tiny checkpoints, label configs, test images.

Fixtures that use them live in tests/conftest.py (the "H4 backend / Label Studio fixtures" block).
"""

from __future__ import annotations

import io
import os
import socket
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASS_NAMES = ["epidural", "subdural", "intraparenchymal"]

BRUSH_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="lesion" toName="image">
    <Label value="epidural"/><Label value="subdural"/><Label value="intraparenchymal"/>
  </BrushLabels>
</View>"""

POLYGON_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <PolygonLabels name="outline" toName="image">
    <Label value="epidural"/><Label value="subdural"/><Label value="intraparenchymal"/>
  </PolygonLabels>
</View>"""

CHOICES_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="finding" toName="image"><Choice value="bleed"/><Choice value="none"/></Choices>
</View>"""

UNKNOWN_LABELS_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="lesion" toName="image"><Label value="epidural"/><Label value="tumor"/></BrushLabels>
</View>"""


def make_tiny_checkpoint(
    model_dir: str | Path,
    name: str = "tiny.pt",
    version: str = "tsp-test-v1",
    class_names: list[str] = CLASS_NAMES,
    seed: int = 0,
    size: int = 64,
    detections: int = 4,
    mtime: float | None = None,
) -> Path:
    """Write an untrained tiny_fpn checkpoint (arbitrary but deterministic detections)."""
    from tsp_model.core.config import ActiveConfig, ModelConfig, TSPConfig
    from tsp_model.engine.checkpoint import save_checkpoint
    from tsp_model.nn.model import build_model

    torch.manual_seed(seed)
    # an untrained model's c is about 1 / (classes + 1): score and show every detection, so tests
    # always have regions and scored instances to check
    cfg = TSPConfig(model=ModelConfig(backbone="tiny_fpn", min_size=size, max_size=size,
                                      box_score_thresh=0.0, box_detections_per_img=detections),
                    active=ActiveConfig(score_threshold=0.0, show_threshold=0.0))
    model = build_model(cfg.model, num_classes=len(class_names) + 1)
    with torch.no_grad():
        # untrained mask logits hover around 0 and binarize to empty masks; a positive bias
        # makes every predicted mask fill most of its box, so tests always have regions to check
        model.roi_heads.mask_predictor.mask_fcn_logits.bias.fill_(3.0)
    path = save_checkpoint(Path(model_dir) / name, {
        "model": model.state_dict(), "optimizer": None, "scheduler": None, "scaler": None,
        "config": cfg.to_dict(), "class_names": list(class_names), "epoch": 0,
        "model_version": version,
    })
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def png_bytes(size: int = 64, seed: int = 0, gray: bool = True) -> bytes:
    """A head-CT-ish 8-bit PNG: a bright ring with a blob, deterministic."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    img = np.where(np.abs(r - size * 0.4) < size * 0.05, 230, 60).astype(np.float64)
    cy, cx = rng.integers(size // 4, 3 * size // 4, size=2)
    img[np.hypot(yy - cy, xx - cx) < size * 0.1] = 180
    img += rng.normal(0, 5, img.shape)
    arr = np.clip(img, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr if gray else np.stack([arr] * 3, -1)).save(buf, format="PNG")
    return buf.getvalue()


def write_png(path: str | Path, size: int = 64, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(size, seed))
    return path


def wait_for(pred, timeout: float = 30.0, interval: float = 0.3):
    """Poll ``pred()`` until truthy; return its value or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


class BackendProcess:
    """A real ``tsp-backend`` process on a free port (its own process group), logging to a file.

    Args:
        model_dir: the checkpoints folder it serves.
        env: extra environment (``LABEL_STUDIO_URL``, ``BASIC_AUTH_USER``...), over ``os.environ``.
        log_path: where stdout and stderr go.
        auth: the basic-auth pair for the health check (None: no auth).
        args: extra ``tsp-backend`` arguments.
    """

    def __init__(self, model_dir: Path, env: dict[str, str], log_path: Path, auth: tuple[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        from tsp_cli.local_server import free_port

        self.model_dir, self.log_path, self.auth = Path(model_dir), Path(log_path), auth
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "TSP_DEVICE": "cpu", "OMP_NUM_THREADS": "1", **env}
        self.args = args
        self.proc = None

    def start(self, timeout: float = 120) -> "BackendProcess":
        import subprocess
        import sys

        import requests

        exe = Path(sys.executable).parent / "tsp-backend"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([str(exe), "--port", str(self.port), "--model-dir", str(self.model_dir),
                                      *self.args], env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tsp-backend exited: {self.log_path.read_text()[-2000:]}")
            try:
                return requests.get(self.url + "/health", auth=self.auth, timeout=2).status_code == 200
            except requests.RequestException:
                return False

        try:
            wait_for(up, timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def worker_pids(self) -> list[int]:
        """gunicorn's worker processes (the children of the master)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [int(p) for p in children]

    def stop(self) -> None:
        from tsp_cli.local_server import stop_process_group

        stop_process_group(self.proc)
        if getattr(self, "_log", None) is not None:
            self._log.close()


def add_user(label_studio, email: str, password: str) -> str:
    """A new user of the server's organization (signed up through its invite link, as a person
    would) and their Personal Access Token."""
    return label_studio.add_user(email, password, label_studio.data_dir / f"pat-{email}")


def tcp_sockets(port: int) -> list[tuple[str, str]]:
    """(local address hex, state hex) of the IPv4/IPv6 TCP sockets whose local port is ``port``
    (Linux /proc/net/tcp{,6}: state 0A = LISTEN, 06 = TIME_WAIT)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).is_file():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if int(hex_port, 16) == port:
                found.append((address, state))
    return found


def leave_time_wait(port: int) -> None:
    """Open and close one connection on 127.0.0.1:``port`` with the server side closing first, as
    a stopped web server does: that side's socket (local port ``port``) stays in TIME-WAIT."""
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", port))
        srv.listen()
        with socket.create_connection(("127.0.0.1", port)) as client:
            conn, _ = srv.accept()
            conn.close()
            client.recv(1)  # sees the server's FIN, then closes its end
