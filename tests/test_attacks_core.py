"""Label flipping, sign flipping and Gaussian noise against their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fljax
from fljax.attacks import gaussian, label_flip, sign_flip

U = jnp.array([[1.0, -2.0], [3.0, 4.0], [5.0, 6.0]])
MAL = jnp.array([True, False, True])


def test_sign_flip_rows():
    out = fljax.apply_attack(sign_flip(scale=10.0), U, MAL)
    np.testing.assert_allclose(out, [[-10.0, 20.0], [3.0, 4.0], [-50.0, -60.0]])


def test_gaussian_rows_have_the_right_std_and_honest_rows_are_untouched():
    u = jnp.zeros((4, 20000))
    out = np.asarray(
        fljax.apply_attack(gaussian(std=3.0), u, jnp.array([True, True, False, False]), jax.random.PRNGKey(1))
    )
    assert abs(out[:2].std() - 3.0) < 0.05 and abs(out[:2].mean()) < 0.05
    assert not np.allclose(out[0], out[1])
    np.testing.assert_array_equal(out[2:], 0.0)


@pytest.mark.parametrize("attack", [sign_flip(2.0), gaussian(1.0)])
def test_model_attacks_are_noops_without_malicious_clients(attack):
    np.testing.assert_array_equal(fljax.apply_attack(attack, U, jnp.zeros(3, bool)), U)


def test_targeted_label_flip():
    attack = label_flip(num_classes=10, source=5, target=3)
    x = jnp.ones((4, 2))
    y = jnp.array([5, 1, 5, 3])
    x2, y2 = attack.poison(x, y, jnp.ones(4, bool), jax.random.PRNGKey(0), 0)
    np.testing.assert_array_equal(y2, [3, 1, 3, 3])
    np.testing.assert_array_equal(x2, x)
    _, yt, valid = attack.targeted(x, y)
    np.testing.assert_array_equal(valid, [True, False, True, False])
    np.testing.assert_array_equal(yt, 3)


def test_all_to_all_label_flip():
    attack = label_flip(num_classes=10)
    _, y2 = attack.poison(jnp.ones((3, 1)), jnp.array([0, 4, 9]), jnp.ones(3, bool), jax.random.PRNGKey(0), 0)
    np.testing.assert_array_equal(y2, [9, 5, 0])
    assert attack.targeted is None


def test_bad_attack_parameters():
    with pytest.raises(ValueError, match="sign_flip: scale must be a number > 0"):
        sign_flip(scale=-1)
    with pytest.raises(ValueError, match="label_flip: source must be a class in 0..9"):
        label_flip(10, source=10, target=1)
    with pytest.raises(ValueError, match="give both source and target"):
        label_flip(10, source=1)
