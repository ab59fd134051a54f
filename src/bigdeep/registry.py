"""Champion / challenger promotion in the MLflow registry, and lineage back to the data.

After a training run, the new model and the current `champion` are scored on the same
DVC-pinned test split. The new version is registered either way. `decide` (pure) gives it:
no alias when it does not clear the sanity floor (the CNN must beat the majority-class rate
of its test split, the RNN the naive forecast's MAE; the first model included), else
`champion` when there is none yet or it beats the champion by the margin in params.yaml,
else `challenger`. A model is registered under the name of its dataset identity
(`registered_name`), so it never competes with another identity's champion.

One explicit client does the I/O, in this order: `current_champion` (reads and scores),
`register` (a new version), `decision_for` (pure, wraps `decide`), `record` (alias, tags).

    bigdeep lineage bigdeep-cnn@champion     # run, params hash, git commit, DVC md5s, flow run
    bigdeep restore bigdeep-cnn@champion     # put that model's raw data back into data/raw/
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bigdeep.training import privacy_record

CHAMPION, CHALLENGER = "champion", "challenger"
IDENTITY_TAG = "bigdeep.data.identity"  # on the run and its model versions; `lineage` shows it


def registered_name(prefix: str, model: str, identity: str, default_identity: str) -> str:
    """<prefix>-<model> for the slot's embedded data (bigdeep-cnn, bigdeep-rnn, as always);
    <prefix>-<model>-<identity> for any other dataset identity. Pure."""
    name = f"{prefix}-{model}"
    return name if identity == default_identity else f"{name}-{identity}"


@dataclass(frozen=True)
class Floor:
    """The score a model must beat to be champion at all: a trivial baseline on its test split."""

    baseline: str  # what the baseline is, for people
    baseline_score: float
    limit: float  # the candidate must score better than this
    setting: str  # the params.yaml key that moves the limit, and its value

    @staticmethod
    def majority_class(rate: float, margin: float) -> Floor:
        """CNN: accuracy above always answering the test split's most common class."""
        return Floor(
            "majority-class rate", rate, rate + margin, f"registry.cnn_floor_margin={margin:g}"
        )

    @staticmethod
    def naive_forecast(mae: float, ratio: float) -> Floor:
        """RNN: MAE below repeating the last value seen."""
        return Floor("naive forecast MAE", mae, mae * ratio, f"registry.rnn_floor_ratio={ratio:g}")


@dataclass(frozen=True)
class Decision:
    model: str  # registered model name
    version: str
    alias: str | None  # champion | challenger | None (under the sanity floor)
    metric: str
    higher_is_better: bool
    candidate_score: float
    champion_version: str | None
    champion_score: float | None
    margin: float
    data_version: str  # the test split both were scored on (DVC md5 of the processed data)
    champion_trained_on: str | None  # the champion's own training data version, for review
    reason: str
    identity: str | None = None  # the dataset identity the model was trained on
    floor_baseline: str | None = None  # e.g. majority-class rate
    floor_score: float | None = None  # the limit the candidate had to beat
    above_floor: bool | None = None

    @property
    def summary(self) -> str:
        """One line for the train stage's output and the run's tag."""
        return f"{self.model} v{self.version} -> {self.alias or 'no alias'}: {self.reason}"


def is_better(candidate: float, champion: float, margin: float, higher_is_better: bool) -> bool:
    """True when `candidate` beats `champion` by more than `margin`. Pure."""
    return candidate > champion + margin if higher_is_better else candidate < champion - margin


