"""Resource allocation: assign open items (leads, deals, accounts) to reps to maximise total
expected value within each rep's weekly capacity and the constraints, exactly.

Each rep ``j`` offers ``capacity_j`` slots (items per week, as the data contract's
``reps.capacity``). The value of item ``i`` worked by rep ``j`` is
``expected_value_i x rep_factor_j`` (a rep's point-in-time conversion rate relative to the
average, 1 when unknown). A pair is forbidden when the item names a region (or team) and the
rep has another one, or the item needs a product the rep has no skill for. The problem is a
transportation problem whose optimum is integral; it is solved exactly as an assignment
problem over the rep slots with ``scipy.optimize.linear_sum_assignment`` (items may stay
unassigned at zero value). Each rep's worklist is ordered by value, and each line says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from features.errors import FunnelcastError

__all__ = ["AllocationError", "Allocation", "allocate", "round_robin", "own_by_score"]

_FORBIDDEN = -1e18


#: Largest problem solved in one call: items x max(rep slots, reps) cells. The solver holds a
#: few float matrices of that size (the values per rep, the gains per slot and SciPy's copy),
#: so 4 million cells stay under about 150 MB; callers may set their own ``max_cells``.
MAX_CELLS = 4_000_000


class AllocationError(FunnelcastError):
    """Invalid allocation input; ``path`` names the bad field (e.g. ``reps[2].capacity``)."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


@dataclass
class Allocation:
    assignments: pd.DataFrame  # item_id, kind, owner_id, rank, value, expected_value, why
    unassigned: pd.DataFrame
    total_value: float
    method: str

    def worklists(self) -> dict[str, pd.DataFrame]:
        return {rep: g.sort_values("rank") for rep, g in self.assignments.groupby("owner_id")}


