"""Stage `validate`: the quality gate between raw data and everything downstream.

    bigdeep validate images --raw data/raw/images --report reports/quality/images.json --quarantine data/quarantine/images

Images are profiled into a table (one row per image) and validated with Great Expectations;
a series is validated as it is, with columns derived from its whole timeline. Both stream the
raw shards with bounded memory. Writes, per dataset:

    reports/quality/<name>.json        the report (a DVC metric): per-V counts, drift, quarantine
    reports/quality/docs/<name>.html   Great Expectations Data Docs, readable offline
    data/quarantine/<name>/            reasons.parquet + copies of the quarantined records
    data/reference/<name>/<identity>.json
                                       the profile drift and volume drop are measured against;
                                       replaced only when the gate passes (the last accepted
                                       version of that dataset identity, config.dataset_identity)

History belongs to the identity, not to the slot: a slot pointed at another source starts a
new history (its first accepted version is its baseline, and the report says so), and a
slot pointed back finds its own history where it left it.

The raw data is never modified. The CLI exits 3 when the gate fails, so `dvc repro` and the
flow stop before anything is trained.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bigdeep.compute import open_executor
from bigdeep.config import Settings, stage_option
from bigdeep.errors import UsageError
from bigdeep.quality.docs import write_docs
from bigdeep.quality.drift import load_reference, write_reference
from bigdeep.quality.gate import (
    GateResult,
    gate_images,
    gate_series,
    write_quarantine,
    write_report,
)


def default_references(dataset: str) -> Path:
    """The folder dvc.yaml's validate stage gives `--reference` (data/reference/<dataset>)."""
    return Path(stage_option("validate", "--reference", dataset))


def reference_path(references_dir: Path, identity: str) -> Path:
    """The accepted reference profile of one dataset identity, in its slot's folder."""
    if references_dir.suffix == ".json" or references_dir.is_file():
        raise UsageError(
            f"--reference {references_dir}: expected the folder of reference profiles "
            f"(one <identity>.json each, e.g. data/reference/images), not a file"
        )
    return references_dir / f"{identity}.json"


def validate(
    dataset: str,
    settings: Settings,
    raw_dir: Path,
    report_path: Path,
    quarantine_dir: Path,
    references_dir: Path | None = None,
    *,
    now: pd.Timestamp | None = None,
) -> GateResult:
    """Run the gate on `raw_dir` against the reference of the dataset's identity, in
    references_dir (default: dvc.yaml's, data/reference/<dataset>, relative to the working
    directory, the project root under DVC)."""
    if report_path.name != f"{dataset}.json":
        raise ValueError(f"--report must be <dir>/{dataset}.json, got {report_path}")
    identity = getattr(settings.data, dataset).identity
    path = reference_path(references_dir or default_references(dataset), identity)
    reference = load_reference(path, identity=identity)
    with open_executor(settings.compute) as executor:  # reads and checks shards: compute.cluster
        if dataset == "images":
            result = gate_images(
                "images",
                raw_dir,
                settings.quality.images,
                reference=reference,
                conversion=settings.prepare.images,  # photos: only convertible, not yet shaped
                executor=executor,
            )
        else:
            # ingest stored the source's time column as `timestamp` (the canonical name)
            names = settings.data.series.model_copy(update={"timestamp": "timestamp"})
            result = gate_series(
                "series",
                raw_dir,
                settings.quality.series,
                names,
                reference=reference,
                now=now,
                executor=executor,
            )
    write_report(result, report_path.parent)
    write_docs(result, report_path.parent / "docs")
    write_quarantine(result, raw_dir, quarantine_dir)
    if result.passed and result.profile is not None and reference.error is None:
        write_reference(result.profile, reference.path)
    return result
