"""What a differentially private run records, and the one line that shows it.

Standard library only: `bigdeep lineage` reads these tags straight from a SQLite store
(`bigdeep.store_reader`) without importing MLflow or torch, and `registry.lineage`, the run
summary (`flows/summary.py`, from models/<model>/run.json) and the training shell all share
this one reading, so the three places say the same thing.
"""

from __future__ import annotations

# On the training run; the registry copies the run's tags onto the model version it registers.
EPSILON_TAG = "bigdeep.dp_epsilon"  # the epsilon spent (accountant), as the metric dp_epsilon
TARGET_TAG = "bigdeep.dp.target_epsilon"
DELTA_TAG = "bigdeep.dp.delta"


def tags(record: dict) -> dict[str, str]:
    """A run's privacy record (`training.privacy.DifferentialPrivacy.record`) as run tags."""
    return {
        EPSILON_TAG: repr(record["epsilon"]),
        TARGET_TAG: repr(record["target_epsilon"]),
        DELTA_TAG: repr(record["delta"]),
    }


def from_tags(run_tags: dict[str, str]) -> dict | None:
    """The privacy record back from a run's (or model version's) tags; None: trained without DP."""
    if EPSILON_TAG not in run_tags:
        return None
    return {
        "epsilon": float(run_tags[EPSILON_TAG]),
        "target_epsilon": float(run_tags.get(TARGET_TAG, "nan")),
        "delta": float(run_tags.get(DELTA_TAG, "nan")),
    }


def text(record: dict | None) -> str:
    """e.g. "ε=2.97 (target 3.0, δ=2.86e-5)", or "off" for a model trained without DP."""
    if not record:
        return "off"
    return (
        f"ε={_short(record['epsilon'])} (target {record['target_epsilon']!r}, "
        f"δ={_short(record['delta'])})"
    )


def _short(x: float) -> str:
    """3 significant digits, exponents without padding: 2.97, 1e-5, 2.86e-5."""
    mantissa, e, exponent = f"{x:.3g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if e else mantissa
