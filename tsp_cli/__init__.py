"""tsp-sync: keep a Label Studio project and the TSP model in step (see tsp_cli.main)."""

import os

# before anything loads torch's OpenMP runtime: passive waiting threads (see tsp_model/__init__.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
