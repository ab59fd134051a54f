"""Champion / challenger promotion in the MLflow registry, and lineage back to the data.

After a training run, the new model and the current `champion` are scored on the same
DVC-pinned test split. The new version is registered either way; it takes the alias
`champion` only when it beats the champion by the margin in params.yaml, otherwise it is
the `challenger`. The first model becomes champion.

    bigdeep lineage bigdeep-cnn@champion     # run, params hash, git commit, DVC md5s, flow run
    bigdeep restore bigdeep-cnn@champion     # put that model's raw data back into data/raw/
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class Decision:
    model: str  # registered model name
    version: str
    alias: str  # champion | challenger
    metric: str
    higher_is_better: bool
    candidate_score: float
    champion_version: str | None
    champion_score: float | None
    margin: float
    data_version: str  # the test split both were scored on (DVC md5 of the processed data)
    champion_trained_on: str | None  # the champion's own training data version, for review
    reason: str


def is_better(candidate: float, champion: float, margin: float, higher_is_better: bool) -> bool:
    """True when `candidate` beats `champion` by more than `margin`. Pure."""
    return candidate > champion + margin if higher_is_better else candidate < champion - margin


def register_and_promote(
    *,
    client,
    name: str,
    run_id: str,
    model_uri: str,
    score: Callable[[str], float],
    metric: str,
    higher_is_better: bool,
    margin: float,
    data_version: str,
    tags: dict[str, str],
) -> Decision:
    """Register `model_uri` under `name` and give it `champion` or `challenger`."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description="bigdeep model; aliases champion / challenger"
        )
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        current = None

    candidate_score = score(model_uri)
    version = mlflow.register_model(model_uri, name, tags=tags).version
    champion_version, champion_score, champion_data = None, None, None
    if current is None:
        alias, reason = CHAMPION, "first model: no champion yet"
    else:
        champion_version = str(current.version)
        champion_data = client.get_run(current.run_id).data.tags.get("bigdeep.data.version")
        try:
            champion_score = score(f"models:/{name}/{current.version}")
        except Exception as e:  # noqa: BLE001 - an unscorable champion (other shapes) is replaced
            alias, reason = (
                CHAMPION,
                f"champion v{current.version} cannot be scored on this data: {e}",
            )
        else:
            better = is_better(candidate_score, champion_score, margin, higher_is_better)
            alias = CHAMPION if better else CHALLENGER
            sign = ">" if higher_is_better else "<"
            reason = (
                f"{metric} {candidate_score:.4g} {'beats' if better else 'does not beat'} "
                f"champion v{current.version} {champion_score:.4g} by margin {margin:g} ({sign} is better)"
            )
    client.set_registered_model_alias(name, alias, version)
    decision = Decision(
        model=name,
        version=str(version),
        alias=alias,
        metric=metric,
        higher_is_better=higher_is_better,
        candidate_score=candidate_score,
        champion_version=champion_version,
        champion_score=champion_score,
        margin=margin,
        data_version=data_version,
        champion_trained_on=champion_data,
        reason=reason,
    )
    client.set_tag(run_id, "bigdeep.registry.decision", f"{name} v{version} -> {alias}")
    mlflow.log_dict(asdict(decision), "registry/decision.json")
    metrics = {"registry.candidate_score": candidate_score}
    if champion_score is not None:
        metrics["registry.champion_score"] = champion_score
    mlflow.log_metrics(metrics)
    return decision


# --- scoring on the pinned test split --------------------------------------------------------


def image_accuracy_scorer(data_dir: Path) -> Callable[[str], float]:
    """Accuracy on the test split in `data_dir`, read when a model is first scored."""
    cache: dict[str, np.ndarray] = {}

    def score(model_uri: str) -> float:
        import mlflow

        if not cache:
            with np.load(Path(data_dir) / "test.npz") as test:
                x = test["x"]  # (N, H, W) grey or (N, H, W, C) colour -> (N, C, H, W)
                x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
                cache["x"] = x.astype(np.float32) / 255.0
                cache["y"] = test["y"]
        probs = np.asarray(mlflow.pyfunc.load_model(model_uri).predict(cache["x"]))
        return float((probs.argmax(axis=1) == cache["y"]).mean())

    return score


