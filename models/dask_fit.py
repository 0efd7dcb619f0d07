"""LightGBM's trees grown on a Dask cluster, brought back as the local booster every other path uses.

:func:`grow_on_cluster` is what :class:`models.estimators.CalibratedBoostedClassifier` calls instead of
``lgb.train`` while a Dask session is open (:func:`features.engine.engine_session`): the feature
matrix (categories as the codes the local fit gives them) is split into one row block per worker
and scattered there (block ``i`` to the ``i``-th worker by address), :class:`lightgbm.DaskLGBMClassifier`
grows the trees data-parallel on the workers (ranked in the same address order, with LightGBM's
``deterministic`` setting: the same data, seed and workers grow the same trees every time), and ``to_local()`` returns a plain :class:`lightgbm.LGBMClassifier` whose booster the
estimator keeps. Everything after the growing (Platt scaling, SHAP contributions, logging to MLflow,
serving) is the pandas path's, on the same booster type.

LightGBM's Dask interface has no early stopping (microsoft/LightGBM#3712), so the trees are grown
for the estimator's ``max_rounds`` and early stopping is replayed here on the calibration window:
the validation log loss after every round (from the leaves each row falls in, in row blocks) and
the rule of ``lgb.early_stopping`` (the best round, unless ``stopping_rounds`` later rounds do not
improve on it). The booster is cut to the best round, as the pandas path's ``best_iteration``.
"""

from __future__ import annotations

import math
from typing import Any

import lightgbm as lgb
import numpy as np

__all__ = ["early_stopping_round", "grow_on_cluster", "grows_on_cluster", "round_losses"]

#: Rows per block when the log loss of every round is computed (a block holds rows x rounds floats).
BLOCK_ROWS = 4096
#: LightGBM parameters that are the scikit-learn interface's arguments under another name, and those the
#: cluster decides (each worker's threads: the Dask interface ignores ``n_jobs``).
_RENAMED = {"seed": "random_state"}
_CLUSTER_DECIDES = ("num_threads", "n_jobs", "num_iterations", "n_estimators")
#: LightGBM settings its data-parallel learner fails on (``interaction_constraints``: ``std::bad_alloc`` on the
#: workers, LightGBM 4.7): a fit with one of them grows in the command's process (:func:`grows_on_cluster`).
LOCAL_ONLY = ("interaction_constraints", "interaction_constraint")
#: LightGBM's settings for the same trees from the same data and seed (its docs: ``deterministic`` wants the
#: histogram layout fixed too), with the blocks on fixed workers (:func:`_blocks`).
REPRODUCIBLE = {"deterministic": True, "force_row_wise": True}


def _leaf_values(booster: lgb.Booster) -> np.ndarray:
    """``values[t, leaf]``: the output of leaf ``leaf`` of tree ``t`` (NaN where the tree has fewer leaves)."""
    trees = booster.dump_model()["tree_info"]
    values = np.full((len(trees), max(t["num_leaves"] for t in trees)), np.nan)

    def walk(node: dict, t: int) -> None:
        if "leaf_index" in node:
            values[t, node["leaf_index"]] = node["leaf_value"]
        elif "leaf_value" in node:  # a tree of one leaf
            values[t, 0] = node["leaf_value"]
        else:
            walk(node["left_child"], t)
            walk(node["right_child"], t)

    for t, tree in enumerate(trees):
        walk(tree["tree_structure"], t)
    return values


