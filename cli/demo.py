"""``tsp-sync demo``: the whole loop on a laptop, from nothing to a reordered Label Studio queue.

What it does, each step reusing what a previous run left (so a second run is quick and adds a
second active-learning cycle on top of the first):

1. generates head-CT-like slices with their ground truth (``tsp_model.data.phantom``);
2. starts a local Label Studio on SQLite on 127.0.0.1 and gets a Personal Access Token;
3. creates the project (BrushLabels for the three hemorrhage types) and imports the slices as
   local-files tasks;
4. annotates a first random batch from the generator's ground truth, standing in for the
   radiologist's first cycle (Algorithm 1, line 4);
5. starts ``tsp-backend`` and connects it to the project as its ML backend;
6. runs ``tsp-sync cycle`` (pull, retrain, score, reorder) with a small CPU configuration;
7. prints the Label Studio URL and login, the reordered queue with S_i, the task
   ``/api/projects/{id}/next`` serves, and where the overlays and plots are;

then keeps Label Studio and the backend running until Ctrl-C, which stops everything it started.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets as _secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tsp_cli.client import SyncError, call, get_json

DEMO_TITLE = "TSP demo: intracranial hemorrhage"
DEMO_USER = "demo@tsp.local"
CLASS_COLORS = {"epidural": "#e6194b", "subdural": "#3cb44b", "intraparenchymal": "#4363d8"}


def label_config(class_names: list[str]) -> str:
    """The demo project's labeling interface: one BrushLabels tag on the slice."""
    labels = "\n".join(
        f'    <Label value="{n}" background="{CLASS_COLORS.get(n, "#f58231")}"/>' for n in class_names
    )
    return (
        "<View>\n"
        '  <Image name="image" value="$image" zoom="true"/>\n'
        '  <BrushLabels name="lesion" toName="image">\n'
        f"{labels}\n"
        "  </BrushLabels>\n"
        "</View>"
    )


@dataclass
class DemoOptions:
    """Sizes of the demo; the defaults finish one cycle in minutes on a 2-core CPU."""

    root: Path
    count: int = 60  # generated slices (tasks)
    size: int = 256  # pixels
    first_batch: int = 20  # slices annotated from the ground truth before the first cycle
    seed: int = 0
    port: int = 8080  # Label Studio
    backend_port: int = 9090
    epochs: int = 150  # ~2 min on 2 CPU cores: enough for the tiny model to find lesions (mask AP50 ~0.4)
    holdout_fraction: float = 0.25
    serve: bool = True  # keep Label Studio and the backend running until Ctrl-C
    progress: bool = True
    train: dict[str, Any] = field(default_factory=dict)  # extra [train] keys


def demo_training_config(opts: DemoOptions) -> dict[str, Any]:
    """The CPU schedule: tiny_fpn from scratch. The paper's lr 0.001 for 50 epochs suits a
    pretrained R50 on a GPU; from scratch on a laptop a higher lr with warmup learns in minutes."""
    train = {
        "epochs": opts.epochs,
        "lr": 0.01,
        "warmup_iters": 20,
        "lr_steps": [0.75],
        "lr_steps_unit": "fraction",
        "batch_size": 4,
        "workers": 0,
        "amp": False,
        "seed": opts.seed,
    }
    train.update(opts.train)
    return {
        "model": {"backbone": "tiny_fpn", "min_size": opts.size, "max_size": opts.size},
        "train": train,
        "active": {"budget": opts.first_batch, "strategy": "tsp"},
        "score": {"batch_size": 4, "workers": 0, "amp": False},
    }


