"""torch.compile of the training steps (`train.trainer.compile`, issue 12) on the CPU: the
same weights as eager within float noise, checkpoints and export unchanged. Here, not in
tests/unit: Inductor starts the C++ compiler.

Run: python -m pytest tests/integration/test_compile.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from bigdeep.data.datamodules import ImageDataModule
from bigdeep.models.cnn import ImageClassifier
from tests.unit.test_datamodules import (
    NO_AUGMENT,
    _quiet_lightning,  # noqa: F401 - autouse fixture
    _trainer,
    write_images,
)

torch.set_num_threads(1)


@pytest.mark.slow
def test_compiled_steps_match_eager_and_keep_checkpoint_and_export(tmp_path: Path):
    write_images(tmp_path)

    def fit(mode):
        pl.seed_everything(0, verbose=False)
        dm = ImageDataModule(tmp_path, batch_size=8, device_data="on", **NO_AUGMENT)
        dm.setup("fit")
        model = ImageClassifier(num_classes=3, conv=[4, 8, 8], dense=8, channels_last=False)
        model.use_compile(mode)
        trainer = _trainer()
        trainer.fit(model, datamodule=dm)
        return model, trainer

    eager, _ = fit(False)
    compiled, trainer = fit("default")
    assert "_compiled" in compiled.__dict__  # the steps did run compiled
    for (name, a), b in zip(
        eager.state_dict().items(), compiled.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    assert loaded.state_dict().keys() == eager.state_dict().keys()
    x = torch.rand(2, 1, 28, 28)
    program = torch.export.export(compiled.export_module(), (x,))
    torch.testing.assert_close(program.module()(x), eager.export_module()(x), rtol=1e-4, atol=1e-5)
