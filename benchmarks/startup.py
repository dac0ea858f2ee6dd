"""How fast ``tsp-sync`` answers when it has nothing heavy to do: ``--help`` and ``status``.

    python benchmarks/startup.py                         # this checkout
    python benchmarks/startup.py --tree ../old --label before --out benchmarks/results/startup_before.json

Each command runs ``--repeat`` times as a fresh process (the median is reported): wall time, peak
resident memory (``os.wait4``) and whether torch was imported. ``status`` reads a project whose
work directory holds one snapshot and one model file, without Label Studio. ``--tree`` measures
another checkout of this repository (for numbers before a change): its packages are imported
from there, in the old layout (``cli/``, ``backend/``) or the new one. Time it on an idle machine.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# runs tsp-sync's click group in this interpreter and reports whether torch was loaded
RUNNER = ("import atexit, sys\n"
          "atexit.register(lambda: sys.stderr.write('\\nTORCH_LOADED=%s\\n' % ('torch' in sys.modules)))\n"
          "from tsp_cli.main import cli\n"
          "sys.argv = ['tsp-sync'] + sys.argv[1:]\n"
          "cli()\n")


def _python_path(tree: Path, scratch: Path) -> str:
    """A folder whose ``tsp_*`` entries are ``tree``'s packages, whichever layout it has."""
    farm = scratch / "packages"
    farm.mkdir(exist_ok=True)
    names = {"tsp_model": "tsp_model", "tsp_labelstudio": "tsp_labelstudio", "tsp_backend": "tsp_backend",
             "tsp_cli": "tsp_cli", "backend": "tsp_backend", "cli": "tsp_cli"}
    for folder, package in names.items():
        if (tree / folder / "__init__.py").is_file() and not (farm / package).exists():
            (farm / package).symlink_to(tree / folder)
    return str(farm)


def _project(scratch: Path) -> Path:
    """tsp.toml of a project with one snapshot (3 labeled, 7 unlabeled) and one model file."""
    work = scratch / "work"
    snap = work / "snapshots" / "1"
    snap.mkdir(parents=True)
    (snap / "manifest.json").write_text(json.dumps({"number": 1, "counts": {
        "tasks": 10, "labeled": 3, "instances": 4, "empty": 1, "pool": 7, "skipped": 0}}))
    (work / "models").mkdir()
    (work / "models" / "tsp-20261204T000000-00000000.pt").write_bytes(b"\0" * 1024)
    settings = scratch / "tsp.toml"
    settings.write_text(f'[projects.demo]\nlabel_studio_project = 1\nworkdir = "{work}"\nmodel_dir = "{work / "models"}"\n')
    return settings


def measure(args: list[str], env: dict[str, str], repeat: int, cwd: Path) -> dict[str, object]:
    walls, rss, torch_loaded, codes = [], [], set(), set()
    for _ in range(repeat):
        t0 = time.perf_counter()
        # cwd: `python -c` puts the working directory first on sys.path, before the tree's packages
        proc = subprocess.Popen([sys.executable, "-c", RUNNER, *args], env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append(time.perf_counter() - t0)
        rss.append(usage.ru_maxrss / 1024.0)  # KiB on Linux -> MiB
        codes.add(os.waitstatus_to_exitcode(status))
        torch_loaded.add("TORCH_LOADED=True" in err)
    return {"command": "tsp-sync " + " ".join(args), "wall_s_median": round(statistics.median(walls), 3),
            "wall_s": [round(w, 3) for w in walls], "peak_rss_mb_median": round(statistics.median(rss), 1),
            "exit_codes": sorted(codes), "imports_torch": sorted(torch_loaded) == [True]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", type=Path, default=ROOT, help="checkout to measure (default: this one)")
    p.add_argument("--label", default="", help="what this run measures, e.g. 'before' or 'after'")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", type=Path, help="JSON file to write")
    args = p.parse_args(argv)
    tree = args.tree.resolve()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        env = dict(os.environ, PYTHONPATH=_python_path(tree, scratch), TSP_CONFIG=str(_project(scratch)))
        results = [measure(["--help"], env, args.repeat, scratch),
                   measure(["status", "--project", "demo"], env, args.repeat, scratch)]
    doc = {"label": args.label, "tree": str(tree), "commit": commit, "repeat": args.repeat,
           "load_average": os.getloadavg(), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "results": results}
    for r in results:
        print(f"{r['command']:<32} {r['wall_s_median']:>6.2f} s  {r['peak_rss_mb_median']:>7.1f} MB  "
              f"torch {'loaded' if r['imports_torch'] else 'not loaded'}  exit {r['exit_codes']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