def write_settings(opts: DemoOptions, project_id: int) -> Path:
    """``<root>/tsp.toml``: the demo project as ``tsp-sync`` reads it."""
    from tsp_cli.workdir import atomic_write_text

    cfg = demo_training_config(opts)
    lines = [
        "# Written by tsp-sync demo. Run tsp-sync from this folder, e.g.: tsp-sync status --project demo",
        "[projects.demo]",
        f"label_studio_project = {project_id}",
        'workdir = "work"',
        'model_dir = "work/models"',
        f"holdout_fraction = {opts.holdout_fraction}",
    ]
    for section, values in cfg.items():
        lines.append(f"[projects.demo.{section}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items())
    path = opts.root / "tsp.toml"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _login(root: Path) -> tuple[str, str]:
    """The demo account: a random password made once and kept in ``<root>/label-studio/login.json``."""
    path = root / "label-studio" / "login.json"
    if path.is_file():
        data = json.loads(path.read_text())
        return data["username"], data["password"]
    path.parent.mkdir(parents=True, exist_ok=True)
    password = _secrets.token_urlsafe(12)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"username": DEMO_USER, "password": password}, fh)
    return DEMO_USER, password


def find_or_create_project(client: Any, class_names: list[str]) -> int:
    for p in call(client, "listing projects", lambda: list(client.projects.list(title=DEMO_TITLE))):
        if p.title == DEMO_TITLE:
            return int(p.id)
    p = call(client, "creating the demo project", client.projects.create,
             title=DEMO_TITLE, label_config=label_config(class_names),
             description="Generated head-CT slices; the queue is ordered by TSP's S_i (lowest first).")
    return int(p.id)


def import_slices(client: Any, project_id: int, ann_path: Path, files_root: Path, progress: bool) -> dict[str, int]:
    """One local-files task per generated slice; slices already imported are skipped."""
    from tsp_cli.importer import ensure_local_storage, image_url, import_images
    from tsp_model.data.slices import SliceRecord

    data = json.loads(ann_path.read_text())
    image_dir = ann_path.parent / "images"
    ensure_local_storage(client, project_id, image_dir)
    records = [
        SliceRecord(image_path=ann_path.parent / im["file_name"], key=f"phantom:{im['file_name']}",
                    provenance={"source_name": Path(im["file_name"]).name}, kind="image")
        for im in data["images"]
    ]
    return import_images(client, project_id, records, lambda r: image_url(r.image_path, files_root),
                         progress=progress)


def ground_truth_result(ann: dict[str, Any], image: dict[str, Any], coco: Any) -> dict[str, Any]:
    """One generator instance -> a Label Studio BrushLabels region (what a radiologist would draw)."""
    from label_studio_sdk.converter.brush import mask2rle

    mask = coco.annToMask(ann).astype(np.uint8) * 255
    name = coco.cats[ann["category_id"]]["name"]
    return {
        "type": "brushlabels", "from_name": "lesion", "to_name": "image",
        "original_width": image["width"], "original_height": image["height"], "image_rotation": 0,
        "value": {"format": "rle", "rle": [int(v) for v in mask2rle(mask)], "brushlabels": [name]},
    }


def annotate_first_batch(client: Any, project_id: int, ann_path: Path, batch: int, seed: int,
                         progress: bool) -> int:
    """Annotate ``batch`` random tasks from the ground truth unless the project has annotations.

    An image without lesions gets an empty annotation: "no lesion" is a real label.
    """
    from pycocotools.coco import COCO
    from tqdm import tqdm

    tasks = call(client, f"listing the tasks of project {project_id}",
                 lambda: list(client.tasks.list(project=project_id, fields="all")))
    if any((getattr(t, "total_annotations", 0) or 0) > 0 for t in tasks):
        return 0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its indexing steps
        coco = COCO(str(ann_path))
    by_name = {Path(im["file_name"]).name: im for im in coco.dataset["images"]}
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(tasks), size=min(batch, len(tasks)), replace=False)
    for i in tqdm(sorted(int(c) for c in chosen), desc="annotate first batch", unit="task",
                  disable=not progress, file=sys.stderr):
        task = tasks[i]
        image = by_name[task.data["source_name"]]
        result = [ground_truth_result(a, image, coco) for a in coco.imgToAnns.get(image["id"], [])]
        call(client, f"annotating task {task.id}", client.annotations.create, id=task.id, result=result,
             was_cancelled=False, ground_truth=False, lead_time=0.0)
    return len(chosen)


