"""Differentially private training, opt-in (`train.privacy`): Opacus DP-SGD inside a Lightning fit.

    bigdeep train cnn ... with train.privacy.enabled: true in params.yaml

`private(job, settings)` turns a job into its DP version before anything is logged:

- the budget is planned first (`plan`, pure): delta (null: 1 / (10 n_train); it must be below
  1 / n_train), the sample rate (1 / batches per epoch) and the noise multiplier that spends at
  most `epsilon` over the job's epochs (Opacus's `get_noise_multiplier`, RDP accountant). A
  target no noise can reach is a `PrivacyError` naming `train.privacy.epsilon`, before any run
  is opened or model registered;
- layers Opacus cannot take per-sample gradients of are swapped by `ModuleValidator.fix`
  (the RNN's nn.LSTM / nn.GRU -> opacus DPLSTM / DPGRU, same weights; the CNN has none);
- the train loader draws Poisson batches (`DPDataLoader`, each sample in each step with
  probability 1 / batches); val and test loaders are unchanged (`PoissonBatches`);
- the `DifferentialPrivacy` callback calls `PrivacyEngine.make_private_with_epsilon` on the
  LightningModule and its optimizer when the fit starts (hooks attached in place, no wrapper:
  Lightning keeps calling the module it knows), replaces the trainer's optimizer with the
  DPOptimizer (clip each sample's gradient to `max_grad_norm`, add Gaussian noise), and keeps the
  accountant's history in the checkpoint, so a resumed fit counts every step since the first.

Kept as they are under DP: augmentation (each augmented image is a function of one sample
only), channels_last (Opacus's conv grad sampler is layout-agnostic), early stopping on
val_loss (stopping early spends less than the target), the seed (sampling and noise come from
generators reseeded from (seed, epoch), so a resumed fit draws what an unbroken one would).
Turned off: the RNN's `grad_clip` (per-sample clipping replaces it). Refused: DDP (the
sampling and the accountant here are one process's) and a streamed image split (Poisson
sampling needs random access). After the fit the model is the plain network again
(`plain_network`): tested, saved and served without Opacus.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from bigdeep.config import Privacy, Settings, Trainer
from bigdeep.errors import EXIT_CONFIG, BigdeepError

ACCOUNTANT = "rdp"  # Renyi DP: seconds faster than "prv" to plan, a slightly looser bound


class PrivacyError(BigdeepError, ValueError):
    """train.privacy cannot be honoured: a budget no noise reaches, a delta too large, DDP."""

    exit_code = EXIT_CONFIG


@dataclasses.dataclass(frozen=True)
class Plan:
    """The DP-SGD settings of one fit, fixed before it starts."""

    model: str  # cnn | rnn: named in error messages
    target_epsilon: float
    delta: float
    max_grad_norm: float
    epochs: int
    n_train: int
    sample_rate: float  # 1 / batches per epoch: each sample's chance to be in a step
    noise_multiplier: float  # noise std / max_grad_norm

    def params(self) -> dict[str, Any]:
        """What the run logs as params."""
        return {
            "dp.target_epsilon": self.target_epsilon,
            "dp.delta": self.delta,
            "dp.max_grad_norm": self.max_grad_norm,
            "dp.noise_multiplier": self.noise_multiplier,
            "dp.sample_rate": self.sample_rate,
            "dp.accountant": ACCOUNTANT,
        }


def delta_for(cfg: Privacy, n_train: int) -> float:
    """`train.privacy.delta`, or 1 / (10 n_train) when null; it must be below 1 / n_train
    (a larger delta allows releasing a whole record with that probability)."""
    delta = cfg.delta if cfg.delta is not None else 1.0 / (10 * n_train)
    if not delta < 1.0 / n_train:
        raise PrivacyError(
            f"params.yaml train.privacy.delta = {delta:g} is not below 1 / {n_train} (the "
            f"number of training samples, {1 / n_train:.3g}): at that delta the guarantee "
            "allows a record to leak outright. Fix: set train.privacy.delta below "
            f"{1 / n_train:.3g}, or null for 1 / (10 x samples) = {1 / (10 * n_train):.3g}."
        )
    return delta


def plan(cfg: Privacy, model: str, epochs: int, n_train: int, batches: int) -> Plan:
    """Delta, sample rate and the noise multiplier that spends at most `cfg.epsilon` (pure)."""
    from opacus.accountants.utils import get_noise_multiplier

    delta = delta_for(cfg, n_train)
    sample_rate = 1.0 / batches
    try:
        sigma = get_noise_multiplier(
            target_epsilon=cfg.epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            epochs=epochs,
            accountant=ACCOUNTANT,
        )
    except ValueError as e:  # Opacus: "The privacy budget is too low."
        raise PrivacyError(
            f"params.yaml train.privacy.epsilon = {cfg.epsilon:g} cannot be reached by the "
            f"{model.upper()}: {epochs} epoch(s) of {batches} Poisson batches over {n_train} "
            f"samples at delta {delta:.3g} spend more than that even with the largest noise "
            f"Opacus tries ({e}). Fix: raise train.privacy.epsilon, or train fewer steps "
            f"(fewer train.{model}.epochs, a larger train.{model}.batch_size); nothing was "
            "trained or registered."
        ) from None
    return Plan(model, cfg.epsilon, delta, cfg.max_grad_norm, epochs, n_train, sample_rate, sigma)


def check_single_process(trainer: Trainer) -> None:
    """DP here is one process's: refuse a strategy or device count that means DDP."""
    devices = trainer.devices  # "auto" on a machine with several GPUs: the callback refuses
    distributed = "ddp" in trainer.strategy or "fsdp" in trainer.strategy or trainer.num_nodes > 1
    if distributed or devices not in (1, "1", "auto"):
        raise PrivacyError(
            f"params.yaml train.privacy.enabled with train.trainer.strategy "
            f"{trainer.strategy!r}, devices {devices!r} and num_nodes {trainer.num_nodes}: "
            "differentially private training runs in one process here (its Poisson sampling "
            "and privacy accountant are not distributed). Fix: set train.trainer.devices: 1, "
            "num_nodes: 1 and strategy: auto, or turn train.privacy.enabled off."
        )


