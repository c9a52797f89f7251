"""Evaluation metrics against hand counts: accuracy, attack success rate, source-class recall."""

import jax.numpy as jnp
import numpy as np

import fljax
from fljax.attacks import label_flip


def _logits_model(params, x):
    """The inputs are the logits: predictions are chosen by the test."""
    return x


def test_targeted_flip_success_rate_and_source_recall_by_hand():
    # 3 classes; source 0 -> target 2. Predicted classes per example (argmax of the one-hot rows):
    predicted = np.array([0, 2, 2, 1, 0, 1, 2, 1])
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    x = jnp.asarray(np.eye(3)[predicted], jnp.float32)
    out = fljax.make_evaluate(_logits_model, label_flip(3, source=0, target=2), batch_size=3)(
        None, x, jnp.asarray(labels)
    )
    np.testing.assert_allclose(out["accuracy"], 3 / 8)  # examples 0, 5 and 6 are classified correctly
    # source-class (label 0) examples: 4; predicted 2 (the target): 2 of them; predicted 0: 1 of them
    np.testing.assert_allclose(out["attack_success_rate"], 2 / 4)
    np.testing.assert_allclose(out["source_recall"], 1 / 4)


def test_untargeted_attacks_report_neither():
    out = fljax.make_evaluate(_logits_model, label_flip(3))(None, jnp.eye(3), jnp.arange(3))
    assert "attack_success_rate" not in out and "source_recall" not in out
    np.testing.assert_allclose(out["accuracy"], 1.0)


def test_no_source_examples_gives_nan_not_a_number_from_zero_division():
    out = fljax.make_evaluate(_logits_model, label_flip(3, source=0, target=1))(None, jnp.eye(3)[1:], jnp.array([1, 2]))
    assert np.isnan(out["attack_success_rate"]) and np.isnan(out["source_recall"])