class Backend:
    """``tsp-backend`` as a child process (its own process group, stopped on exit)."""

    def __init__(self, port: int, model_dir: Path, url: str, token: str, log_path: Path) -> None:
        self.port, self.model_dir, self.url, self.token, self.log_path = port, model_dir, url, token, log_path
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> Backend:
        import requests

        if not _port_free(self.port):
            raise SyncError(f"port {self.port} is in use; stop what runs there or pass --backend-port")
        self.model_dir.mkdir(parents=True, exist_ok=True)
        exe = Path(sys.executable).with_name("tsp-backend")
        env = dict(os.environ, LABEL_STUDIO_URL=self.url, LABEL_STUDIO_API_KEY=self.token)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            [str(exe), "--port", str(self.port), "--model-dir", str(self.model_dir)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SyncError(f"tsp-backend exited with status {self.proc.returncode}; see {self.log_path}")
            try:
                if requests.get(f"{self.address}/health", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise SyncError(f"tsp-backend did not answer /health within {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None


def connect_backend(client: Any, project_id: int, address: str) -> bool:
    """Connect the backend as the project's ML backend unless it already is; True if created."""
    for ml in call(client, "listing ML backends", client.ml.list, project=project_id):
        if getattr(ml, "url", "").rstrip("/") == address.rstrip("/"):
            return False
    call(client, f"connecting the ML backend {address}", client.ml.create,
         project=project_id, url=address, title="TSP (tsp-backend)", is_interactive=False)
    return True


def _stop_on_sigterm() -> Any:
    """Treat SIGTERM like Ctrl-C, so ``kill`` of a background demo stops what it started."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, _raise)


def _alive(server: Any) -> bool:
    proc = getattr(server, "proc", None) or getattr(server, "_proc", None)
    return proc is None or proc.poll() is None


def format_queue(top: list[dict[str, Any]], names: dict[int, str], n: int = 10) -> str:
    rows = [f"  {i + 1:2d}. task {e['task']:>5}  S_i = {e['S']:.4f}  {names.get(int(e['task']), '')}"
            for i, e in enumerate(top[:n])]
    return "\n".join(rows) if rows else "  (empty: every task is labeled)"


def run_demo(opts: DemoOptions, *, echo: Callable[[str], None] = print, label_studio: Any = None) -> dict[str, Any]:
    """Run the demo; returns what it printed as data (URL, project id, queue, /next task).

    ``label_studio``: an already running ``LocalLabelStudio`` (tests); otherwise one is started
    under ``<root>/label-studio`` and stopped on return (or after Ctrl-C when ``serve``).
    """
    from tsp_cli.client import connect, resolve_project
    from tsp_cli.cycle import cycle, format_table
    from tsp_cli.local_server import LocalLabelStudio
    from tsp_cli.settings import Secrets, load_settings, select_project
    from tsp_cli.workdir import Workdir
    from tsp_model.data.phantom import CLASS_NAMES, generate_phantoms

    root = opts.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    steps = 7
    started: list[Any] = []
    previous_term = _stop_on_sigterm()
    try:
        echo(f"[1/{steps}] head-CT slices: {opts.count} at {opts.size} px (seed {opts.seed})")
        data_dir = root / "data"
        ann_path = data_dir / "annotations.json"
        if not (ann_path.is_file() and len(json.loads(ann_path.read_text())["images"]) == opts.count):
            generate_phantoms(data_dir, count=opts.count, size=opts.size, seed=opts.seed, progress=opts.progress)
        else:
            echo("      reusing " + str(ann_path))

        echo(f"[2/{steps}] Label Studio on 127.0.0.1 (SQLite in {root / 'label-studio'})")
        username, password = _login(root)
        ls = label_studio
        if ls is None:
            if not _port_free(opts.port):
                raise SyncError(f"port {opts.port} is in use; stop what runs there or pass --port")
            ls = LocalLabelStudio(root / "label-studio", port=opts.port, username=username, password=password,
                                  files_root=data_dir)
            started.append(ls)
            t0 = time.monotonic()
            ls.start()
            echo(f"      up at {ls.url} in {time.monotonic() - t0:.0f} s")
        else:
            username, password = ls.username, ls.password
        files_root = Path(ls.files_root)
        secrets = Secrets(url=ls.url, api_key=ls.token)
        client = connect(secrets)

        echo(f"[3/{steps}] project {DEMO_TITLE!r}")
        if label_studio is not None and not str(ann_path.resolve()).startswith(str(files_root.resolve())):
            raise SyncError(f"{ann_path}: must lie below Label Studio's local-files root {files_root}")
        project_id = find_or_create_project(client, list(CLASS_NAMES))
        imported = import_slices(client, project_id, ann_path, files_root, opts.progress)
        echo(f"      project {project_id}: {imported['imported']} tasks imported, {imported['skipped']} already there")

        echo(f"[4/{steps}] first batch: {opts.first_batch} random slices annotated from the ground truth")
        n = annotate_first_batch(client, project_id, ann_path, opts.first_batch, opts.seed, opts.progress)
        echo(f"      {n} annotated" if n else "      the project already has annotations: kept")

        settings_path = write_settings(opts, project_id)
        settings = select_project(load_settings(settings_path), "demo")
        echo(f"[5/{steps}] tsp-backend on 127.0.0.1:{opts.backend_port}, model dir {settings.model_dir}")
        backend = Backend(opts.backend_port, settings.model_dir, ls.url, ls.token, root / "backend.log")
        started.append(backend)
        backend.start()
        created = connect_backend(client, project_id, backend.address)
        echo("      connected as the project's ML backend" if created else "      already connected")

        echo(f"[6/{steps}] tsp-sync cycle (pull, retrain, score, reorder); settings {settings_path}")
        project = resolve_project(client, project_id)
        summary = cycle(client, project, settings, Workdir(settings.workdir), secrets, progress=opts.progress,
                        echo=lambda m: echo("      " + m))

        echo(f"[7/{steps}] overlays and plots")
        from tsp_cli.review import write_overlays, write_report

        index, _, _, _ = write_overlays(Path(settings.workdir), top=5)
        plots = write_report(Path(settings.workdir))

        tasks = call(client, "listing tasks", lambda: list(client.tasks.list(project=project_id, fields="all")))
        names = {int(t.id): str(t.data.get("source_name", "")) for t in tasks}
        nxt = get_json(client, f"api/projects/{project_id}/next", "asking for the next task", none_on=(404,))
        next_task = int(nxt["id"]) if isinstance(nxt, dict) and "id" in nxt else None
        top = summary.get("top", [])

        echo("")
        echo(format_table(summary))
        echo("")
        echo(f"Label Studio   {ls.url}/projects/{project_id}/data   login {username} / {password}")
        echo(f"ML backend     {backend.address} (serves {settings.model_dir})")
        echo("Queue, lowest S_i first (what radiologists are served next):")
        echo(format_queue(top, names))
        if next_task is not None:
            mark = "the lowest S_i" if top and int(top[0]["task"]) == next_task else "see the 'TSP priority' view"
            echo(f"GET /api/projects/{project_id}/next -> task {next_task} ({mark})")
        echo(f"Overlays       {index}")
        echo("Plots          " + ", ".join(str(p) for p in plots))
        echo(f"Settings       {settings_path}  (cd {root} && tsp-sync status --project demo)")
        result = {
            "url": ls.url, "project_id": project_id, "queue": top, "next_task": next_task,
            "overlays": str(index), "plots": [str(p) for p in plots], "summary": summary,
        }
        if opts.serve:
            echo("\nLabel Studio and the backend keep running; press Ctrl-C to stop them.")
            try:
                while all(_alive(p) for p in started):
                    time.sleep(1)
                echo("a server stopped; shutting down")
            except KeyboardInterrupt:
                echo("\nstopping")
        return result
    finally:
        for proc in reversed(started):
            proc.stop()
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