def private(job, settings: Settings):
    """`job` made differentially private as `settings.train.privacy` says (the same job when off)."""
    cfg = settings.train.privacy
    if not cfg.enabled:
        return job
    check_single_process(settings.train.trainer)
    loader = job.datamodule.train_dataloader()
    if isinstance(loader.dataset, torch.utils.data.IterableDataset):
        raise PrivacyError(
            f"params.yaml train.privacy.enabled: the {job.name.upper()}'s train split is "
            "streamed from disk (larger than train.trainer.memory_mb), and Poisson sampling "
            "needs every sample at random. Fix: raise train.trainer.memory_mb so the split is "
            "held in memory, or turn train.privacy.enabled off."
        )
    budget = plan(cfg, job.name, job.epochs, len(loader.dataset), len(loader))
    fix_layers(job.model)
    sampling = torch.Generator()
    callback = DifferentialPrivacy(budget, sampling, settings.seed)
    return dataclasses.replace(
        job,
        datamodule=PoissonBatches(job.datamodule, sampling),
        params={**job.params, **budget.params()},
        privacy=callback,
    )


def fix_layers(model: pl.LightningModule) -> None:
    """Swap what Opacus cannot take per-sample gradients of (nn.LSTM/GRU -> DPLSTM/DPGRU)."""
    from opacus.validators import ModuleValidator

    model.net = ModuleValidator.fix(model.net)
    ModuleValidator.validate(model.net, strict=True)


def plain_network(module: nn.Module) -> nn.Module:
    """`module` with Opacus's DPLSTM / DPGRU turned back into nn.LSTM / nn.GRU (same weights),
    so the exported model needs no Opacus; a module without them is returned as it is."""
    from opacus.layers import DPGRU, DPLSTM

    for name, child in module.named_children():
        if isinstance(child, DPLSTM | DPGRU):
            cell = nn.LSTM if isinstance(child, DPLSTM) else nn.GRU
            plain = cell(
                input_size=child.input_size,
                hidden_size=child.hidden_size,
                num_layers=child.num_layers,
                bias=child.bias,
                batch_first=child.batch_first,
                dropout=child.dropout,
                bidirectional=child.bidirectional,
            )
            plain.load_state_dict(child.state_dict())  # DP layers keep nn.LSTM's names
            setattr(module, name, plain.to(next(child.parameters()).device).eval())
        else:
            plain_network(child)
    return module


