"""The served RNN takes windows in the source's units and forecasts in the target's units."""

from __future__ import annotations

import pytest
import torch

from bigdeep.models.rnn import SeriesForecaster, SourceUnits

MEAN, STD = [5000.0, 20.0, 0.0], [800.0, 5.0, 1.0]  # Demand, Temperature, one calendar column


def test_exported_rnn_is_the_trained_network_between_the_source_units():
    torch.manual_seed(0)
    model = SeriesForecaster(
        n_features=3, layers=1, hidden=8, input_mean=MEAN, input_std=STD, target_mean=5000.0,
        target_std=800.0,
    ).eval()  # fmt: skip
    raw = torch.tensor(MEAN) + torch.randn(4, 24, 3) * torch.tensor(STD)  # (B, T, F), MW and degC
    served = model.export_module()
    assert isinstance(served, SourceUnits) and not served.training
    scaled_in = (raw - torch.tensor(MEAN)) / torch.tensor(STD)
    expected = model(scaled_in) * 800.0 + 5000.0  # what training saw, un-scaled by hand
    torch.testing.assert_close(served(raw), expected)
    # in the target's units: near the train mean, not a standardised value near 0
    assert served(raw).abs().min() > 1000


def test_exported_rnn_without_a_scaler_stays_scaled():
    model = SeriesForecaster(n_features=2, layers=1, hidden=4)
    assert not isinstance(model.export_module(), SourceUnits)


def test_source_units_refuse_a_bad_scaler():
    with pytest.raises(ValueError, match="one mean and one std > 0 per column"):
        SourceUnits(torch.nn.Identity(), [0.0, 1.0], [1.0, 0.0], 0.0, 1.0)
