"""Whether `bigdeep run` has anything to do, found before Prefect starts (no Prefect here).

    summaries = current(project, datasets)   # the flow's summary for unchanged work, or None
    report_if_current(project, datasets)     # `bigdeep run`: print it, or False: run the flow

A project is up to date for the datasets asked for when
- each source's fingerprint is what data/sources/<dataset>.json holds (the flow's scan would
  leave the file as it is: `write_fingerprint` decides, on a copy),
- `dvc status` finds each of their stages up to date (deps, params, command and outs as
  dvc.lock records them; asked in-process, which is seconds faster than `python -m dvc`), and
- the last run left a passed quality report, the model's metrics and its run record.
Then nothing would run: the summary is read from those files. Anything else (a new source, a
stale stage, a failed gate, an error in the check itself) returns None and the flow runs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from bigdeep import orchestration
from bigdeep.config import MODELS, dvc_stages, stage_files
from flows.summary import DatasetSummary


def stage_names(project: Path) -> set[str]:
    """Every stage in dvc.yaml, a foreach stage as one name per item (`ingest@images`)."""
    names = set()
    for name, body in dvc_stages(project).items():
        items = body.get("foreach") if isinstance(body, dict) else None
        names |= {f"{name}@{item}" for item in items} if isinstance(items, list) else {name}
    return names


def dataset_stages(dataset: str) -> list[tuple[str, str]]:
    """(DVC stage, summary key) of one dataset, in the order the flow runs them."""
    model = MODELS[dataset]
    return [
        (f"ingest@{dataset}", "ingest"),
        (f"validate@{dataset}", "validate"),
        (f"prepare@{dataset}", "prepare"),
        (f"train_{model}", f"train_{model}"),
    ]


def dvc_changes(project: Path) -> dict | None:
    """`dvc status` as {stage: what changed} ({} when all is up to date); None when DVC fails
    (a busy lock, a broken dvc.yaml) or names something that is no stage of dvc.yaml (a .dvc
    file): the caller then leaves the decision to `dvc repro`.

    DVC names a stage relative to the working directory (`../project/dvc.yaml:train_cnn` when
    it is elsewhere): the name is what follows the colon.
    """
    from dvc.repo import Repo

    try:
        with Repo(str(project)) as repo:
            found = repo.status()
        changes = {key.rsplit(":", 1)[-1]: what for key, what in found.items()}
        if not set(changes) <= stage_names(project):
            changes = None
    except Exception:  # noqa: BLE001 - `dvc repro` reports the problem itself
        changes = None
    orchestration.mark("dvc status (in-process)")
    return changes


def source_changed(project: Path, dataset: str, source: str) -> bool:
    """Whether the flow's scan would rewrite data/sources/<dataset>.json (a new fingerprint)."""
    from bigdeep.data.sources import write_fingerprint

    recorded = project / stage_files(project, dataset).fingerprint
    if not recorded.is_file():
        return True
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / recorded.name
        shutil.copyfile(recorded, copy)
        return write_fingerprint(source, copy, root=project)


def current(project: Path, datasets: list[str] | None = None) -> list[DatasetSummary] | None:
    """The summaries of an up-to-date project (every stage "skipped"); None when anything
    would run or cannot be read."""
    from bigdeep.config import load_settings

    datasets = datasets or list(MODELS)
    try:
        data = load_settings(project / "params.yaml").data
        if any(source_changed(project, d, getattr(data, d).source) for d in datasets):
            return None
    except Exception:  # noqa: BLE001 - the flow's scan names what is wrong with the source
        return None
    orchestration.mark("sources fingerprinted: unchanged")
    changes = dvc_changes(project)
    wanted = {stage for d in datasets for stage, _ in dataset_stages(d)}
    if changes is None or wanted & set(changes):
        return None
    summaries = []
    for dataset in datasets:
        s = DatasetSummary(dataset, stages={key: "skipped" for _, key in dataset_stages(dataset)})
        try:
            s.take_report(json.loads((project / stage_files(project, dataset).report).read_text()))
            if not s.gate_passed:  # a failed gate is reported by the flow, with its paragraph
                return None
            s.take_model(project)
        except (OSError, ValueError, KeyError):
            return None
        summaries.append(s)
    orchestration.mark("reports, metrics and run records read")
    return summaries


def report_if_current(project: Path, datasets: list[str] | None = None) -> bool:
    """When nothing would run, print the flow's summary for unchanged work and say that no
    flow run was needed; False when the flow must run."""
    from flows.summary import summary_text

    summaries = current(project, datasets)
    if summaries is None:
        return False
    print(summary_text(str(project), summaries))
    print(
        "bigdeep run: up to date (sources unchanged, every stage current in dvc.lock): "
        "no flow run was needed, Prefect was not started",
        flush=True,
    )
    return True
