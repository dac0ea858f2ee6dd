"""``tsp-sync demo``: the whole loop on a laptop, from nothing to a reordered Label Studio queue.

What it does, each step reusing what a previous run left, so that every run is one more
active-learning cycle:

1. generates head-CT-like slices with their ground truth (``tsp_model.synth.phantom``);
2. starts a local Label Studio on SQLite, listening on 127.0.0.1, and gets a Personal Access Token;
3. creates the project (BrushLabels for the three hemorrhage types) and imports the slices as
   local-files tasks;
4. starts ``tsp-backend`` and connects it to the project as its ML backend;
5. labels, standing in for the radiologist with the generator's ground truth: on the first run a
   random first batch (Algorithm 1, line 4); on later runs the ``b`` tasks the label stream
   serves (``GET /api/projects/{id}/next`` as the printed login, then submit, ``b`` times), as
   a radiologist pressing *Label All Tasks* would; nothing when someone labeled since the last
   cycle (their labels are this cycle's);
6. runs ``tsp-sync cycle`` (pull, retrain, score, reorder) with a small CPU configuration, and
   checks ``/next`` as a second user that labels nothing, releasing the lock the check takes, so
   the printed login's stream is not pinned;
7. writes overlays and plots, prints the Label Studio URL and login, the reordered queue with
   S_i, the check, and commands that work when pasted into a fresh shell;

then keeps Label Studio and the backend running until Ctrl-C, which stops everything it started.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets as _secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

from tsp_cli.client import SyncError, call, get_json
from tsp_cli.context import CliContext
from tsp_cli.errors import handle_errors
from tsp_cli.local_server import port_free, write_secret

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
    batch: int = 10  # b: slices labeled from the queue before each later cycle
    seed: int = 0
    host: str = "127.0.0.1"  # where Label Studio listens
    port: int = 8080  # Label Studio
    backend_port: int = 9090
    epochs: int = 150  # enough for the tiny model to find lesions; minutes on an idle 2-core CPU (docs/quickstart.md)
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
        "active": {"budget": opts.batch, "strategy": "tsp"},
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


def _login(root: Path) -> tuple[str, str]:
    """The demo account: a random password made once and kept in ``<root>/label-studio/login.json``."""
    path = root / "label-studio" / "login.json"
    if path.is_file():
        data = json.loads(path.read_text())
        return data["username"], data["password"]
    path.parent.mkdir(parents=True, exist_ok=True)
    password = _secrets.token_urlsafe(12)
    write_secret(path, json.dumps({"username": DEMO_USER, "password": password}))
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
    from tsp_cli.commands.importer import ensure_local_storage, image_url, import_images
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


class GroundTruth:
    """The generator's masks per slice, turned into the regions a radiologist would submit."""

    def __init__(self, ann_path: Path) -> None:
        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its indexing steps
            self.coco = COCO(str(ann_path))
        self.by_name = {Path(im["file_name"]).name: im for im in self.coco.dataset["images"]}

    def result(self, task_data: dict[str, Any]) -> list[dict[str, Any]]:
        """The task's annotation result ([] = no lesion, a real label) from ``data.source_name``."""
        image = self.by_name[task_data["source_name"]]
        return [ground_truth_result(a, image, self.coco) for a in self.coco.imgToAnns.get(image["id"], [])]

    def submit(self, client: Any, task_id: int, task_data: dict[str, Any]) -> int:
        """Submit the ground truth of one task; returns its number of lesions."""
        result = self.result(task_data)
        call(client, f"annotating task {task_id}", client.annotations.create, id=task_id, result=result,
             was_cancelled=False, ground_truth=False, lead_time=0.0)
        return len(result)


def _tasks(client: Any, project_id: int) -> list[Any]:
    return call(client, f"listing the tasks of project {project_id}",
                lambda: list(client.tasks.list(project=project_id, fields="all")))


def count_labeled(tasks: list[Any]) -> int:
    """Tasks with a submitted annotation (skips do not count), as ``tsp-sync pull`` counts them."""
    return sum(1 for t in tasks if (getattr(t, "total_annotations", 0) or 0) > 0)


def annotate_first_batch(client: Any, project_id: int, truth: GroundTruth, batch: int, seed: int,
                         progress: bool) -> int:
    """Annotate ``batch`` random tasks from the ground truth unless the project has annotations.

    An image without lesions gets an empty annotation: "no lesion" is a real label.
    """
    from tsp_model.core.progress import progress as tsp_progress

    tasks = _tasks(client, project_id)
    if count_labeled(tasks):
        return 0
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(tasks), size=min(batch, len(tasks)), replace=False)
    for i in tsp_progress(sorted(int(c) for c in chosen), desc="annotate first batch", unit="task",
                          enabled=progress):
        truth.submit(client, int(tasks[i].id), tasks[i].data)
    return len(chosen)


