"""What makes a run reproducible: the code (git commit), the data (a fingerprint), the seed
and the package versions. Logged as tags on every training, tuning and promotion run."""

from __future__ import annotations

import hashlib
import subprocess
from importlib import metadata
from pathlib import Path

import pandas as pd

from features.contract import Export

PACKAGES = ("funnelcast", "lightgbm", "scikit-learn", "pandas", "numpy", "mlflow", "optuna", "shap")


def export_fingerprint(export: Export) -> str:
    """SHA-256 over every table's rows (values and column names, in order): same export, same digest."""
    h = hashlib.sha256()
    for name in ("accounts", "leads", "opportunities", "stage_history", "activities", "reps"):
        frame = export.table(name)
        if frame is None:
            continue
        h.update(name.encode())
        h.update("\x1f".join(map(str, frame.columns)).encode())
        h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()


def git_commit(path: Path | None = None) -> str:
    """The commit of the code that ran (with ``-dirty`` when files were modified), or ``unknown``."""
    where = path or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            continue
    return out


def provenance_tags(seed: int, data_fingerprint: str | None) -> dict[str, str]:
    """MLflow tags: ``git_commit``, ``data_fingerprint``, ``seed``, ``version.<package>``."""
    tags = {"git_commit": git_commit(), "seed": str(seed)}
    if data_fingerprint:
        tags["data_fingerprint"] = data_fingerprint
    tags.update({f"version.{k}": v for k, v in package_versions().items()})
    return tags