def round_losses(booster: lgb.Booster, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The log loss on ``X, y`` of the booster's raw score after each round (``out[i]``: rounds 0..i)."""
    values = _leaf_values(booster)
    y = np.asarray(y, dtype=float)
    total = np.zeros(values.shape[0])
    for start in range(0, len(X), BLOCK_ROWS):
        leaves = booster.predict(X[start:start + BLOCK_ROWS], pred_leaf=True).reshape(-1, values.shape[0])
        raw = np.cumsum(values[np.arange(values.shape[0]), leaves], axis=1)
        yb = y[start:start + BLOCK_ROWS, None]
        # log loss of the logistic of raw, written stably: log(1 + e^-z) for positives, log(1 + e^z) for negatives
        total += np.logaddexp(0.0, np.where(yb > 0, -raw, raw)).sum(axis=0)
    return total / max(len(X), 1)


def early_stopping_round(losses: np.ndarray, stopping_rounds: int) -> int:
    """The number of rounds ``lgb.early_stopping(stopping_rounds)`` keeps for this validation curve."""
    best, best_i = math.inf, 0
    for i, loss in enumerate(losses):
        if loss < best:
            best, best_i = float(loss), i
        elif i - best_i >= stopping_rounds:
            break
    return best_i + 1


def _blocks(client: Any, arrays: list[np.ndarray]) -> list[Any]:
    """``arrays`` (same length) as dask arrays of one contiguous row block per worker, block ``i`` held by the
    ``i``-th worker in address order: the same rows on the same worker every time (the scheduler does not
    choose), which LightGBM's data-parallel fit needs to grow the same trees twice."""
    import dask.array as da

    workers = sorted(client.scheduler_info().get("workers", {})) or [None]
    bounds = np.linspace(0, len(arrays[0]), len(workers) + 1).round().astype(int)
    out = []
    for a in arrays:
        blocks = []
        for w, lo, hi in zip(workers, bounds[:-1], bounds[1:], strict=True):
            if hi > lo:  # a random key (hash=False): two equal blocks stay two blocks, each on its worker
                future = client.scatter(a[lo:hi], workers=[w] if w else None, hash=False)
                blocks.append(da.from_delayed(future, shape=(hi - lo, *a.shape[1:]), dtype=a.dtype))
        out.append(da.concatenate(blocks, axis=0))
    return out


def grows_on_cluster(params: dict[str, Any]) -> bool:
    """Whether a fit with LightGBM ``params`` can grow on the cluster: a binary objective (the cluster grows a
    ``DaskLGBMClassifier``; the deal model's regression surrogate for reasons grows locally) and none of
    :data:`LOCAL_ONLY` set."""
    return params.get("objective", "binary") == "binary" and not any(params.get(k) for k in LOCAL_ONLY)


class _RankedClient:
    """``client``, except that :meth:`who_has` lists the data's holders in worker-address order.

    LightGBM's Dask fit ranks its machines in the order ``client.who_has`` returns the training parts
    (``worker_map`` in ``lightgbm.dask._train``), and that order changes from one fit to the next; the
    rank decides which rows each machine bins and bags, so two fits of the same data grew different
    trees. With one part per worker (:func:`_blocks`) in address order, rank ``i`` is the ``i``-th
    worker holding block ``i``, every time."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def who_has(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        held = self._client.who_has(*args, **kwargs)
        return dict(sorted(held.items(), key=lambda kv: (sorted(kv[1]), str(kv[0]))))


def grow_on_cluster(client: Any, params: dict[str, Any], X: np.ndarray, y: np.ndarray,
                    weight: np.ndarray | None, categorical: list[int], rounds: int,
                    X_cal: np.ndarray | None = None, y_cal: np.ndarray | None = None,
                    stopping_rounds: int | None = None) -> tuple[lgb.Booster, int]:
    """A booster of ``rounds`` rounds grown by ``DaskLGBMClassifier`` on ``client``'s workers with LightGBM
    ``params``, and the rounds to use: the early-stopping round on ``X_cal`` when given, else ``rounds``."""
    from lightgbm import DaskLGBMClassifier

    kwargs = {_RENAMED.get(k, k): v for k, v in params.items() if k not in _CLUSTER_DECIDES}
    kwargs.update(REPRODUCIBLE)
    arrays = [np.asarray(X, dtype=float), np.asarray(y, dtype=int)] + ([np.asarray(weight, dtype=float)]
                                                                        if weight is not None else [])
    dX, dy, *dw = _blocks(client, arrays)
    model = DaskLGBMClassifier(client=_RankedClient(client), n_estimators=rounds, **kwargs)
    model.fit(dX, dy, sample_weight=dw[0] if dw else None, categorical_feature=categorical or "auto")
    booster = model.to_local().booster_
    used = booster.current_iteration()
    if X_cal is not None and y_cal is not None and len(X_cal) and stopping_rounds:
        used = early_stopping_round(round_losses(booster, np.asarray(X_cal, dtype=float), y_cal), stopping_rounds)
        booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=used))
    return booster, used
