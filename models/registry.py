"""MLflow: the pyfunc wrapper of a scorer, and reading the registry by alias.

A model is one ``PythonModel``: ``load_context`` loads the pickled scorer artifact and
``predict`` takes the scorer's feature frame and returns calibrated probabilities (so
``mlflow models serve`` can serve it without reasons). funnelcast's own API unwraps the
scorer and calls it directly for scores with reasons. The registry is addressed by alias
(``models:/lead_quality@champion``), never by the deprecated stages.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections import Counter
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import joblib
import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from features.errors import ModelNotAvailable
from features.profile import source_key

logger = logging.getLogger(__name__)


class ScorerModel(mlflow.pyfunc.PythonModel):
    """The pyfunc form of a funnelcast scorer (artifact ``scorer``: a joblib file)."""

    def load_context(self, context: Any) -> None:
        self.scorer = joblib.load(context.artifacts["scorer"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        X = model_input[self.scorer.feature_names]
        return pd.DataFrame({"probability": self.scorer.predict_proba(X)}, index=model_input.index)


def configure(tracking_uri: str, home: Path | None = None) -> MlflowClient:
    """Point MLflow's tracking and registry at ``tracking_uri`` and return a client. With the project
    ``home``, a SQLite store inside it first follows the home if it was moved (:func:`follow_home`)."""
    if home is not None:
        follow_home(home, tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


#: The file in the project home recording where the home was when its store was last opened.
HOME_RECORD = "home.json"


def follow_home(home: Path, tracking_uri: str) -> int:
    """Make a SQLite MLflow store inside ``home`` follow the home when the folder was moved.

    MLflow stores absolute artifact locations (experiments, runs, logged models, model versions):
    after ``mv`` of the project folder every model would point at the old place. The home keeps a
    record of where it was (:data:`HOME_RECORD`); when it is opened elsewhere, every stored text that
    starts with the old home (as a path or a ``file://`` URI) is rewritten to the new one, in one
    transaction, and the record is updated. A store without a record (written before records were
    kept, or through the Python API without a home, then moved or copied before anything opened it)
    is followed when its locations say where it was (:func:`_previous_home`). Returns the number of
    values rewritten (0: not moved, a new store, or a store outside the home, which is left alone)."""
    home = Path(home).resolve()
    db = _sqlite_path(tracking_uri)
    if db is None or db.resolve().parent != home or not home.is_dir():
        return 0
    record = home / HOME_RECORD
    try:
        was = Path(json.loads(record.read_text())["path"])
    except (OSError, ValueError, KeyError, TypeError):
        was = _previous_home(db, home) if db.exists() else None  # no record: the stored locations say
    rewritten = 0 if was is None or was == home or not db.exists() else _rewrite_prefix(db, was, home)
    if was != home:
        try:
            tmp = record.with_suffix(".tmp")
            tmp.write_text(json.dumps({"path": str(home)}))
            os.replace(tmp, record)
        except OSError as exc:  # a read-only home still serves; it is only not recorded
            logger.warning("cannot record where the project home is (%s): %s", record, exc)
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
        if rewritten:
            logger.warning("the project home moved from %s to %s: %d stored artifact locations follow it",
                           was, home, rewritten)
    return rewritten


#: The columns of MLflow's SQLite store holding artifact locations.
_LOCATIONS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("logged_models", "artifact_location"),
              ("model_versions", "storage_location"))


def _stored_locations(db: Path) -> list[Path]:
    """The local artifact locations the store records (``file://`` URIs and absolute paths), read only."""
    out = []
    with closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, column in _LOCATIONS:
            if table in tables:
                out += [r[0] for r in conn.execute(f'SELECT DISTINCT "{column}" FROM "{table}"') if isinstance(r[0], str)]
    paths = [Path(url2pathname(urlsplit(v).path)) if v.startswith("file:") else Path(v) for v in out]
    return [p for p in paths if p.is_absolute()]


def _previous_home(db: Path, home: Path) -> Path | None:
    """Where a store without a home record was written, read from its own artifact locations.

    A location ``OLD/rest`` outside ``home`` whose ``home/rest`` exists (``rest`` of at least two
    parts: the artifacts came along with the store) names ``OLD``; the longest such ``rest`` is taken
    (the most specific match), and the most frequent ``OLD``. None when no location says (a new store,
    one never moved, or one whose artifacts live elsewhere: left alone). ``OLD`` is never the root, an
    ancestor of the home or inside it: a wrong guess must not rewrite every path."""
    found: Counter[Path] = Counter()
    try:
        locations = _stored_locations(db)
    except sqlite3.Error:
        return None  # not a store this can read: MLflow says what is wrong with it when it opens it
    for location in locations:
        if location.is_relative_to(home):
            continue
        parts = location.parts
        for cut in range(1, len(parts) - 1):  # OLD = parts[:cut], rest = parts[cut:]: the longest rest first
            if home.joinpath(*parts[cut:]).exists():
                old = Path(*parts[:cut])
                if len(old.parts) >= 2 and not home.is_relative_to(old):
                    found[old] += 1
                break
    if not found:
        return None
    old, _ = found.most_common(1)[0]
    logger.info("the store %s has no home record; its artifact locations say it was written in %s", db, old)
    return old


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _rewrite_prefix(db: Path, old: Path, new: Path) -> int:
    """Rewrite, in every text column of every table, values starting with ``old`` (path or file URI)."""
    pairs = [(old.as_uri() + "/", new.as_uri() + "/"), (f"{old}{os.sep}", f"{new}{os.sep}")]
    pairs += [(f"file://{old}/", f"file://{new}/")] if f"file://{old}/" != pairs[0][0] else []
    done = 0
    with closing(sqlite3.connect(db, timeout=30)) as conn, conn:
        conn.execute("BEGIN IMMEDIATE")  # one mover at a time; a second one finds nothing left to rewrite
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')
                       if any(t in (r[2] or "").upper() for t in ("CHAR", "TEXT", "CLOB"))]
            for col in columns:
                for before, after in pairs:
                    cur = conn.execute(f'UPDATE "{table}" SET "{col}" = ? || substr("{col}", ?) '
                                       f'WHERE substr("{col}", 1, ?) = ?', (after, len(before) + 1, len(before), before))
                    done += cur.rowcount
    return done


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    alias: str
    run_id: str | None
    scorer: Any


def load_scorer(client: MlflowClient, name: str, alias: str = "champion") -> LoadedModel:
    """Load the scorer registered as ``name`` under ``alias``, or raise ModelNotAvailable.

    The alias is resolved once, and that version is loaded (``models:/name/<version>``): an alias
    moved meanwhile cannot make the version reported differ from the model loaded."""
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise ModelNotAvailable(name, _why_no_alias(client, name, alias)) from exc
    stale = _trained_on_another_export(client, name, mv)
    if stale:
        raise ModelNotAvailable(name, stale)
    # models:/ URIs resolve through MLflow's global URIs: point them at this client's store
    mlflow.set_tracking_uri(client.tracking_uri)
    mlflow.set_registry_uri(client._registry_uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{mv.version}")
    scorer = model.unwrap_python_model().scorer
    return LoadedModel(name=name, version=str(mv.version), alias=alias, run_id=mv.run_id, scorer=scorer)


#: The registered-model tag that says why the last ``funnelcast train`` could not train a task (the export
#: had nothing to learn from, too little history); removed when a version of the task is registered.
NOT_TRAINED_TAG = "not_trained"
#: How the reason a task has no served model starts when its last training could not train it (``/readyz``
#: reports such a task as ``not_trained``).
NOT_TRAINED_PREFIX = "not trained on the last export"


def not_trained_reason(client: MlflowClient, name: str) -> str | None:
    """Why the last training of ``name`` did not train it (:data:`NOT_TRAINED_TAG`), or None."""
    try:
        return client.get_registered_model(name).tags.get(NOT_TRAINED_TAG) or None
    except MlflowException:
        return None


def record_not_trained(client: MlflowClient, name: str, why: str, data_source: str) -> None:
    """Record on the registered model ``name`` (created without versions if new) that the export at
    ``data_source`` could not train it and why: the API's 503 and ``/readyz`` then say so instead of
    asking for a training that would fail the same way."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    client.set_registered_model_tag(name, NOT_TRAINED_TAG, why[:500])
    client.set_registered_model_tag(name, f"{NOT_TRAINED_TAG}_source", data_source[:500])


def clear_not_trained(client: MlflowClient, name: str, tags: dict[str, str] | None = None) -> None:
    """Forget :func:`record_not_trained` of ``name`` (a version of it was just registered); ``tags``, the
    registered model's tags when the caller has just read them, saves reading them again."""
    if tags is None:
        tags = client.get_registered_model(name).tags
    for tag in (NOT_TRAINED_TAG, f"{NOT_TRAINED_TAG}_source"):
        if tag in tags:
            client.delete_registered_model_tag(name, tag)


def _trained_on_another_export(client: MlflowClient, name: str, mv: Any) -> str | None:
    """Why version ``mv`` of ``name`` is not served, or None: the last training could not train ``name``
    on its export (:func:`record_not_trained`) and ``mv`` was trained on another one. Serving it would
    score one CRM's records with a model of another's (the sample's, after a first ``funnelcast run``)."""
    try:
        tags = client.get_registered_model(name).tags
        why, where = tags.get(NOT_TRAINED_TAG), tags.get(f"{NOT_TRAINED_TAG}_source")
        if not (why and where and mv.run_id):
            return None
        trained_on = client.get_run(mv.run_id).data.tags.get("data_source")
    except MlflowException:
        return None
    if trained_on is None or source_key(trained_on) == source_key(where):
        return None  # the same export, trained earlier: still the best model there is for it
    return (f"{NOT_TRAINED_PREFIX}: {why}; version {mv.version} was trained on another export and is "
            "not served for this one")


def _why_no_alias(client: MlflowClient, name: str, alias: str) -> str:
    """Why ``name`` has no ``alias``: never trained, or its version refused by the baseline floor."""
    try:
        refused = [mv for mv in client.search_model_versions(f"name = '{name}'") if mv.tags.get("floor") == "refused"]
    except MlflowException:
        refused = []
    why_not = not_trained_reason(client, name)
    if why_not and not refused:
        return f"{NOT_TRAINED_PREFIX}: {why_not}"
    if refused:
        mv = max(refused, key=lambda v: int(v.version))
        return (f"version {mv.version} was not made {alias!r} by the baseline floor ({mv.tags.get('floor_reason', '')}); "
                f"`funnelcast promote --task {name} --force` makes it champion, or retrain on more history")
    return f"no version has the alias {alias!r} yet; run `funnelcast train --task {name}`"


def alias_versions(client: MlflowClient, names: list[str], alias: str = "champion") -> dict[str, str]:
    """The version each of ``names`` has at ``alias`` now (names without that alias are left out)."""
    out = {}
    for name in names:
        try:
            out[name] = str(client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            continue
    return out


def describe_versions(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Every complete registered version of ``name`` (not those tagged ``incomplete`` by an
    interrupted training): aliases, training window, metrics, params.

    A version whose run cannot be read has empty metrics and says why in ``run_error`` (None
    when the run was read), and a warning is logged: its metrics are unknown, not absent."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
        aliases: dict[str, list[str]] = {}
        for alias, version in client.get_registered_model(name).aliases.items():
            aliases.setdefault(str(version), []).append(alias)
    except MlflowException:
        return []
    out = []
    complete = [mv for mv in versions if (getattr(mv, "tags", None) or {}).get("incomplete") != "true"]  # interrupted trainings
    for mv in sorted(complete, key=lambda v: int(v.version), reverse=True):
        metrics: dict[str, float] = {}
        params: dict[str, str] = {}
        run_error = None if mv.run_id else "the version has no training run"
        if mv.run_id:
            try:
                run = client.get_run(mv.run_id)
                metrics, params = dict(run.data.metrics), dict(run.data.params)
            except MlflowException as exc:
                run_error = f"run {mv.run_id} could not be read: {exc.message}"
                logger.warning("%s version %s: %s", name, mv.version, run_error)
        out.append(
            {
                "name": name,
                "version": str(mv.version),
                "aliases": sorted(aliases.get(str(mv.version), [])),
                "run_id": mv.run_id,
                "created_at": pd.Timestamp(mv.creation_timestamp, unit="ms", tz="UTC").isoformat(),
                "trained_from": params.get("train_from"),
                "trained_until": params.get("trained_until"),
                "metrics": metrics,
                "run_error": run_error,
            }
        )
    return out