def series_mae_scorer(dm) -> Callable[[str], float]:
    """MAE in the target's units on the test windows of a set-up SeriesDataModule."""
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in dm.eval_dataloader("test")), strict=True)
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys)

    def score(model_uri: str) -> float:
        import mlflow

        pred = np.asarray(mlflow.pyfunc.load_model(model_uri).predict(x))
        return float(np.mean(np.abs(dm.inverse_target(pred) - dm.inverse_target(y))))

    return score


# --- lineage ---------------------------------------------------------------------------------


def resolve(client, ref: str):
    """`name@alias` or `name@3` or `name/3` -> (model version, run)."""
    name, sep, which = ref.replace("/", "@").partition("@")
    if not sep or not which:
        raise ValueError(f"{ref!r}: expected <model>@<alias|version>, e.g. bigdeep-cnn@champion")
    mv = (
        client.get_model_version(name, which)
        if which.isdigit()
        else client.get_model_version_by_alias(name, which)
    )
    return mv, client.get_run(mv.run_id)


def lineage(client, ref: str) -> dict:
    mv, run = resolve(client, ref)
    tags = run.data.tags
    return {
        "model": f"{mv.name} v{mv.version}",
        "aliases": list(mv.aliases),
        "run_id": run.info.run_id,
        "git_commit": tags.get("bigdeep.git.commit"),
        "git_dirty": tags.get("bigdeep.git.dirty"),
        "params_hash": tags.get("bigdeep.params_hash"),
        "data": {
            k.removeprefix("bigdeep.data."): v
            for k, v in tags.items()
            if k.startswith("bigdeep.data.")
        },
        "prefect_flow_run_id": tags.get("bigdeep.prefect_flow_run_id"),
        "dvc_experiment": tags.get("bigdeep.dvc_experiment"),
        "quality_report": [a.path for a in client.list_artifacts(run.info.run_id, "quality")],
        "metrics": {k: v for k, v in run.data.metrics.items() if k.startswith("test_")},
    }


def params_hash(settings_dump: dict) -> str:
    return hashlib.sha256(
        json.dumps(settings_dump, sort_keys=True, default=str).encode()
    ).hexdigest()[:16]


# --- restore: bring back the exact data of a model from the DVC cache or remote ------------


def _object_path(store: Path, md5: str) -> Path:
    return store / "files" / "md5" / md5[:2] / md5[2:]


def dvc_dir_md5(folder: Path) -> str:
    """DVC's md5 of a directory: md5 of its sorted (relpath, md5) list, as dvc-data writes it."""
    entries = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        entries.append(
            {
                "md5": hashlib.md5(path.read_bytes()).hexdigest(),
                "relpath": path.relative_to(folder).as_posix(),
            }
        )
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def restore_dir(md5: str, dest: Path, stores: list[Path]) -> Path:
    """Rebuild the directory whose DVC md5 is `md5` at `dest` from the first store holding it.

    `stores` are DVC caches or local remotes (same layout). The result is verified against
    `md5` before it replaces `dest`, so a partial or wrong restore never lands.
    """
    for store in stores:
        manifest = _object_path(store, md5)  # the .dir object lists (relpath, md5) entries
        if manifest.exists():
            break
    else:
        raise FileNotFoundError(
            f"data version {md5} is in none of {', '.join(map(str, stores))}: run `dvc pull` or push it first"
        )
    tmp = dest.with_name(dest.name + ".restore.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for entry in json.loads(manifest.read_text()):
        obj = next((p for s in stores if (p := _object_path(s, entry["md5"])).exists()), None)
        if obj is None:
            raise FileNotFoundError(
                f"{entry['relpath']} ({entry['md5']}) of {md5} is missing from the cache"
            )
        target = tmp / entry["relpath"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(obj, target)
    got = dvc_dir_md5(tmp)
    if got != md5:
        shutil.rmtree(tmp)
        raise RuntimeError(f"restored data hashes to {got}, expected {md5}: cache is corrupt")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest
