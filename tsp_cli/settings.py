"""``tsp.toml``: which Label Studio project, where its files go, how to train; secrets from env.

::

    [projects.ich]
    label_studio_project = "ICH"      # id or title
    workdir = "work/ich"
    model_dir = "work/ich/models"     # the backend's TSP_MODEL_DIR (default <workdir>/models)
    config = "tsp-train.toml"         # a TSPConfig TOML (tsp_model.core.config.load_config); optional
    holdout_fraction = 0.0            # optional held-out labeled split for mAP

    [projects.ich.train]              # optional inline TSPConfig sections (model, train,
    epochs = 2                        # active, score) applied over `config`

The file is ``--config``, else ``$TSP_CONFIG``, else ``./tsp.toml``. Relative paths are relative
to the folder of the file. The server is ``$LABEL_STUDIO_URL`` and the token
``$LABEL_STUDIO_API_KEY``: never an option, never logged (:class:`Secrets` hides it in repr).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsp_model.core.config import ConfigError, TSPConfig, load_config, read_toml

__all__ = [
    "ConfigError",
    "ProjectSettings",
    "Secrets",
    "find_settings_file",
    "load_settings",
    "load_secrets",
    "select_project",
]

CONFIG_SECTIONS = ("model", "train", "active", "score", "pretrain")
PROJECT_KEYS = ("label_studio_project", "workdir", "model_dir", "config", "holdout_fraction", "push_batch")
DEFAULT_FILE = "tsp.toml"


@dataclass
class ProjectSettings:
    """One ``[projects.<name>]`` entry, paths resolved."""

    name: str
    label_studio_project: int | str  # an id (int) or a title (str)
    workdir: Path
    model_dir: Path
    config: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # inline TSPConfig sections
    holdout_fraction: float = 0.0
    push_batch: int = 100  # predictions per import request

    def train_config(self) -> TSPConfig:
        """The TSPConfig: ``config`` file (or defaults) with the inline sections on top."""
        try:
            return load_config(self.config, self.overrides or None)
        except ConfigError as exc:
            raise ConfigError(f"project {self.name!r}: {exc}") from None


@dataclass(frozen=True)
class Secrets:
    url: str
    api_key: str = field(repr=False)

    def __repr__(self) -> str:  # never show the token, even in a traceback's locals
        return f"Secrets(url={self.url!r}, api_key=<hidden>)"


def find_settings_file(explicit: str | Path | None = None) -> Path | None:
    """``--config``, else ``$TSP_CONFIG``, else ``./tsp.toml`` if present, else None."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{path}: settings file not found; pass an existing tsp.toml with --config")
        return path
    env = os.environ.get("TSP_CONFIG")
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigError(f"{path}: settings file from TSP_CONFIG not found; fix or unset TSP_CONFIG")
        return path
    path = Path.cwd() / DEFAULT_FILE
    return path if path.is_file() else None


def _entry(name: str, raw: Any, base: Path, where: str) -> ProjectSettings:
    key = f"{where}: projects.{name}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a table")
    unknown = [k for k in raw if k not in PROJECT_KEYS and k not in CONFIG_SECTIONS]
    if unknown:
        raise ConfigError(
            f"{key}.{unknown[0]}: unknown key (known: {', '.join(PROJECT_KEYS + CONFIG_SECTIONS)})"
        )
    if "label_studio_project" not in raw:
        raise ConfigError(f"{key}.label_studio_project: missing; set the Label Studio project id or title")
    ref = raw["label_studio_project"]
    if isinstance(ref, bool) or not isinstance(ref, (int, str)) or (isinstance(ref, str) and not ref.strip()):
        raise ConfigError(f"{key}.label_studio_project: expected a project id or title, got {ref!r}")
    if isinstance(ref, str) and ref.strip().isdigit():
        ref = int(ref.strip())

    def path_of(k: str, default: Path | None) -> Path | None:
        v = raw.get(k)
        if v is None:
            return default
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{key}.{k}: expected a path string, got {v!r}")
        p = Path(v).expanduser()
        return p if p.is_absolute() else (base / p)

    workdir = path_of("workdir", base / "tsp-work" / name)
    model_dir = path_of("model_dir", workdir / "models")
    config = path_of("config", None)
    holdout = raw.get("holdout_fraction", 0.0)
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0.0 <= holdout < 1.0:
        raise ConfigError(f"{key}.holdout_fraction: expected a number in [0, 1), got {holdout!r}")
    push_batch = raw.get("push_batch", 100)
    if isinstance(push_batch, bool) or not isinstance(push_batch, int) or push_batch < 1:
        raise ConfigError(f"{key}.push_batch: expected an integer >= 1, got {push_batch!r}")
    overrides = {s: raw[s] for s in CONFIG_SECTIONS if s in raw}
    settings = ProjectSettings(
        name=name, label_studio_project=ref, workdir=workdir, model_dir=model_dir, config=config,
        overrides=overrides, holdout_fraction=float(holdout), push_batch=push_batch,
    )
    settings.train_config()  # fail now, naming the key, rather than mid-cycle
    return settings


def load_settings(path: str | Path | None) -> dict[str, ProjectSettings]:
    """All ``[projects.*]`` entries of a settings file (``{}`` for None)."""
    if path is None:
        return {}
    path = Path(path)
    data = read_toml(path, "settings file")
    unknown = [k for k in data if k != "projects"]
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown top-level key (only [projects.<name>] tables)")
    projects = data.get("projects", {})
    if not isinstance(projects, dict):
        raise ConfigError(f"{path}: projects: expected [projects.<name>] tables")
    base = path.resolve().parent
    return {name: _entry(name, raw, base, str(path)) for name, raw in projects.items()}


def select_project(settings: dict[str, ProjectSettings], project: str, base: Path | None = None) -> ProjectSettings:
    """``--project``: a configured name, or a Label Studio id.

    An id matching a configured entry's ``label_studio_project`` uses that entry; any other id
    gets defaults (``./tsp-work/<id>``, default training config).
    """
    if project in settings:
        return settings[project]
    if project.strip().isdigit():
        pid = int(project)
        for entry in settings.values():
            if entry.label_studio_project == pid:
                return entry
        base = base or Path.cwd()
        workdir = base / "tsp-work" / str(pid)
        return ProjectSettings(name=str(pid), label_studio_project=pid, workdir=workdir, model_dir=workdir / "models")
    known = ", ".join(sorted(settings)) or "none configured"
    raise ConfigError(
        f"--project {project!r}: not a configured project ({known}) nor a Label Studio id; "
        "add [projects.<name>] to tsp.toml or pass a numeric project id"
    )


def load_secrets() -> Secrets:
    """``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` from the environment."""
    url = os.environ.get("LABEL_STUDIO_URL", "").strip().rstrip("/")
    key = os.environ.get("LABEL_STUDIO_API_KEY", "").strip()
    if not url:
        raise ConfigError("LABEL_STUDIO_URL is not set; export LABEL_STUDIO_URL=http://host:8080")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"LABEL_STUDIO_URL={url!r} is not an http(s) URL; set it like http://host:8080")
    if not key:
        raise ConfigError(
            "LABEL_STUDIO_API_KEY is not set; export a Personal Access Token (Label Studio: Account & Settings)"
        )
    return Secrets(url=url, api_key=key)
