"""Stage `validate`: the quality gate between raw data and everything downstream.

    bigdeep validate images --raw data/raw/images --report reports/quality/images.json --quarantine data/quarantine/images

Images are profiled into a table (one row per image) and validated with Great Expectations;
a series is validated as it is. Bad records are copied to the quarantine folder with their
reasons (the raw data is never modified); the report is a DVC metric. The CLI exits 3 when
the gate fails, so `dvc repro` and the flow stop before anything is trained.
"""

from __future__ import annotations

from pathlib import Path

from bigdeep.config import Settings
from bigdeep.quality.gate import GateResult, run_gate, write_quarantine, write_report
from bigdeep.quality.profile import profile_images, read_series


def validate(dataset: str, settings: Settings, raw_dir: Path, report_path: Path, quarantine_dir: Path) -> GateResult:
    if report_path.name != f"{dataset}.json":
        raise ValueError(f"--report must be <dir>/{dataset}.json, got {report_path}")
    if dataset == "images":
        cfg = settings.quality.images
        result = run_gate("images", profile_images(raw_dir, max_pixels=cfg.max_pixels), cfg)
    else:
        # ingest stored the source's time column as `timestamp` (the canonical name)
        names = settings.data.series.model_copy(update={"timestamp": "timestamp"})
        result = run_gate("series", read_series(raw_dir), settings.quality.series, data=names)
    write_report(result, report_path.parent)
    write_quarantine(result, raw_dir, quarantine_dir)
    return result
