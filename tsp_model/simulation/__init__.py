"""Algorithm 1 replayed with an oracle on a fully labeled COCO instance-segmentation set.

Before a team commits annotators to the queue it can ask: on data like ours, how many labels
does this save? :func:`run_simulation` answers with the team's own labeled data: it hides the
labels behind an :class:`Oracle`, splits off a validation and a test set by group (series,
patient, source image) so near-duplicates never straddle them, replays the active-learning
cycles for each arm (a selection strategy, with or without pseudo labels, and the fully
supervised ceiling) over several seeds, and reports mAP@0.5 per cycle, paired differences and
the labels each arm needs to reach 95% of full supervision. ``tsp-sync simulate`` is its
command line; ``benchmarks/label_efficiency.py`` holds presets.
"""

from tsp_model.simulation.oracle import Oracle, OracleLeak, pseudo_label_precision
from tsp_model.simulation.run import run_simulation
from tsp_model.simulation.settings import Arm, SimulationError, SimulationSettings, parse_arms
from tsp_model.simulation.splits import group_split

__all__ = [
    "Arm",
    "Oracle",
    "OracleLeak",
    "SimulationError",
    "SimulationSettings",
    "group_split",
    "parse_arms",
    "pseudo_label_precision",
    "run_simulation",
]
