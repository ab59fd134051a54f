"""`bigdeep predict` as a Prefect flow: resolve the model, gate the batch, score it, write.

    bigdeep predict bigdeep-cnn@champion --input photos/ --output predictions.csv

The steps are `bigdeep.predict`'s; the flow adds a run in the Prefect UI with its state (Failed,
with the gate report, when the batch is refused) and a table artifact of what was scored.
A refused batch raises `GateFailed` (exit 3): nothing is scored and no output is written.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from bigdeep import orchestration
from bigdeep.config import load_settings
from bigdeep.predict import (
    Checked,
    Model,
    Predicted,
    check,
    clear_output,
    reports_dir,
    resolve,
    score_images,
    score_series,
    write,
)


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=lambda t, r, s: _transient(s))
def resolve_model(ref: str, tracking: str) -> Model:
    return resolve(ref, tracking)


def _transient(state) -> bool:
    """Retry the registry lookup only when the tracking server did not answer."""
    error = getattr(state, "data", None)
    error = getattr(error, "result", error)
    return isinstance(error, ConnectionError | TimeoutError)


@task
def check_input(params: str, model: Model, input_path: str, scratch: str, output: str) -> Checked:
    settings = load_settings(params)
    return check(settings, model, Path(input_path), Path(scratch), reports_dir(Path(output)))


@task
def score_and_write(params: str, model: Model, checked: Checked, output: str) -> Predicted:
    settings = load_settings(params)
    score = score_images if checked.kind == "images" else score_series
    return write(score(settings, model, checked), model, checked, Path(output))


@flow(name="bigdeep-predict", log_prints=True)
def predict_flow(ref: str, input_path: str, output: str, params: str, tracking: str) -> Predicted:
    model = resolve_model(ref, tracking)
    for path in clear_output(Path(output)):
        print(f"removed the earlier {path}: it cannot pass for this input")
    with tempfile.TemporaryDirectory(prefix="bigdeep-predict-") as scratch:
        checked = check_input(params, model, input_path, scratch, output)
        result = score_and_write(params, model, checked, output)
    orchestration.best_effort(
        "the predictions artifact",
        create_markdown_artifact,
        key="bigdeep-predict",
        markdown=f"**{model.name} v{model.version}** (run `{model.run_id}`), input md5 "
        f"`{checked.md5}`: {result.rows} prediction(s) -> `{result.output}`",
    )
    return result