def decide(
    *,
    metric: str,
    candidate_score: float,
    higher_is_better: bool,
    floor: Floor | None,
    margin: float,
    champion_version: str | None = None,
    champion_score: float | None = None,
    champion_error: str | None = None,
) -> tuple[str | None, str, bool | None]:
    """(alias, reason, above_floor) for a new model. Pure: no registry, no run.

    champion_version None: there is no champion yet. champion_error: the champion could not
    be scored on this test split (other shapes): it is replaced, if the candidate clears the floor.
    """
    sign = ">" if higher_is_better else "<"
    above = None
    if floor is not None:
        above = is_better(candidate_score, floor.limit, 0.0, higher_is_better)
        clears = (
            f"{metric} {candidate_score:.4g} {'beats' if above else 'does not beat'} the sanity "
            f"floor {floor.limit:.4g} ({floor.baseline} {floor.baseline_score:.4g}, "
            f"{floor.setting}; {sign} is better)"
        )
        if not above:
            return None, f"{clears}: never champion", False
    if champion_version is None:
        reason = "first model: no champion yet"
    elif champion_error is not None:
        reason = f"champion v{champion_version} cannot be scored on this data: {champion_error}"
    else:
        better = is_better(candidate_score, champion_score, margin, higher_is_better)
        reason = (
            f"{metric} {candidate_score:.4g} {'beats' if better else 'does not beat'} "
            f"champion v{champion_version} {champion_score:.4g} by margin {margin:g} ({sign} is better)"
        )
        if not better:
            return CHALLENGER, reason if floor is None else f"{clears}; {reason}", above
    return CHAMPION, reason if floor is None else f"{clears}; {reason}", above


@dataclass(frozen=True)
class Champion:
    """The current champion of a registered model, scored on the candidate's test split."""

    version: str
    trained_on: str | None  # its own training data version, for review
    score: float | None
    error: str | None = None  # why it could not be scored on this test split (other shapes)


def current_champion(client, name: str, score: Scorer) -> Champion | None:
    """The `champion` of `name` scored by `score`; None when there is none. Reads only."""
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None  # no such model, or no champion yet
    trained_on = client.get_run(current.run_id).data.tags.get("bigdeep.data.version")
    try:
        return Champion(
            str(current.version), trained_on, score(f"models:/{name}/{current.version}")
        )
    except Exception as e:  # noqa: BLE001 - an unscorable champion (other shapes) is replaced
        return Champion(str(current.version), trained_on, None, str(e))


def decision_for(
    *,
    name: str,
    version: str,
    metric: str,
    candidate_score: float,
    higher_is_better: bool,
    margin: float,
    champion: Champion | None,
    floor: Floor | None,
    data_version: str,
    identity: str | None,
) -> Decision:
    """`decide` for version `version` of `name`, with everything a reviewer needs. Pure."""
    alias, reason, above = decide(
        metric=metric,
        candidate_score=candidate_score,
        higher_is_better=higher_is_better,
        floor=floor,
        margin=margin,
        champion_version=None if champion is None else champion.version,
        champion_score=None if champion is None else champion.score,
        champion_error=None if champion is None else champion.error,
    )
    return Decision(
        model=name,
        version=version,
        alias=alias,
        metric=metric,
        higher_is_better=higher_is_better,
        candidate_score=candidate_score,
        champion_version=None if champion is None else champion.version,
        champion_score=None if champion is None else champion.score,
        margin=margin,
        data_version=data_version,
        champion_trained_on=None if champion is None else champion.trained_on,
        reason=reason,
        identity=identity,
        floor_baseline=None if floor is None else floor.baseline,
        floor_score=None if floor is None else floor.limit,
        above_floor=above,
    )