def label_from_queue(client: Any, project_id: int, truth: GroundTruth, batch: int,
                     scores: dict[int, float], echo: Callable[[str], None]) -> list[int]:
    """Label the ``batch`` tasks the label stream serves, one at a time, as a radiologist would:
    ``GET /api/projects/{id}/next`` as ``client``'s user, then submit the ground truth (which also
    releases the lock ``/next`` took). ``scores``: task -> S_i, for the printout only.
    Returns the labeled task ids in the order they were served."""
    labeled: list[int] = []
    for _ in range(batch):
        task = get_json(client, f"api/projects/{project_id}/next", "asking for the next task", none_on=(404,))
        if not isinstance(task, dict) or task.get("id") is None:
            echo("      the label stream has nothing left to serve")
            break
        task_id = int(task["id"])
        lesions = truth.submit(client, task_id, task["data"])
        s_text = f"S_i {scores[task_id]:.4f}" if task_id in scores else "S_i ?"
        echo(f"      served task {task_id:>5} ({s_text}) -> submitted {lesions} lesion(s)")
        labeled.append(task_id)
    return labeled


def _queue_scores(workdir: Any) -> dict[int, float]:
    """S_i per task of the last reorder's queue, from the work directory (empty if none)."""
    top = (workdir.read_state().get("last_score") or {}).get("scores")
    if not top:
        return {}
    from tsp_cli.priority import scores_by_task

    return scores_by_task(top)


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

        if not port_free(self.port):
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
        from tsp_cli.local_server import stop_process_group

        stop_process_group(self.proc)
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


def tsp_sync_command() -> str:
    """``tsp-sync`` as a fresh shell can run it: the absolute path of the executable beside this
    Python (the virtualenv's), else the one on PATH, else ``python -m tsp_cli.main``."""
    exe = Path(sys.executable).absolute().with_name("tsp-sync")
    if exe.is_file():
        return shlex.quote(str(exe))
    found = shutil.which("tsp-sync")
    if found:
        return shlex.quote(str(Path(found).absolute()))
    return f"{shlex.quote(sys.executable)} -m tsp_cli.main"


def demo_commands(root: Path, url: str, pat_path: Path, verify_pat_path: Path) -> dict[str, str]:
    """Shell lines printed for the reader; each works pasted into a new terminal (the check while
    Label Studio runs). Tokens are read from their files into the environment, never into argv."""
    tsp, where = tsp_sync_command(), f"cd {shlex.quote(str(root))} &&"
    return {
        "status": f"{where} {tsp} status --project demo",
        "check": (f'{where} LABEL_STUDIO_URL={url} LABEL_STUDIO_API_KEY="$(cat {shlex.quote(str(pat_path))})" '
                  f'LABEL_STUDIO_VERIFY_API_KEY="$(cat {shlex.quote(str(verify_pat_path))})" '
                  f"{tsp} reorder --project demo --verify"),
    }


def format_check(verify: dict[str, Any] | None, user: str, login: str) -> str:
    """One line on what ``/next`` served the queue-check user."""
    if not verify:
        return "not checked"
    task = verify.get("next_task")
    if task is None:
        return f"asked as {user}: nothing served (every task is labeled)"
    s_text = f"S_i {verify['next_S']:.4f}" if verify.get("next_S") is not None else "S_i ?"
    if verify.get("honored"):
        released = f"; its lock released, so {login} is served it next" if verify.get("released") else ""
        return f"asked as {user}: task {task} ({s_text}), the lowest S_i{released}"
    if verify.get("honored") is None:
        return f"asked as {user}: task {task}, locked by an earlier call: inconclusive"
    return (f"asked as {user}: task {task} ({s_text}), not the lowest (task {verify.get('lowest_task')}): "
            "label from the 'TSP priority' view with 'Label Tasks As Displayed'")


SAMPLING_NOTE = (
    "Project Settings -> General shows none of its three task samplings selected, and 'Uncertainty\n"
    "               sampling' with an Enterprise mark: the open-source page does not show the setting. The API\n"
    "               set Uncertainty sampling on the current model, the label stream honours it (checked above),\n"
    "               and saving that page leaves it as it is. Check it again any time with:"
)