def validate(reps: pd.DataFrame, items: pd.DataFrame) -> None:
    """Raise AllocationError naming the first bad field: negative or missing capacity, duplicate
    reps or items, an item owned by or pinned to an unknown rep, a negative expected value."""
    if "owner_id" not in reps or "capacity" not in reps:
        raise AllocationError("reps", "each rep needs owner_id and capacity")
    for i, (rep, cap) in enumerate(zip(reps["owner_id"], reps["capacity"], strict=True)):
        if cap is None or pd.isna(cap):
            raise AllocationError(f"reps[{i}].capacity", f"missing for rep {rep!r}")
        if float(cap) < 0:
            raise AllocationError(f"reps[{i}].capacity", f"negative capacity {cap} for rep {rep!r}")
    dup = reps["owner_id"][reps["owner_id"].duplicated()]
    if len(dup):
        raise AllocationError(f"reps[{int(dup.index[0])}].owner_id", f"rep {dup.iloc[0]!r} is listed twice")
    dup = items["item_id"][items["item_id"].duplicated()]
    if len(dup):
        raise AllocationError(f"items[{int(dup.index[0])}].item_id", f"item {dup.iloc[0]!r} is listed twice")
    known = set(reps["owner_id"])
    for col in ("owner_id", "pinned_to"):
        if col in items:
            for i, rep in enumerate(items[col]):
                if isinstance(rep, str) and rep not in known:
                    raise AllocationError(f"items[{i}].{col}", f"unknown rep {rep!r} (not in reps)")
    ev = pd.to_numeric(items["expected_value"], errors="coerce").astype(float)
    bad = ~np.isfinite(ev.to_numpy()) | (ev.to_numpy() < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AllocationError(f"items[{i}].expected_value",
                              f"must be a finite number >= 0, got {items['expected_value'].iloc[i]!r}")
    if "rep_factor" in reps:
        factor = pd.to_numeric(reps["rep_factor"], errors="coerce").fillna(1.0).to_numpy(dtype=float)
        bad = ~np.isfinite(factor) | (factor < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise AllocationError(f"reps[{i}].rep_factor", f"must be a finite number >= 0, got {reps['rep_factor'].iloc[i]!r}")


def _text(v: object) -> str | None:
    return v if isinstance(v, str) and v else None


def value_matrix(reps: pd.DataFrame, items: pd.DataFrame) -> np.ndarray:
    """Value of each (item, rep) pair; ``-inf``-like where the pair is forbidden."""
    ev = items["expected_value"].to_numpy(dtype=float)
    factor = reps["rep_factor"].fillna(1.0).to_numpy(dtype=float) if "rep_factor" in reps else np.ones(len(reps))
    V = ev[:, None] * factor[None, :]
    for col in ("region", "team"):
        if col in items and col in reps:
            # integer codes of the names (-1: none), compared by broadcasting: no Python object per cell
            need = [_text(v) for v in items[col]]  # not Series.map: it turns None back into NaN
            have = [_text(v) for v in reps[col]]
            codes, _ = pd.factorize(pd.Series([*need, *have], dtype=object), use_na_sentinel=True)
            n, h = codes[: len(need)], codes[len(need):]
            clash = (n[:, None] >= 0) & (h[None, :] >= 0) & (n[:, None] != h[None, :])
            V[clash] = _FORBIDDEN
    if "product" in items and "skills" in reps:
        skills = [set(s) if isinstance(s, (list, tuple, set)) and len(s) else None for s in reps["skills"]]
        for i, prod in enumerate(items["product"]):
            if isinstance(prod, str):
                for j, sk in enumerate(skills):
                    if sk is not None and prod not in sk:
                        V[i, j] = _FORBIDDEN
    if "pinned_to" in items:
        pos = {r: j for j, r in enumerate(reps["owner_id"])}
        for i, rep in enumerate(items["pinned_to"]):
            if isinstance(rep, str):
                keep = V[i, pos[rep]]
                V[i, :] = _FORBIDDEN
                V[i, pos[rep]] = keep
    return V


def _why(item: pd.Series, rep: pd.Series, value: float) -> str:
    parts = [f"expected value {item['expected_value']:,.0f}"]
    factor = float(rep.get("rep_factor", 1.0) or 1.0)
    if abs(factor - 1.0) > 0.01:
        parts.append(f"{rep['owner_id']} converts {factor:.2f}x the average")
    for col in ("region", "team"):
        if _text(item.get(col)) and _text(rep.get(col)):
            parts.append(f"{col} {item[col]} matches")
    if _text(item.get("owner_id")) == rep["owner_id"]:
        parts.append("already owns it")
    if _text(item.get("reason")):
        parts.append(str(item["reason"]))
    return f"{item.get('kind', 'item')} worth {value:,.0f} to this rep: " + "; ".join(parts)


def _result(reps: pd.DataFrame, items: pd.DataFrame, V: np.ndarray, rows: np.ndarray, cols: np.ndarray, method: str) -> Allocation:
    out = []
    for i, j in zip(rows, cols, strict=True):
        item, rep = items.iloc[i], reps.iloc[j]
        out.append({"owner_id": rep["owner_id"], "item_id": item["item_id"], "kind": item.get("kind", "item"),
                    "value": float(V[i, j]), "expected_value": float(item["expected_value"]),
                    "why": _why(item, rep, float(V[i, j]))})
    a = pd.DataFrame(out, columns=["owner_id", "item_id", "kind", "value", "expected_value", "why"])
    a = a.sort_values(["owner_id", "value", "item_id"], ascending=[True, False, True], ignore_index=True)
    a.insert(1, "rank", a.groupby("owner_id").cumcount() + 1)
    done = set(a["item_id"])
    return Allocation(assignments=a, unassigned=items[~items["item_id"].isin(done)].reset_index(drop=True),
                      total_value=float(a["value"].sum()), method=method)


def allocate(reps: pd.DataFrame, items: pd.DataFrame, max_cells: int = MAX_CELLS) -> Allocation:
    """The allocation of maximum total value (exact: assignment over rep slots).

    ``reps``: ``owner_id``, ``capacity`` and optionally ``team``, ``region``, ``skills`` (list
    of products), ``rep_factor``. ``items``: ``item_id``, ``expected_value`` and optionally
    ``kind``, ``owner_id`` (current owner), ``region``, ``team``, ``product``, ``pinned_to``, ``reason``.
    A problem of more than ``max_cells`` (items x max(rep slots, reps)) is refused before any
    matrix is built (AllocationError naming the limit).
    """
    reps, items = reps.reset_index(drop=True), items.reset_index(drop=True)
    validate(reps, items)
    # at most len(items) slots per rep can be useful: clip first so a huge capacity costs nothing
    caps = np.minimum(reps["capacity"].astype(float).to_numpy(), len(items)).astype(int)
    slots = int(caps.sum())
    cells = len(items) * max(slots, len(reps))
    if cells > max_cells:
        raise AllocationError(
            "items",
            f"too large to solve exactly in one request: {len(items):,} items x {max(slots, len(reps)):,} rep slots "
            f"= {cells:,} cells, over the limit of {max_cells:,} (FUNNELCAST_MAX_ALLOCATION_CELLS); "
            "allocate per team or region, or lower the capacities to what reps can really work",
        )
    slot_rep = np.repeat(np.arange(len(reps)), caps)
    V = value_matrix(reps, items)
    if len(items) == 0 or len(slot_rep) == 0:
        return _result(reps, items, V, np.array([], int), np.array([], int), "exact")
    gain = np.maximum(V[:, slot_rep], 0.0)  # a forbidden pair is worth nothing (same as unassigned)
    rows, cols = linear_sum_assignment(gain, maximize=True)
    j = slot_rep[cols]
    keep = (V[rows, j] > _FORBIDDEN / 2) & (gain[rows, cols] > 0)
    return _result(reps, items, V, rows[keep], j[keep], "exact")


def round_robin(reps: pd.DataFrame, items: pd.DataFrame, seed: int = 0) -> Allocation:
    """Baseline: items in random order dealt to reps in turn, skipping full reps and forbidden pairs."""
    reps, items = reps.reset_index(drop=True), items.reset_index(drop=True)
    validate(reps, items)
    V = value_matrix(reps, items)
    left = reps["capacity"].astype(float).astype(int).to_numpy().copy()
    rows, cols, turn = [], [], 0
    for i in np.random.default_rng(seed).permutation(len(items)):
        for k in range(len(reps)):
            j = (turn + k) % len(reps)
            if left[j] > 0 and V[i, j] > _FORBIDDEN / 2:
                rows.append(i), cols.append(j)
                left[j] -= 1
                turn = j + 1
                break
    return _result(reps, items, V, np.array(rows, int), np.array(cols, int), "round robin")


def own_by_score(reps: pd.DataFrame, items: pd.DataFrame) -> Allocation:
    """Baseline: each rep works their own items, best expected value first, up to capacity."""
    reps, items = reps.reset_index(drop=True), items.reset_index(drop=True)
    validate(reps, items)
    V = value_matrix(reps, items)
    pos = {r: j for j, r in enumerate(reps["owner_id"])}
    left = reps["capacity"].astype(float).astype(int).to_numpy().copy()
    rows, cols = [], []
    owners = items["owner_id"] if "owner_id" in items else pd.Series(np.nan, index=items.index)
    for i in np.argsort(-items["expected_value"].to_numpy(dtype=float), kind="stable"):
        j = pos.get(owners.iloc[i])
        if j is not None and left[j] > 0 and V[i, j] > _FORBIDDEN / 2:
            rows.append(i), cols.append(j)
            left[j] -= 1
    return _result(reps, items, V, np.array(rows, int), np.array(cols, int), "own leads by score")


def reps_from_export(reps: pd.DataFrame | None, owner_rate: dict[str, float], global_rate: float,
                     default_capacity: int = 40) -> pd.DataFrame:
    """The reps to allocate to: the export's ``reps`` table (capacity missing -> ``default_capacity``)
    with ``rep_factor`` = the rep's point-in-time conversion rate over the average."""
    if reps is None or reps.empty:
        reps = pd.DataFrame({"owner_id": sorted(owner_rate)})
    out = reps.copy()
    out["capacity"] = out.get("capacity", pd.Series(np.nan, index=out.index)).fillna(default_capacity)
    if global_rate > 0:
        out["rep_factor"] = out["owner_id"].map(owner_rate).fillna(global_rate) / global_rate
    else:
        out["rep_factor"] = 1.0
    return out.reset_index(drop=True)


def lead_items(scored: pd.DataFrame, leads: pd.DataFrame) -> pd.DataFrame:
    """Allocation items from scored leads (``lead_id``, ``expected_value``, ``probability``, reasons)."""
    owner = leads.set_index("lead_id")["owner_id"]
    first_reason = [r[0]["text"] if len(r) else "" for r in scored["reasons"]] if "reasons" in scored else ""
    return pd.DataFrame({
        "item_id": scored["lead_id"].to_numpy(),
        "kind": "lead",
        "expected_value": scored["expected_value"].to_numpy(dtype=float),
        "owner_id": scored["lead_id"].map(owner).to_numpy(dtype=object),
        "reason": first_reason,
    })
