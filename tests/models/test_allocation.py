"""Allocation is exact (equals an integer program), respects capacity and constraints, names bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import Bounds, LinearConstraint, milp

from models.allocation import AllocationError, allocate, own_by_score, round_robin, value_matrix


def _instance(seed: int, n_items: int = 25, n_reps: int = 4):
    rng = np.random.default_rng(seed)
    reps = pd.DataFrame({"owner_id": [f"r{j}" for j in range(n_reps)], "capacity": rng.integers(0, 6, n_reps),
                         "region": rng.choice(["na", "emea", None], n_reps), "rep_factor": rng.uniform(0.6, 1.4, n_reps)})
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "expected_value": rng.exponential(100, n_items),
                          "owner_id": rng.choice(reps["owner_id"], n_items), "region": rng.choice(["na", "emea", None], n_items)})
    return reps, items


@pytest.mark.parametrize("seed", range(5))
def test_allocation_equals_the_integer_program_optimum(seed):
    reps, items = _instance(seed)
    a = allocate(reps, items)
    V = np.maximum(value_matrix(reps, items), 0)
    n, m = V.shape
    A_item = np.kron(np.eye(n), np.ones(m))
    A_rep = np.kron(np.ones(n), np.eye(m))
    res = milp(-V.ravel(), integrality=np.ones(n * m), bounds=Bounds(0, 1),
               constraints=[LinearConstraint(A_item, 0, 1), LinearConstraint(A_rep, 0, reps["capacity"].to_numpy())])
    assert a.total_value == pytest.approx(-res.fun, rel=1e-9)
    counts = a.assignments["owner_id"].value_counts()
    for _, r in reps.iterrows():
        assert counts.get(r["owner_id"], 0) <= r["capacity"]
    assert a.total_value >= round_robin(reps, items).total_value
    assert a.total_value >= own_by_score(reps, items).total_value


def test_region_constraint_and_order():
    reps = pd.DataFrame({"owner_id": ["a", "b"], "capacity": [2, 2], "region": ["na", "emea"]})
    items = pd.DataFrame({"item_id": ["x", "y", "z"], "expected_value": [10.0, 30.0, 20.0], "region": ["emea", "emea", "na"]})
    a = allocate(reps, items).assignments
    assert a.set_index("item_id")["owner_id"].to_dict() == {"x": "b", "y": "b", "z": "a"}
    assert a[a["owner_id"] == "b"]["item_id"].tolist() == ["y", "x"]
    assert all("region emea matches" in w for w in a[a["owner_id"] == "b"]["why"])


@pytest.mark.parametrize(("reps", "items", "path"), [
    ({"owner_id": ["a"], "capacity": [-1]}, {"item_id": ["x"], "expected_value": [1.0]}, "reps[0].capacity"),
    ({"owner_id": ["a"], "capacity": [1]}, {"item_id": ["x"], "expected_value": [1.0], "owner_id": ["ghost"]}, "items[0].owner_id"),
    ({"owner_id": ["a"], "capacity": [1]}, {"item_id": ["x"], "expected_value": [-5.0]}, "items[0].expected_value"),
    ({"owner_id": ["a"], "capacity": [1]}, {"item_id": ["x", "y"], "expected_value": [1.0, np.inf]}, "items[1].expected_value"),
    ({"owner_id": ["a"], "capacity": [1]}, {"item_id": ["x"], "expected_value": [np.nan]}, "items[0].expected_value"),
    ({"owner_id": ["a", "b"], "capacity": [1, 1], "rep_factor": [1.0, np.inf]}, {"item_id": ["x"], "expected_value": [1.0]},
     "reps[1].rep_factor"),
])
def test_invalid_input_names_the_field(reps, items, path):
    with pytest.raises(AllocationError) as e:
        allocate(pd.DataFrame(reps), pd.DataFrame(items))
    assert e.value.path == path


def test_missing_region_is_no_constraint():
    reps = pd.DataFrame([{"owner_id": "a", "capacity": 1, "region": None}, {"owner_id": "b", "capacity": 1, "region": "emea"}])
    items = pd.DataFrame([{"item_id": "x", "expected_value": 5.0, "region": None}, {"item_id": "y", "expected_value": 9.0, "region": "emea"}])
    assert allocate(reps, items).total_value == 14.0


def test_a_problem_over_the_cell_limit_is_refused_naming_it_before_any_matrix():
    reps = pd.DataFrame({"owner_id": ["a", "b"], "capacity": [300, 300]})
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(500)], "expected_value": 1.0})
    with pytest.raises(AllocationError) as e:
        allocate(reps, items, max_cells=100_000)  # 500 items x 600 slots = 300,000 cells
    assert e.value.path == "items" and "300,000 cells" in e.value.reason and "100,000" in e.value.reason
    assert allocate(reps, items, max_cells=300_000).total_value == 500.0
    many_reps = pd.DataFrame({"owner_id": [f"r{j}" for j in range(400)], "capacity": 0})
    with pytest.raises(AllocationError):  # reps without slots still widen the value matrix
        allocate(many_reps, items, max_cells=100_000)


@pytest.mark.parametrize("seed", range(3))
def test_region_and_team_clashes_equal_a_naive_loop(seed):
    reps, items = _instance(seed, n_items=40, n_reps=7)
    rng = np.random.default_rng(seed)
    reps["team"] = rng.choice(["a", "b", None], len(reps))
    items["team"] = rng.choice(["a", "b", "c", None], len(items))
    V = value_matrix(reps, items)
    for i, item in items.iterrows():
        for j, rep in reps.iterrows():
            clash = any(isinstance(item[c], str) and isinstance(rep[c], str) and item[c] != rep[c]
                        for c in ("region", "team"))
            want = -1e18 if clash else item["expected_value"] * rep["rep_factor"]
            assert V[i, j] == pytest.approx(want), (i, j)