def run_demo(opts: DemoOptions, *, echo: Callable[[str], None] = print, label_studio: Any = None) -> dict[str, Any]:
    """Run the demo; returns what it printed as data (URL, login, project id, queue, the ``/next``
    check, labeled tasks, commands, seconds per step).

    ``label_studio``: an already running ``LocalLabelStudio`` (tests); otherwise one is started
    under ``<root>/label-studio`` and stopped on return (or after Ctrl-C when ``serve``).
    """
    from tsp_cli.client import connect, resolve_project
    from tsp_cli.commands.cycle import cycle, format_table
    from tsp_cli.commands.review import read_cycles, write_overlays, write_report
    from tsp_cli.local_server import VERIFY_USER, LocalLabelStudio
    from tsp_cli.settings import Secrets, load_settings, select_project
    from tsp_cli.workdir import Workdir
    from tsp_model.synth.phantom import CLASS_NAMES, generate_phantoms

    root = opts.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    steps = 7
    started: list[Any] = []
    seconds: dict[str, float] = {}
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.monotonic()
        seconds[name] = round(now - clock, 1)
        clock = now

    previous_term = _stop_on_sigterm()
    try:
        echo(f"[1/{steps}] head-CT slices: {opts.count} at {opts.size} px (seed {opts.seed})")
        data_dir = root / "data"
        ann_path = data_dir / "annotations.json"
        if not (ann_path.is_file() and len(json.loads(ann_path.read_text())["images"]) == opts.count):
            generate_phantoms(data_dir, count=opts.count, size=opts.size, seed=opts.seed, progress=opts.progress)
        else:
            echo("      reusing " + str(ann_path))
        lap("slices")

        echo(f"[2/{steps}] Label Studio on {opts.host} (SQLite in {root / 'label-studio'})")
        username, password = _login(root)
        ls = label_studio
        if ls is None:
            if not port_free(opts.port, opts.host):
                raise SyncError(f"port {opts.port} is in use; stop what runs there or pass --port")
            ls = LocalLabelStudio(root / "label-studio", port=opts.port, username=username, password=password,
                                  files_root=data_dir, host=opts.host)
            started.append(ls)
            ls.start()
            echo(f"      up at {ls.url} in {time.monotonic() - clock:.0f} s")
        else:
            username, password = ls.username, ls.password
        files_root = Path(ls.files_root)
        secrets = Secrets(url=ls.url, api_key=ls.token)
        client = connect(secrets)
        verifier = connect(Secrets(url=ls.url, api_key=ls.queue_check_token()))
        lap("label_studio")

        echo(f"[3/{steps}] project {DEMO_TITLE!r}")
        if label_studio is not None and not str(ann_path.resolve()).startswith(str(files_root.resolve())):
            raise SyncError(f"{ann_path}: must lie below Label Studio's local-files root {files_root}")
        project_id = find_or_create_project(client, list(CLASS_NAMES))
        imported = import_slices(client, project_id, ann_path, files_root, opts.progress)
        echo(f"      project {project_id}: {imported['imported']} tasks imported, {imported['skipped']} already there")
        settings_path = write_settings(opts, project_id)
        settings = select_project(load_settings(settings_path), "demo")
        workdir = Workdir(settings.workdir)
        lap("project")

        echo(f"[4/{steps}] tsp-backend on 127.0.0.1:{opts.backend_port}, model dir {settings.model_dir}")
        backend = Backend(opts.backend_port, settings.model_dir, ls.url, ls.token, root / "backend.log")
        started.append(backend)
        backend.start()
        created = connect_backend(client, project_id, backend.address)
        echo("      connected as the project's ML backend" if created else "      already connected")
        lap("backend")

        truth = GroundTruth(ann_path)
        labeled_before = count_labeled(_tasks(client, project_id))
        cycles = read_cycles(workdir.root)
        project = resolve_project(client, project_id)
        served: list[int] = []
        if labeled_before == 0:
            echo(f"[5/{steps}] first batch: {opts.first_batch} random slices annotated from the ground truth")
            n = annotate_first_batch(client, project_id, truth, opts.first_batch, opts.seed, opts.progress)
            echo(f"      {n} annotated")
        elif cycles and int(cycles[-1]["labeled"]) == labeled_before and \
                project.model_version == cycles[-1].get("model_version"):
            echo(f"[5/{steps}] cycle {len(cycles) + 1}: the radiologist labels the {opts.batch} slices the queue "
                 f"serves (/next as {username}; ground truth stands in for them)")
            served = label_from_queue(client, project_id, truth, opts.batch, _queue_scores(workdir), echo)
        else:
            since = "since the last cycle" if cycles else "and no cycle finished yet"
            echo(f"[5/{steps}] {labeled_before} slices labeled {since}: kept, none added")
        labeled_now = count_labeled(_tasks(client, project_id))
        echo(f"      labeled slices: {labeled_before} -> {labeled_now}")
        lap("labels")

        echo(f"[6/{steps}] tsp-sync cycle (pull, retrain, score, reorder); settings {settings_path}")
        summary = cycle(client, project, settings, workdir, secrets, verify=True, verify_client=verifier,
                        progress=opts.progress, echo=lambda m: echo("      " + m))
        lap("cycle")

        echo(f"[7/{steps}] overlays and plots")
        index, _, _, _ = write_overlays(Path(settings.workdir), top=6)
        plots = write_report(Path(settings.workdir), title=DEMO_TITLE)
        lap("plots")

        names = {int(t.id): str(t.data.get("source_name", "")) for t in _tasks(client, project_id)}
        check = summary.get("verify")
        top = summary.get("top", [])
        commands = demo_commands(root, ls.url, ls.pat_path, ls.verify_pat_path)

        echo("")
        echo(format_table(summary))
        echo("")
        echo(f"Label Studio   {ls.url}/projects/{project_id}/data   login {username} / {password}")
        echo(f"ML backend     {backend.address} (serves {settings.model_dir})")
        echo("Queue, lowest S_i first (what radiologists are served next):")
        echo(format_queue(top, names))
        echo(f"/next check    {format_check(check, VERIFY_USER, username)}")
        echo(f"Sampling       {SAMPLING_NOTE}")
        echo(f"               {commands['check']}")
        echo(f"Overlays       {index}")
        echo("Plots          " + ", ".join(str(p) for p in plots))
        echo(f"Status         {commands['status']}")
        echo("Time (s)       " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + "; cycle: "
             + ", ".join(f"{k} {v:.0f}" for k, v in summary.get("seconds", {}).items()))
        result = {
            "url": ls.url, "login": (username, password), "project_id": project_id, "queue": top,
            "next_task": check.get("next_task") if check else None, "verify": check,
            "labeled": (labeled_before, labeled_now), "served": served, "cycles": len(cycles) + 1,
            "overlays": str(index), "plots": [str(p) for p in plots], "summary": summary,
            "commands": commands, "seconds": seconds,
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


@click.command("demo", help="The quickstart: a local Label Studio with generated head-CT slices, the backend "
                  "connected, one active-learning cycle per run, the reordered queue. Ctrl-C stops it all.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("demo"), show_default=True,
              help="Folder for the slices, Label Studio's database, the work directory and tsp.toml.")
@click.option("--count", type=click.IntRange(min=4), default=60, show_default=True, help="Generated slices.")
@click.option("--size", type=click.IntRange(min=64), default=256, show_default=True, help="Slice size in pixels.")
@click.option("--first-batch", type=click.IntRange(min=2), default=20, show_default=True,
              help="Slices annotated from the ground truth before the first cycle (Algorithm 1, line 4).")
@click.option("--batch", "-b", type=click.IntRange(min=1), default=10, show_default=True,
              help="b: on later runs, slices labeled from the queue (/next) before the cycle.")
@click.option("--epochs", type=click.IntRange(min=1), default=150, show_default=True,
              help="Training epochs of the tiny CPU model per cycle (minutes on an idle 2-core CPU; see docs/quickstart.md).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface Label Studio listens on (0.0.0.0: every interface, reachable from other machines).")
@click.option("--port", type=int, default=8080, show_default=True, help="Label Studio port.")
@click.option("--backend-port", type=int, default=9090, show_default=True)
@click.option("--serve/--no-serve", default=True, show_default=True,
              help="Keep Label Studio and the backend running until Ctrl-C.")
@click.pass_obj
@handle_errors
def demo_command(obj: CliContext, root: Path, count: int, size: int, first_batch: int, batch: int, epochs: int, host: str,
         port: int, backend_port: int, serve: bool) -> None:

    if first_batch >= count:
        raise click.BadParameter("--first-batch must be smaller than --count (the rest is the pool)")
    run_demo(DemoOptions(root=root, count=count, size=size, first_batch=first_batch, batch=batch, epochs=epochs,
                         host=host, port=port, backend_port=backend_port, serve=serve, progress=obj.progress),
             echo=click.echo)
