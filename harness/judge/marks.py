"""The one rule that turns a time ratio new/base and its intervals into a mark, at a threshold t
(default 10%: asv's factor 1.1). Cross-run compare, `compare --variants`/`ab` and `baselines`
all mark here; each adds only what stands in its way first (a contended run, too few pairs)
and its own words for an undecided cell.

- `slower`: the 95% interval lies above 1 and the ratio beyond 1+t (and beyond what must be
  taken out first: the runs' noise floor, a move the machine explains: `floor`, `beyond`);
- `faster`: the same below, beyond 1/(1+t);
- `unchanged`: the 90% interval lies within [1/(1+t), 1+t]: two one-sided 5% tests
  (Schuirmann's TOST, the usual equivalence test) reject a change of t either way;
- else undecided (`inconclusive`, with the reason the caller gives); `failed` where a side did
  not measure, `incomparable` where the two are not the same cell (the callers' own)."""
from __future__ import annotations

THRESHOLD = 0.10  # the default smallest change that counts
MARKS = ("slower", "faster", "unchanged", "inconclusive", "failed", "incomparable")


def bounds(threshold: float) -> tuple[float, float]:
    """(down, up): the ratios a change must pass, 1/(1+t) and 1+t."""
    return 1 / (1 + threshold), 1 + threshold


def mark(ratio: float, ci: tuple[float, float], ci90: tuple[float, float], threshold: float, *,
         floor: float = 0.0, beyond: float | None = None) -> str | None:
    """slower, faster, unchanged, or None (undecided): the module docstring's rule. `floor`: a
    noise floor the ratio must pass too; `beyond`: the ratio once what the machine explains is
    taken out (default: the ratio), which must pass the threshold as well."""
    (lo, hi), (eq_lo, eq_hi) = ci, ci90
    down, up = bounds(threshold)
    rest = ratio if beyond is None else beyond
    if lo > 1 and ratio > up and ratio > 1 + floor and rest > up:
        return "slower"
    if hi < 1 and ratio < down and ratio < 1 / (1 + floor) and rest < down:
        return "faster"
    if eq_lo >= down and eq_hi <= up:
        return "unchanged"
    return None


def shown(ratio: float, ci: tuple[float, float], threshold: float) -> bool:
    """A change beyond the threshold that the 95% interval shows (whatever else stands in its way)."""
    (lo, hi), (down, up) = ci, bounds(threshold)
    return (lo > 1 and ratio > up) or (hi < 1 and ratio < down)


def pct(x: float) -> str:
    """A share or a threshold as a whole percentage: 0.1 -> 10%."""
    return f"{100 * x:.0f}%"


def too_wide(ci90: tuple[float, float], threshold: float) -> str:
    """The reason of a cell whose 90% interval reaches beyond the threshold."""
    return f"90% interval [{ci90[0]:.3f}, {ci90[1]:.3f}] reaches beyond the threshold +-{pct(threshold)}"
