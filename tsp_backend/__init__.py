"""tsp-backend: the Label Studio ML backend serving TSP predictions (see tsp_backend.api)."""

import os

# before anything loads torch's OpenMP runtime: passive waiting threads (see tsp_model/__init__.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