class PoissonBatches(pl.LightningDataModule):
    """A set-up data module whose train loader draws Poisson batches (`DPDataLoader`) from
    `sampling`; everything else (val/test loaders, eval_dataloader, split_frame, ...) is the
    wrapped module's."""

    def __init__(self, datamodule: pl.LightningDataModule, sampling: torch.Generator) -> None:
        super().__init__()
        self.datamodule, self.sampling = datamodule, sampling

    def __getattr__(self, name: str) -> Any:  # only for what this class does not have
        inner = self.__dict__.get("datamodule")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def setup(self, stage: str | None = None) -> None:
        self.datamodule.setup(stage)

    def train_dataloader(self):
        from opacus.data_loader import DPDataLoader

        return DPDataLoader.from_data_loader(
            self.datamodule.train_dataloader(), generator=self.sampling
        )

    def val_dataloader(self):
        return self.datamodule.val_dataloader()

    def test_dataloader(self):
        return self.datamodule.test_dataloader()

    def predict_dataloader(self):
        return self.datamodule.predict_dataloader()


class DifferentialPrivacy(pl.Callback):
    """Attaches Opacus when the fit starts; the accountant's history travels in checkpoints.

    `epsilon` is the budget spent so far (`accountant.get_epsilon(delta)`); `record` what the
    run logs and shows.
    """

    def __init__(self, budget: Plan, sampling: torch.Generator, seed: int) -> None:
        self.plan, self.sampling, self.seed = budget, sampling, seed
        self.noise = torch.Generator()
        self.engine = None
        self._hooks = None
        self._restored: list[tuple] | None = None  # the accountant history of a checkpoint

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size > 1:
            raise PrivacyError(
                f"train.privacy.enabled with {trainer.world_size} processes: differentially "
                "private training runs in one process here. Fix: train.trainer.devices: 1."
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from opacus import PrivacyEngine

        if trainer.train_dataloader is None:
            trainer.fit_loop.setup_data()
        loader = trainer.train_dataloader  # Poisson already: make_private must not re-wrap it
        self.engine = PrivacyEngine(accountant=ACCOUNTANT)
        self._hooks, optimizer, _ = self.engine.make_private_with_epsilon(
            module=pl_module,
            optimizer=trainer.optimizers[0],
            data_loader=loader,
            target_epsilon=self.plan.target_epsilon,
            target_delta=self.plan.delta,
            epochs=self.plan.epochs,
            max_grad_norm=self.plan.max_grad_norm,
            poisson_sampling=False,
            noise_generator=self.noise,
            wrap_model=False,  # hooks on the LightningModule's layers; Lightning calls it as is
        )
        if not math.isclose(optimizer.noise_multiplier, self.plan.noise_multiplier):
            raise RuntimeError(  # the plan logged and the noise applied must be the same
                f"noise multiplier {optimizer.noise_multiplier} != planned "
                f"{self.plan.noise_multiplier}"
            )
        trainer.strategy.optimizers = [optimizer]  # the LR schedule keeps the inner optimizer
        if self._restored is not None:
            self.engine.accountant.history = list(self._restored)
        elif trainer.ckpt_path:
            raise PrivacyError(
                f"{trainer.ckpt_path}: the checkpoint has no privacy accounting, so the epsilon "
                "already spent is unknown. Fix: train again from the start (`--no-resume`)."
            )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # before the epoch's loader iterates: the same draws whether or not the fit was resumed
        epoch = trainer.current_epoch
        self.sampling.manual_seed(_stream_seed(self.seed, "sampling", epoch))
        self.noise.manual_seed(_stream_seed(self.seed, "noise", epoch))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._hooks is not None:
            self._hooks.cleanup()
            self._hooks = None
        # tested, saved (model.pt) and served as the plain network: no Opacus hooks or layers
        pl_module.net = plain_network(pl_module.net)

    def state_dict(self) -> dict[str, Any]:
        history = self.engine.accountant.history if self.engine else self._restored or []
        return {
            "history": [list(step) for step in history],  # (noise, sample rate, steps)
            "noise_multiplier": self.plan.noise_multiplier,
            "sample_rate": self.plan.sample_rate,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = [tuple(step) for step in state_dict["history"]]

    @property
    def epsilon(self) -> float:
        """The epsilon spent by every step so far (0 before the first)."""
        if self.engine is None or not self.engine.accountant.history:
            return 0.0
        return float(self.engine.get_epsilon(self.plan.delta))

    def record(self) -> dict[str, float]:
        return {
            "epsilon": self.epsilon,
            "target_epsilon": self.plan.target_epsilon,
            "delta": self.plan.delta,
        }


def _stream_seed(seed: int, stream: str, epoch: int) -> int:
    digest = hashlib.sha256(f"{seed}:{stream}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
