"""High-value traits: readable segments of one to three conditions, found from the data.

A **trait** is a conjunction like ``industry = software and employees >= 500``. Traits are
mined over the *profile* of customers (firmographics, custom fields, how the account came
in), the things a team can target in prospects; deal amounts and early signals are left to
the model. The steps:

1. **Conditions**: ``column = level`` for every categorical level held by enough customers,
   ``column >= t`` and ``column < t`` for numeric columns at round-number quantiles.
2. **Search** (on the *discovery* accounts, a seeded random share): every single condition
   and every pair (one matrix product each), then triples by extending the best pairs
   (beam search). A segment's quality is the lower 95% bound of its value lift (mean value
   in the segment over the base mean, normal approximation), so a tiny segment with a lucky
   mean does not win; segments below ``min_support`` are not considered.
3. **Parsimony and non-redundancy**: a segment of k conditions must have its lower bound
   above the point lift of each of its (k-1)-condition parts (an added condition must earn
   its place); going down the ranking, a segment is skipped when ``max_overlap`` of the
   smaller one's accounts are in a better trait (the same trait at another cut-off).
4. **Checks**: each trait's lift on the *held-out* accounts with a bootstrap 95% interval,
   and its **stability**: the share of bootstrap resamples of the discovery accounts whose
   own top traits contain it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from models.explain import feature_label

__all__ = ["Condition", "Trait", "TraitMiner", "global_importance", "nice_number", "planted_match", "shared_traits",
           "trait_label"]


@dataclass(frozen=True)
class Condition:
    column: str
    op: str  # "==", ">=", "<"
    value: object

    def mask(self, frame: pd.DataFrame) -> np.ndarray:
        col = frame[self.column]
        if self.op == "==":
            return (col == self.value).to_numpy(dtype=bool)
        values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            out = values >= self.value if self.op == ">=" else values < self.value
        return out & ~np.isnan(values)

    def __str__(self) -> str:
        v = f"{self.value:g}" if isinstance(self.value, float) else str(self.value)
        op = "=" if self.op == "==" else self.op
        return f"{self.column} {op} {v}"

    def as_dict(self) -> dict[str, object]:
        return {"column": self.column, "op": self.op, "value": self.value}

    def label(self) -> str:
        """The condition in plain words: "industry is software", "company size (employees) at least 1,000"."""
        what = feature_label(self.column)
        what = what[0].lower() + what[1:] if what[:2] != what[:2].upper() else what
        if self.op == "==":
            return f"{what} is {self.value}"
        v = f"{self.value:,.0f}" if abs(float(self.value)) >= 10 else f"{self.value:g}"
        return f"{what} {'at least' if self.op == '>=' else 'under'} {v}"


@dataclass
class Trait:
    conditions: tuple[Condition, ...]
    accounts: int
    share: float
    value_mean: float
    lift: float
    lift_low: float
    lift_high: float
    high_value_rate: float
    heldout_accounts: int = 0
    heldout_lift: float = float("nan")
    heldout_low: float = float("nan")
    heldout_high: float = float("nan")
    stability: float = float("nan")
    rank: int = 0

    @property
    def name(self) -> str:
        return " and ".join(str(c) for c in self.conditions)

    @property
    def confirmed(self) -> bool:
        """The held-out accounts confirm it: the lower bound of its held-out lift is above 1."""
        return bool(self.heldout_low > 1.0)

    def as_dict(self) -> dict[str, object]:
        return {
            "rank": self.rank,
            "trait": self.name,
            "conditions": [c.as_dict() for c in self.conditions],
            "accounts": self.accounts,
            "share": self.share,
            "value_mean": self.value_mean,
            "lift": self.lift,
            "lift_low": self.lift_low,
            "lift_high": self.lift_high,
            "high_value_rate": self.high_value_rate,
            "heldout_accounts": self.heldout_accounts,
            "heldout_lift": self.heldout_lift,
            "heldout_low": self.heldout_low,
            "heldout_high": self.heldout_high,
            "stability": self.stability,
            "confirmed": self.confirmed,
        }

    def sentence(self) -> str:
        return (
            f"{self.name}: {self.accounts:,} customers ({self.share:.0%}), worth {self.lift:.1f}x the average "
            f"(held out: {self.heldout_lift:.1f}x, 95% CI {self.heldout_low:.1f}-{self.heldout_high:.1f})"
        )


def nice_number(x: float) -> float:
    """``x`` rounded to one significant digit (512 -> 500, 0.034 -> 0.03): a cut-off people say aloud."""
    if not np.isfinite(x) or x == 0:
        return float(x)
    e = 10 ** np.floor(np.log10(abs(x)))
    return float(np.round(x / e) * e)


@dataclass
class TraitMiner:
    """Mine high-value traits from customers' profiles and their customer value.

    ``fit(profile, value, high_value)`` with one row per customer; ``traits_`` is the ranked
    list (best first). Constructor arguments are plain settings (scikit-learn style).
    """

    max_conditions: int = 3
    n_traits: int = 10
    min_support: float = 0.02
    min_accounts: int = 20
    min_level_accounts: int = 20
    quantiles: Sequence[float] = (0.25, 0.5, 0.75, 0.9)
    beam_width: int = 40
    max_overlap: float = 0.6
    heldout_share: float = 0.3
    n_bootstrap: int = 50
    random_state: int = 0
    z: float = 1.96
    traits_: list[Trait] = field(default_factory=list, init=False)

    # ------------------------------------------------------------------ conditions
    def candidate_conditions(self, profile: pd.DataFrame) -> list[Condition]:
        """Every condition worth testing: categorical levels held by enough rows, numeric round cut-offs."""
        out: list[Condition] = []
        for c in profile.columns:
            col = profile[c]
            if pd.api.types.is_numeric_dtype(col):
                values = col.dropna().to_numpy(dtype=float)
                if len(values) < self.min_level_accounts:
                    continue
                cuts = sorted({nice_number(float(np.quantile(values, q))) for q in self.quantiles})
                for t in cuts:
                    if values.min() < t <= values.max():
                        out += [Condition(c, ">=", t), Condition(c, "<", t)]
            else:
                counts = col.dropna().astype("str").value_counts()
                out += [Condition(c, "==", str(level)) for level, n in counts.items() if n >= self.min_level_accounts]
        return out

    # ------------------------------------------------------------------ search
    def _quality(self, counts: np.ndarray, sums: np.ndarray, sq: np.ndarray, base: float) -> np.ndarray:
        """Lower 95% bound of the value lift of segments with these counts, sums and sums of squares."""
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = sums / counts
            var = np.maximum(sq / counts - mean**2, 0.0)
            low = (mean - self.z * np.sqrt(var / counts)) / base
        return np.where(counts >= self._min_count, low, -np.inf)

    def _search(self, M: np.ndarray, v: np.ndarray, w: np.ndarray, columns: np.ndarray) -> list[tuple[int, ...]]:
        """Segments (tuples of condition indices) ranked by quality, best first, non-redundant."""
        Mw = M * w[:, None]
        base = float((w * v).sum() / w.sum())
        seg: list[tuple[int, ...]] = []
        qual: list[float] = []
        # singles and pairs: one matrix product each
        n1 = Mw.sum(0)
        s1 = Mw.T @ v
        q1 = Mw.T @ (v**2)
        qs = self._quality(n1, s1, q1, base)
        seg += [(i,) for i in range(M.shape[1])]
        qual += list(qs)
        if self.max_conditions >= 2:
            n2 = M.T @ Mw
            s2 = M.T @ (Mw * v[:, None])
            sq2 = M.T @ (Mw * (v**2)[:, None])
            q2 = self._quality(n2, s2, sq2, base)
            same = columns[:, None] == columns[None, :]
            q2[same] = -np.inf
            iu = np.triu_indices(M.shape[1], 1)
            pair_q = q2[iu]
            ok = np.isfinite(pair_q)
            pairs = list(zip(iu[0][ok], iu[1][ok], strict=True))
            seg += [(int(a), int(b)) for a, b in pairs]
            qual += list(pair_q[ok])
            if self.max_conditions >= 3 and pairs:
                best = np.argsort(-pair_q[ok], kind="stable")[: self.beam_width]
                seen = set()
                for k in best:
                    a, b = pairs[k]
                    pm = M[:, a] & M[:, b]
                    pw = Mw * pm[:, None]
                    n3, s3, sq3 = pw.sum(0), pw.T @ v, pw.T @ (v**2)
                    q3 = self._quality(n3, s3, sq3, base)
                    q3[(columns == columns[a]) | (columns == columns[b])] = -np.inf
                    for c in np.flatnonzero(np.isfinite(q3)):
                        key = tuple(sorted((int(a), int(b), int(c))))
                        if key not in seen:
                            seen.add(key)
                            seg.append(key)
                            qual.append(float(q3[c]))
        order = np.argsort(-np.asarray(qual), kind="stable")
        lift_of = self._lifts(M, v, w, base, seg)
        chosen: list[tuple[int, ...]] = []
        masks: list[np.ndarray] = []
        for k in order:
            if not np.isfinite(qual[k]) or qual[k] <= 1.0:
                break
            # parsimony: a refinement must beat each simpler segment it refines, beyond doubt
            s = seg[k]
            if len(s) > 1 and any(qual[k] <= lift_of.get(sub, np.inf) for sub in itertools.combinations(s, len(s) - 1)):
                continue
            m = M[:, list(s)].all(1) & (w > 0)
            # non-redundancy: mostly the same accounts as a better trait (e.g. the same trait at another cut-off)
            if any((m & o).sum() / max(min(m.sum(), o.sum()), 1) >= self.max_overlap for o in masks):
                continue
            chosen.append(seg[k])
            masks.append(m)
            if len(chosen) >= self.n_traits:
                break
        return chosen

    @staticmethod
    def _lifts(M: np.ndarray, v: np.ndarray, w: np.ndarray, base: float, seg: list[tuple[int, ...]]) -> dict:
        """Point lift of every sub-segment of the multi-condition segments (for the parsimony rule)."""
        subs = {sub for s in seg if len(s) > 1 for sub in itertools.combinations(s, len(s) - 1)}
        out = {}
        for sub in subs:
            m = M[:, list(sub)].all(1) * w
            out[sub] = float((m * v).sum() / m.sum() / base) if m.sum() > 0 else np.inf
        return out

    # ------------------------------------------------------------------ fit
    def fit(self, profile: pd.DataFrame, value: np.ndarray, high_value: np.ndarray | None = None) -> TraitMiner:
        """Mine traits from ``profile`` (one row per customer) and its customer ``value``."""
        value = np.asarray(value, dtype=float)
        if len(profile) != len(value):
            raise ValueError(f"profile has {len(profile)} rows but value has {len(value)}")
        if len(value) < 2 * self.min_accounts:
            raise ValueError(f"only {len(value)} customers with a complete value: at least {2 * self.min_accounts} needed")
        hv = np.zeros(len(value)) if high_value is None else np.asarray(high_value, dtype=float)
        rng = np.random.default_rng(self.random_state)
        self.conditions_ = self.candidate_conditions(profile)
        if not self.conditions_:
            self.traits_ = []
            return self
        M = np.column_stack([c.mask(profile) for c in self.conditions_])
        columns = np.array([c.column for c in self.conditions_], dtype=object)
        heldout = rng.random(len(value)) < self.heldout_share
        disc = ~heldout
        self._min_count = max(self.min_accounts * (1 - self.heldout_share), self.min_support * disc.sum())
        found = self._search(M, value, disc.astype(float), columns)

        # stability: how often each trait is among the top traits of a bootstrap resample
        hits = np.zeros(len(found))
        idx = np.flatnonzero(disc)
        for _ in range(self.n_bootstrap):
            w = np.bincount(rng.choice(idx, size=len(idx)), minlength=len(value)).astype(float)
            boot = {tuple(s) for s in self._search(M, value, w, columns)}
            hits += [s in boot for s in found]
        stability = hits / max(self.n_bootstrap, 1)

        base_all = value.mean()
        base_ho = value[heldout].mean() if heldout.any() else np.nan
        ho_idx = np.flatnonzero(heldout)
        W = np.stack([np.bincount(rng.choice(ho_idx, size=len(ho_idx)), minlength=len(value)) for _ in range(200)]) \
            if len(ho_idx) else np.zeros((0, len(value)))
        traits = []
        for rank, s in enumerate(found, start=1):
            m = M[:, list(s)].all(1)
            n = int(m.sum())
            mean = value[m].mean()
            se = value[m].std(ddof=1) / np.sqrt(n) if n > 1 else np.inf
            t = Trait(
                conditions=tuple(self.conditions_[i] for i in s),
                accounts=n,
                share=n / len(value),
                value_mean=float(mean),
                lift=float(mean / base_all),
                lift_low=float((mean - self.z * se) / base_all),
                lift_high=float((mean + self.z * se) / base_all),
                high_value_rate=float(hv[m].mean()),
                stability=float(stability[rank - 1]),
                rank=rank,
            )
            mh = m & heldout
            t.heldout_accounts = int(mh.sum())
            if mh.sum() >= 2 and len(W):
                t.heldout_lift = float(value[mh].mean() / base_ho)
                boot = ((W * (m * value)).sum(1) / np.maximum((W * m).sum(1), 1)) / ((W @ value) / W.sum(1))
                t.heldout_low, t.heldout_high = (float(x) for x in np.quantile(boot, [0.025, 0.975]))
            traits.append(t)
        self.traits_ = traits
        return self

    def table(self) -> pd.DataFrame:
        """The ranked traits as a table (one row per trait)."""
        rows = [t.as_dict() for t in self.traits_]
        frame = pd.DataFrame(rows)
        if not frame.empty:
            frame = frame.drop(columns=["conditions"])
        return frame


def global_importance(values: np.ndarray, X: pd.DataFrame, feature_names: Sequence[str]) -> pd.DataFrame:
    """Global SHAP importance with direction, from per-row contributions ``values`` (any unit).

    ``importance`` is the mean |contribution|. ``direction`` says how the feature moves the
    prediction: for a numeric feature the sign of the rank correlation between its value and
    its contribution ("higher raises" / "higher lowers"); for a categorical one, the level
    with the highest mean contribution and the one with the lowest.
    """
    rows = []
    for j, name in enumerate(feature_names):
        contrib = values[:, j]
        col = X[name]
        if pd.api.types.is_numeric_dtype(col):
            ok = col.notna().to_numpy()
            if ok.sum() > 2 and np.std(contrib[ok]) > 0 and col[ok].nunique() > 1:
                rho = pd.Series(col[ok].to_numpy(dtype=float)).rank().corr(pd.Series(contrib[ok]).rank())
            else:
                rho = 0.0
            direction = "higher raises" if rho > 0.1 else "higher lowers" if rho < -0.1 else "mixed"
            detail = f"rank correlation {rho:+.2f}"
        else:
            means = pd.Series(contrib).groupby(col.astype("str").where(col.notna()).to_numpy()).mean()
            if len(means):
                hi, lo = means.idxmax(), means.idxmin()
                direction = f"{hi} raises most, {lo} lowers most"
                detail = f"{hi}: {means[hi]:+.3f}, {lo}: {means[lo]:+.3f}"
            else:
                direction, detail = "mixed", ""
        rows.append({"feature": name, "importance": float(np.abs(contrib).mean()),
                     "mean_contribution": float(contrib.mean()), "direction": direction, "detail": detail})
    out = pd.DataFrame(rows).sort_values("importance", ascending=False, ignore_index=True)
    return out


def planted_match(trait: Trait, planted_conditions: Sequence[dict], tolerance: float = 2.0) -> str | None:
    """How a mined trait matches a planted one (``"exact"``: same columns, same categorical values,
    numeric cut-offs within ``tolerance`` x; ``"contains"``: it has all of them and more), else None."""
    def same(c: Condition, p: dict) -> bool:
        if c.column != p["column"] or c.op != p["op"]:
            return False
        if c.op == "==":
            return str(c.value) == str(p["value"])
        a, b = float(c.value), float(p["value"])
        return a > 0 and b > 0 and max(a / b, b / a) <= tolerance

    matched = [any(same(c, p) for c in trait.conditions) for p in planted_conditions]
    if not all(matched):
        return None
    return "exact" if len(trait.conditions) == len(planted_conditions) else "contains"


def trait_label(trait: dict) -> str:
    """A trait (as :meth:`Trait.as_dict` stores it) in plain words, its conditions joined by "and"."""
    return " and ".join(Condition(**c).label() for c in trait["conditions"])


def shared_traits(traits: Sequence[dict], frame: pd.DataFrame) -> list[list[dict]]:
    """Per row of ``frame`` (the profile columns traits are mined over), the confirmed traits of
    high-value customers it has (held-out lift's lower bound above 1), best ranked first. A trait
    naming a column the frame lacks is left out."""
    out: list[list[dict]] = [[] for _ in range(len(frame))]
    for t in sorted((t for t in traits if t.get("confirmed")), key=lambda t: t.get("rank", 0)):
        if not all(c["column"] in frame for c in t["conditions"]):
            continue
        mask = np.logical_and.reduce([Condition(**c).mask(frame) for c in t["conditions"]])
        for i in np.flatnonzero(mask):
            out[i].append(t)
    return out
