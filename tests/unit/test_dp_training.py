"""train.privacy: strict settings, the budget plan (delta, noise for the target, an impossible
target refused with the key to change), the recorded line, the DP layers turned back."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from bigdeep.config import Privacy, Settings, Trainer
from bigdeep.training import privacy_record
from bigdeep.training.privacy import PrivacyError, check_single_process, delta_for, plan

pytestmark = pytest.mark.slow  # Opacus noise searches and RNN layers: seconds


def test_defaults_are_off_and_documented_values():
    p = Settings().train.privacy
    assert (p.enabled, p.epsilon, p.delta, p.max_grad_norm) == (False, 3.0, None, 1.0)


@pytest.mark.parametrize(
    ("key", "value"),
    [("epsilon", 0), ("epsilon", -1), ("delta", 0), ("delta", 1), ("max_grad_norm", 0), ("eps", 1)],
)
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ValidationError) as e:
        Settings.model_validate({"train": {"privacy": {key: value}}})
    assert ("train", "privacy", key) in [err["loc"] for err in e.value.errors()]


def test_delta_defaults_to_a_tenth_of_one_over_n_and_must_stay_below_it():
    assert delta_for(Privacy(), 500) == pytest.approx(1 / 5000)
    assert delta_for(Privacy(delta=1e-4), 500) == 1e-4
    with pytest.raises(PrivacyError, match=r"train\.privacy\.delta = 0\.01 is not below 1 / 500"):
        delta_for(Privacy(delta=0.01), 500)


def test_plan_finds_the_noise_that_spends_at_most_the_target():
    from opacus.accountants import RDPAccountant

    p = plan(Privacy(epsilon=3.0), "cnn", epochs=10, n_train=3500, batches=55)
    assert (p.delta, p.sample_rate) == (pytest.approx(1 / 35000), pytest.approx(1 / 55))
    spent = RDPAccountant()
    spent.history = [(p.noise_multiplier, p.sample_rate, 10 * 55)]
    assert 3.0 - 0.02 <= spent.get_epsilon(p.delta) <= 3.0  # Opacus's search tolerance is 0.01
    # a smaller budget needs more noise; more epochs too
    assert plan(Privacy(epsilon=1.0), "cnn", 10, 3500, 55).noise_multiplier > p.noise_multiplier
    assert plan(Privacy(epsilon=3.0), "cnn", 20, 3500, 55).noise_multiplier > p.noise_multiplier
    assert p.params()["dp.noise_multiplier"] == p.noise_multiplier


@pytest.mark.slow  # the noise search for an impossible target takes ~30 s on 2 cores
def test_an_impossible_target_names_the_key_and_the_fix():
    with pytest.raises(PrivacyError) as e:
        plan(Privacy(epsilon=1e-7), "rnn", epochs=50, n_train=100, batches=2)
    text = str(e.value)
    assert "train.privacy.epsilon = 1e-07 cannot be reached by the RNN" in text
    assert "Fix: raise train.privacy.epsilon" in text and "train.rnn.epochs" in text
    assert e.value.exit_code == 2


@pytest.mark.parametrize(
    "trainer",
    [Trainer(strategy="ddp"), Trainer(devices=2), Trainer(strategy="fsdp"), Trainer(num_nodes=2)],
)
def test_ddp_is_refused(trainer):
    with pytest.raises(PrivacyError, match="Fix: set train.trainer.devices: 1"):
        check_single_process(trainer)


def test_one_process_is_accepted():
    check_single_process(Trainer())
    check_single_process(Trainer(devices=1))


def test_the_recorded_line():
    record = {"epsilon": 2.96789, "target_epsilon": 3.0, "delta": 2.857142e-5}
    assert privacy_record.text(record) == "ε=2.97 (target 3.0, δ=2.86e-5)"
    assert privacy_record.from_tags(privacy_record.tags(record)) == record
    assert privacy_record.text(privacy_record.from_tags({"other": "tag"})) == "off"


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_dp_layers_become_plain_ones_with_the_same_forecast(cell):
    from bigdeep.models.rnn import SeriesForecaster
    from bigdeep.training.privacy import fix_layers, plain_network

    torch.manual_seed(0)
    model = SeriesForecaster(n_features=3, cell=cell, layers=2, hidden=8)
    x = torch.randn(4, 12, 3)
    with torch.no_grad():
        before = model(x)
    fix_layers(model)
    assert type(model.net.rnn).__name__ == {"lstm": "DPLSTM", "gru": "DPGRU"}[cell]
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)
    plain = plain_network(model.net)
    assert type(plain.rnn) is {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    with torch.no_grad():
        torch.testing.assert_close(plain(x), before, rtol=1e-5, atol=1e-6)
