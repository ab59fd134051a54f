"""ImageClassifier: the Keras seed CNN as a LightningModule.

    Standardize -> Conv(3x3)+ReLU -> MaxPool(2) -> Conv(3x3)+ReLU -> MaxPool(2) -> Conv(3x3)+ReLU
    -> Flatten -> Linear(dense)+ReLU -> Linear(num_classes)

'valid' padding as in Keras, so with the defaults 28 -> 26 -> 13 -> 11 -> 5 -> 3 and the
flatten size is 64*3*3. The network itself is a plain `nn.Sequential` (`self.net`), so the
exported model carries no Lightning code. It takes images in [0, 1] and standardises them
itself (`Standardize`, with the train split's pixel mean and std), so whoever serves it
feeds the same [0, 1] pixels as before.

The seed architecture is unchanged; its accuracy comes from training choices: OneCycle
learning rate, label smoothing, input standardisation (here) and random affine augmentation
of the train split (`bigdeep.data.datamodules.ImageDataModule`). Figures: tests/benchmarks/README.md.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from bigdeep.models.metrics import EpochMeans, StagedModule
from bigdeep.models.optim import check_schedule
from bigdeep.models.shapes import conv_output_size


class Standardize(nn.Module):
    """(x - mean) / std with fixed scalars, kept as buffers so they travel with the weights."""

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def build_cnn(
    num_classes: int,
    in_channels: int,
    conv: Sequence[int],
    dense: int,
    image_size: tuple[int, int],
    input_mean: float = 0.0,
    input_std: float = 1.0,
) -> nn.Sequential:
    """The plain network: float32 (B, C, H, W) in [0, 1] -> logits (B, num_classes)."""
    if not conv:
        raise ValueError("conv must list at least one channel count, e.g. [32, 64, 64]")
    layers: list[nn.Module] = [Standardize(input_mean, input_std)]
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


class ImageClassifier(StagedModule):
    """The seed CNN with its training choices (see the module docstring).

    `input_mean` / `input_std`: pixel statistics of the train split, in [0, 1] units
    (`ImageDataModule.pixel_mean` / `.pixel_std`); the defaults leave inputs as they are.
    `lr` is the peak learning rate under "onecycle", the start under "cosine".
    `channels_last`: NHWC weights and activations: the same function (up to float rounding),
    faster convolutions.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        conv: Sequence[int] = (32, 64, 64),
        dense: int = 64,
        lr: float = 3e-3,
        image_size: tuple[int, int] = (28, 28),
        input_mean: float = 0.0,
        input_std: float = 1.0,
        schedule: str = "onecycle",
        weight_decay: float = 0.0,
        label_smoothing: float = 0.1,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        check_schedule(schedule)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.save_hyperparameters()
        self.net = build_cnn(
            num_classes,
            in_channels,
            list(conv),
            dense,
            tuple(image_size),
            input_mean,
            input_std,
        )
        if channels_last:
            # NHWC weights: the layout oneDNN's CPU convolutions and a GPU's tensor cores
            # prefer (figures: tests/benchmarks/README.md).
            self.net = self.net.to(memory_format=torch.channels_last)
        self.epoch_means = EpochMeans()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)  # a re-stride only when C = 1
        return self.net(x)  # (B, C, H, W) -> (B, num_classes)

    def model_step(
        self, batch: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Shared by train/val/test: (loss, predicted classes (B,), targets (B,))."""
        x, y = batch
        logits = self.network()(x)
        # Smoothing in every stage, so train_loss and val_loss stay comparable.
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        return loss, logits.argmax(dim=1), y

    def step_metrics(self, preds: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"acc": (preds == y).float().mean()}

    def export_module(self) -> nn.Module:
        """A plain copy of the network + softmax, on CPU, in eval mode, for `torch.export`.

        float32 (B, C, H, W) in [0, 1] -> class probabilities (B, num_classes).
        """
        net = copy.deepcopy(self.net).cpu()
        return nn.Sequential(net, nn.Softmax(dim=1)).eval()