def register(
    client, name: str, run_id: str, model_uri: str, model_id: str | None, tags: dict[str, str]
) -> str:
    """A new version of `name` (created if need be) from the logged model; its version number."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description="bigdeep model; aliases champion / challenger"
        )
    version = client.create_model_version(
        name, source=model_uri, run_id=run_id, tags=tags, model_id=model_id
    )
    return str(version.version)


def record(client, run_id: str, decision: Decision, floor: Floor | None) -> None:
    """Set the alias decided and write the decision on the run and the model version."""
    name, version = decision.model, decision.version
    if decision.alias is not None:
        client.set_registered_model_alias(name, decision.alias, version)
    promoted = decision.alias or "no alias"
    tags = {
        "bigdeep.registry.decision": f"{name} v{version} -> {promoted}",
        "bigdeep.registry.reason": decision.reason,
    }
    if decision.above_floor is not None:
        tags["bigdeep.registry.floor"] = "passed" if decision.above_floor else "failed"
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
        client.set_model_version_tag(name, version, key, value)
    client.log_dict(run_id, asdict(decision), "registry/decision.json")
    metrics = {"registry.candidate_score": decision.candidate_score}
    if decision.champion_score is not None:
        metrics["registry.champion_score"] = decision.champion_score
    if floor is not None:
        metrics["registry.floor_baseline"] = floor.baseline_score
        metrics["registry.floor"] = floor.limit
    from mlflow.entities import Metric

    now = int(1000 * time.time())
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])


# --- scoring on the pinned test split --------------------------------------------------------


@dataclass(frozen=True)
class Scorer:
    """Model URI -> its score on one test split: the same arrays for candidate and champion.

    Both models are scored alike: the served model's output on `x`, compared with `y` by
    `metric` (accuracy for the CNN, MAE in the target's units for the RNN).
    """

    x: np.ndarray  # float32 model input, the whole test split (N, ...)
    y: np.ndarray  # what the model should answer (N, ...)
    metric: Callable[[np.ndarray, np.ndarray], float]  # (model output, y) -> score

    def __call__(self, model_uri: str) -> float:
        import mlflow

        pred = np.asarray(mlflow.pyfunc.load_model(model_uri).predict(self.x))
        return float(self.metric(pred, self.y))


# --- lineage ---------------------------------------------------------------------------------


def resolve(client, ref: str):
    """`name@alias` or `name@3` or `name/3` -> (model version, run)."""
    from mlflow.exceptions import MlflowException

    from bigdeep.errors import BigdeepError, UsageError

    name, sep, which = ref.replace("/", "@").partition("@")
    if not sep or not name or not which:
        raise UsageError(f"{ref!r}: expected <model>@<alias|version>, e.g. bigdeep-cnn@champion")
    try:
        mv = (
            client.get_model_version(name, which)
            if which.isdigit()
            else client.get_model_version_by_alias(name, which)
        )
    except MlflowException as e:
        if "not found" not in str(e) and e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise BigdeepError(_not_found(client, name, which)) from e
    return mv, client.get_run(mv.run_id)


def _not_found(client, name: str, which: str) -> str:
    """What a model reference that names nothing should have said, with what does exist."""
    from mlflow.exceptions import MlflowException

    try:
        versions = sorted(
            client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)
        )
    except MlflowException:
        versions = []
    if not versions:
        names = sorted(m.name for m in client.search_registered_models())
        return (
            f"no registered model named {name!r} in this store (registered: "
            f"{', '.join(names) or 'none'}); the name is bigdeep-<model>[-<dataset identity>], "
            "as printed by `bigdeep run` on its registry line"
        )
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    listed = ", ".join(
        f"v{v.version} ({', '.join(sorted(aliases.get(str(v.version), []))) or 'no alias'})"
        for v in versions
    )
    if which.isdigit():
        return f"{name} has no version {which} (it has {listed}): use one of those, e.g. {name}@{versions[-1].version}"
    return (
        f"{name} has no version with the alias {which!r} (it has {listed}). A model becomes "
        f"champion only when it beats the sanity floor and the current champion (the run's "
        f"registry line says why not): name a version instead, e.g. {name}@{versions[-1].version}"
    )


def lineage(client, ref: str) -> dict:
    mv, run = resolve(client, ref)
    tags = run.data.tags
    return {
        "model": f"{mv.name} v{mv.version}",
        "aliases": list(mv.aliases),
        "run_id": run.info.run_id,
        "git_commit": tags.get("bigdeep.git.commit"),
        "git_dirty": {"true": True, "false": False}.get(tags.get("bigdeep.git.dirty", "")),
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
        "privacy": privacy_record.text(privacy_record.from_tags(tags)),  # e.g. ε=2.97 (...) | off
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


class RestoreError(RuntimeError):
    """No intact copy of a data version's object in the cache or any local remote."""


@dataclass
class Restored:
    dest: Path
    # one line per object that was corrupt in a store and read from a later one instead
    fallbacks: list[str] = field(default_factory=list)
    repaired: int = 0  # corrupt objects of `repair` rewritten from the intact copy


def _intact_object(stores: list[Path], md5: str, what: str) -> tuple[Path, list[Path]]:
    """The first store's object whose bytes hash to `md5`, and the stores holding a corrupt one.

    DVC names every object (files and `.dir` manifests alike) by the md5 of its bytes.
    """
    corrupt = []
    for store in stores:
        obj = _object_path(store, md5)
        if not obj.exists():
            continue
        if hashlib.md5(obj.read_bytes()).hexdigest() == md5.removesuffix(".dir"):
            return obj, corrupt
        corrupt.append(store)
    if not corrupt:
        raise FileNotFoundError(
            f"{what} is in none of {', '.join(map(str, stores))}: run `dvc pull` or push it first"
        )
    raise RestoreError(
        f"{what} is corrupt in {', '.join(map(str, corrupt))} and in no other store "
        f"({', '.join(map(str, stores))}): no intact copy left here; push it from a machine "
        "that has it (`dvc push`) and run `bigdeep restore` again"
    )


def restore_dir(
    md5: str,
    dest: Path,
    stores: list[Path],
    repair: Path | None = None,
    refetch: Callable[[str], str | None] | None = None,
) -> Restored:
    """Rebuild the directory whose DVC md5 is `md5` at `dest` from the stores, in order.

    `stores` are DVC caches or local remotes (same layout). Every object is checked against
    its md5 as it is read: a corrupt one is taken from the next store holding an intact copy
    (e.g. the remote, when the cache is damaged) and, when it lay in the store `repair`
    (the workspace cache), rewritten there. An object corrupt in every store is read again
    into `repair` by `refetch(object md5)` (an object-store remote: `bigdeep.remote.refetch`,
    which names where it read it, or returns None). The result is verified against `md5`
    before it replaces `dest`, so a partial or wrong restore never lands.
    """
    restored = Restored(dest)

    def fetch(obj_md5: str, what: str) -> Path:
        try:
            obj, corrupt = _intact_object(stores, obj_md5, what)
        except RestoreError:
            where = refetch(obj_md5) if refetch is not None and repair is not None else None
            if where is None:
                raise
            obj, _ = _intact_object([repair], obj_md5, what)  # raises if it came back corrupt
            restored.fallbacks.append(f"{what} is corrupt in {repair}: read it again from {where}")
            restored.repaired += 1
            return obj
        for bad in corrupt:
            restored.fallbacks.append(f"{what} is corrupt in {bad}: read it from {obj.parents[3]}")
            if repair is not None and bad == repair:
                fixed = _object_path(bad, obj_md5)
                tmp = fixed.with_name(fixed.name + ".repair.tmp")
                shutil.copyfile(obj, tmp)
                tmp.replace(fixed)  # atomic: the cache never holds a half-written object
                restored.repaired += 1
        return obj

    manifest = fetch(md5, f"data version {md5}")  # the .dir object lists (relpath, md5)
    tmp = dest.with_name(dest.name + ".restore.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for entry in json.loads(manifest.read_text()):
            obj = fetch(entry["md5"], f"{entry['relpath']} ({entry['md5']}) of {md5}")
            target = tmp / entry["relpath"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(obj, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    got = dvc_dir_md5(tmp)
    if got != md5:
        shutil.rmtree(tmp)
        raise RestoreError(f"restored data hashes to {got}, expected {md5}: nothing was replaced")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return restored
