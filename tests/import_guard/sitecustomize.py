"""Makes modules unimportable in a test's subprocess: put this folder on ``PYTHONPATH``.

Python imports ``sitecustomize`` at startup. This one wraps the import finders so that they do
not see, by top-level name,

- any name in ``TSP_TEST_DENY_MODULES`` (comma-separated), and
- with ``TSP_TEST_ALLOW_MODULES_FILE`` (a JSON list of names), any module that is neither in that
  list nor in the standard library: an installation that holds only those packages.

Such a module behaves as if it were not installed: ``import`` raises ``ModuleNotFoundError`` and
``importlib.util.find_spec`` answers None (libraries probe optional packages that way).
"""

import json
import os
import sys

_deny = {m for m in os.environ.get("TSP_TEST_DENY_MODULES", "").split(",") if m}
_allow_file = os.environ.get("TSP_TEST_ALLOW_MODULES_FILE")
_allow = set(json.load(open(_allow_file))) | set(sys.stdlib_module_names) if _allow_file else None
_already = set(sys.modules)  # imported before us (site, .pth hooks): not ours to judge


def _refused(top: str) -> bool:
    if top in _already or top.startswith("_sysconfigdata"):  # stdlib's build settings
        return False
    return top in _deny or (_allow is not None and top not in _allow)


class _ImportGuard:
    def __init__(self, finders):
        self.finders = finders

    def find_spec(self, name, path=None, target=None):
        if _refused(name.partition(".")[0]):
            return None
        for finder in self.finders:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                return spec
        return None

    def find_distributions(self, *args, **kwargs):  # importlib.metadata asks the finders too
        for finder in self.finders:
            if hasattr(finder, "find_distributions"):
                yield from finder.find_distributions(*args, **kwargs)

    def invalidate_caches(self):
        for finder in self.finders:
            if hasattr(finder, "invalidate_caches"):
                finder.invalidate_caches()


sys.meta_path[:] = [_ImportGuard(list(sys.meta_path))]
