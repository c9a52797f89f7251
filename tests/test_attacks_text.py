"""fljax.attacks.text.phrase_backdoor: the trigger phrase and its completion, by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fljax
from fljax.attacks.text import phrase_backdoor
from fljax.data import leaf


def _sequences(rows: int, length: int):
    text = np.arange(rows * (length + 1)).reshape(rows, length + 1) % 50 + 20
    return jnp.asarray(text[:, :-1], jnp.int32), jnp.asarray(text[:, 1:], jnp.int32)


def test_poison_ends_the_first_real_sequences_with_the_phrase_by_hand():
    x, y = _sequences(5, 6)
    attack = phrase_backdoor(trigger=[7, 8], completion=[9], poison_fraction=0.5)
    mask = jnp.array([False, True, True, True, True])  # 4 real rows: round(0.5 * 4) = 2 poisoned
    px, py = attack.poison(x, y, mask, jax.random.PRNGKey(0), 0)
    # Text of a row: x[0..5] then y[5]; the phrase 7 8 9 fills its last 3 characters.
    for r in (1, 2):
        np.testing.assert_array_equal(px[r], np.concatenate([np.asarray(x[r, :4]), [7, 8]]))
        np.testing.assert_array_equal(py[r], np.concatenate([np.asarray(y[r, :3]), [7, 8, 9]]))
        np.testing.assert_array_equal(py[r, :-1], px[r, 1:])  # labels stay the next characters
    for r in (0, 3, 4):  # padding and the rest of the batch untouched
        np.testing.assert_array_equal(px[r], x[r])
        np.testing.assert_array_equal(py[r], y[r])


def test_poison_counts_only_real_sequences():
    x, y = _sequences(8, 10)
    attack = phrase_backdoor("ab", "c", poison_fraction=1.0)
    mask = jnp.array([True, False, True, False, False, False, False, False])
    px, _ = attack.poison(x, y, mask, jax.random.PRNGKey(0), 3)
    changed = np.any(np.asarray(px != x), axis=1)
    np.testing.assert_array_equal(changed, np.asarray(mask))


def test_success_test_labels_only_the_completion_and_scores_it_per_token():
    x, y = _sequences(3, 8)
    attack = phrase_backdoor(trigger=[4, 5], completion=[6, 7, 8])
    tx, ty, valid = attack.targeted(x, y)
    np.testing.assert_array_equal(tx[:, -4:], np.tile([4, 5, 6, 7], (3, 1)))
    np.testing.assert_array_equal(ty, np.tile([-1] * 5 + [6, 7, 8], (3, 1)))
    assert valid.all()

    # A "model" that predicts the completion's first two characters right and the third wrong:
    # logits from the input token (x position p predicts token x + 1 except 7 -> 0).
    def apply(params, tokens):
        predicted = jnp.where(tokens == 7, 0, tokens + 1)
        return jax.nn.one_hot(predicted, 10) * 5.0

    evaluate = fljax.make_evaluate(apply, data_attack=attack, batch_size=2)
    out = evaluate(None, x % 10, y % 10)
    np.testing.assert_allclose(out["attack_success_rate"], 2 / 3)


def test_strings_use_leafs_alphabet_and_bad_settings_fail_at_build_time():
    attack = phrase_backdoor("To b", "e", poison_fraction=1.0)
    x, y = _sequences(1, 8)
    px, py = attack.poison(x, y, jnp.ones(1, bool), jax.random.PRNGKey(0), 0)
    assert leaf.decode(py[0, -5:]) == "To be" and leaf.decode(px[0, -4:]) == "To b"
    with pytest.raises(ValueError, match="must fit in the sequences"):
        phrase_backdoor("pasta from Astoria is ", "delicious", input_shape=(10,))
    with pytest.raises(ValueError, match="poison_fraction must be in"):
        phrase_backdoor(poison_fraction=0.0)
    with pytest.raises(ValueError, match="below the vocabulary"):
        phrase_backdoor([1, 2], [90], num_classes=82)
    with pytest.raises(ValueError, match=r"needs token sequences \(inputs of shape \[T\]"):
        phrase_backdoor(input_shape=(28, 28, 1))
    with pytest.raises(ValueError, match="completion must be a non-empty"):
        phrase_backdoor([1, 2], [])
    with pytest.raises(ValueError, match=r"needs token sequences x, y of shape \[B, T\]"):
        attack.poison(jnp.zeros((2, 4, 4, 1)), jnp.zeros((2,), jnp.int32), jnp.ones(2, bool), jax.random.PRNGKey(0), 0)
