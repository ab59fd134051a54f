"""ImageClassifier: the Keras seed CNN as a LightningModule.

    Conv(3x3)+ReLU -> MaxPool(2) -> Conv(3x3)+ReLU -> MaxPool(2) -> Conv(3x3)+ReLU
    -> Flatten -> Linear(dense)+ReLU -> Linear(num_classes)

'valid' padding as in Keras, so with the defaults 28 -> 26 -> 13 -> 11 -> 5 -> 3 and the
flatten size is 64*3*3. The network itself is a plain `nn.Sequential` (`self.net`), so the
exported model carries no Lightning code.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F


def conv_output_size(image_size: tuple[int, int], n_conv: int) -> tuple[int, int]:
    """(H, W) after `n_conv` 3x3 'valid' convs with a 2x2 max-pool between consecutive ones."""
    h, w = image_size
    for i in range(n_conv):
        h, w = h - 2, w - 2  # 3x3 conv, no padding
        if h < 1 or w < 1:
            raise ValueError(
                f"image_size {tuple(image_size)} is too small for {n_conv} conv layers "
                f"(feature map vanishes after conv {i + 1})"
            )
        if i < n_conv - 1:
            h, w = h // 2, w // 2  # max-pool 2, floor like Keras
    return h, w


def build_cnn(
    num_classes: int,
    in_channels: int,
    conv: Sequence[int],
    dense: int,
    image_size: tuple[int, int],
) -> nn.Sequential:
    """The plain network: float32 (B, C, H, W) -> logits (B, num_classes)."""
    if not conv:
        raise ValueError("conv must list at least one channel count, e.g. [32, 64, 64]")
    layers: list[nn.Module] = []
    prev = in_channels
    for i, channels in enumerate(conv):
        layers += [nn.Conv2d(prev, channels, kernel_size=3), nn.ReLU()]
        if i < len(conv) - 1:
            layers.append(nn.MaxPool2d(2))
        prev = channels
    h, w = conv_output_size(image_size, len(conv))
    layers += [
        nn.Flatten(),  # (B, C*h*w)
        nn.Linear(prev * h * w, dense),
        nn.ReLU(),
        nn.Linear(dense, num_classes),
    ]
    return nn.Sequential(*layers)


class EpochMeans:
    """Per-sample means of step metrics over one epoch, to log once at the epoch's end.

    Why not `self.log(..., on_epoch=True)` in every step: that call costs ~0.3-0.6 ms on CPU
    (Lightning moves its bookkeeping to the value's device on each call), 5-10% of a CNN
    step at batch 32. Here the sums stay on the device (no host sync per step) and the
    sample count on the host. Shared by the CNN and the RNN.
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}  # stage -> (n_metrics,) sum of value * n
        self._counts: dict[str, int] = {}
        self._names: dict[str, list[str]] = {}

    def update(self, stage: str, n: int, batch_means: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            sums = torch.stack(list(batch_means.values())).float() * n  # (n_metrics,)
        self._sums[stage] = self._sums[stage] + sums if stage in self._sums else sums
        self._counts[stage] = self._counts.get(stage, 0) + n
        self._names[stage] = list(batch_means)

    def pop(
        self, stage: str, reduce: Callable[[torch.Tensor], torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The epoch's means (empty if no step ran) and a fresh start for the next epoch.

        `reduce` sums a tensor over processes (the strategy's; identity on one device), so
        under DDP the means are over all samples of all processes.
        """
        if stage not in self._sums:
            return {}
        sums, count = self._sums.pop(stage), self._counts.pop(stage)
        totals = reduce(torch.cat([sums, sums.new_tensor([count])]))  # (n_metrics + 1,)
        return dict(zip(self._names.pop(stage), totals[:-1] / totals[-1], strict=True))


class ImageClassifier(pl.LightningModule):
    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        conv: Sequence[int] = (32, 64, 64),
        dense: int = 64,
        lr: float = 1e-3,
        image_size: tuple[int, int] = (28, 28),
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = build_cnn(num_classes, in_channels, list(conv), dense, tuple(image_size))
        self.epoch_means = EpochMeans()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, C, H, W) -> (B, num_classes)

    def model_step(
        self, batch: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Shared by train/val/test: (loss, predicted classes (B,), targets (B,))."""
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        return loss, logits.argmax(dim=1), y

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        loss, preds, y = self.model_step(batch)
        acc = (preds == y).float().mean()
        self.epoch_means.update(stage, y.shape[0], {"loss": loss, "acc": acc})
        return loss

    def _log_epoch(self, stage: str) -> None:
        # Per-epoch only, once per epoch: per-step logging is costly with MLflow on SQLite.
        means = self.epoch_means.pop(
            stage, lambda t: self.trainer.strategy.reduce(t, reduce_op="sum")
        )
        metrics = {f"{stage}_{name}": value for name, value in means.items()}
        self.log_dict(metrics, on_step=False, on_epoch=True)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    def predict_proba_module(self) -> nn.Module:
        """A plain copy of the network + softmax, on CPU, in eval mode, for `torch.export`.

        float32 (B, 1, H, W) in [0, 1] -> class probabilities (B, num_classes).
        """
        net = copy.deepcopy(self.net).cpu()
        return nn.Sequential(net, nn.Softmax(dim=1)).eval()
