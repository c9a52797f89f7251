"""fljax.models: shapes, published parameter counts, training, the fast convolutions, per-token loss."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fljax
from fljax import models
from fljax.experiment import ExperimentConfig, build
from tests.test_layers import assert_close, primitives

# (name, one example's shape, classes, parameters): counts published with each architecture.
PUBLISHED = [
    ("lenet5", (28, 28, 1), 10, 61_706),  # LeCun et al. 1998, MNIST padded to 32x32
    ("resnet18", (32, 32, 3), 10, 11_173_962),  # CIFAR ResNet-18 (GroupNorm has BatchNorm's scale and bias)
    ("resnet20", (32, 32, 3), 10, 269_722),  # He et al. 2016, Table 6: 0.27M
    ("vgg11", (32, 32, 3), 10, 9_225_610),  # configuration A convolutions + one dense layer, no BatchNorm
    ("char_lstm", (80,), 80, 817_872),  # LEAF Shakespeare: embedding 8, LSTM 256 x 2, 80 characters
]


@pytest.mark.parametrize("name,shape,classes,count", PUBLISHED)
def test_output_shape_and_published_parameter_count(name, shape, classes, count):
    model = models.get(name, shape, classes)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    assert models.num_params(params) == count
    dtype = jnp.int32 if name in models.SEQUENCE_MODELS else jnp.float32
    out = jax.eval_shape(model.apply, params, jax.ShapeDtypeStruct((4, *shape), dtype))
    assert out.shape == ((4, shape[0], classes) if name in models.SEQUENCE_MODELS else (4, classes))


def test_resnet18_is_about_11_2_million_parameters_also_for_100_classes():
    params = jax.eval_shape(models.get("resnet18", (32, 32, 3), 100).init, jax.random.PRNGKey(0))
    assert models.num_params(params) == 11_173_962 + 90 * 513  # the dense layer grows by 90 x (512 + 1)


def test_resnet_uses_groupnorm_and_no_batch_statistics():
    params = jax.eval_shape(models.get("resnet20", (32, 32, 3), 10).init, jax.random.PRNGKey(0))
    names = {k for path, _ in jax.tree_util.tree_flatten_with_path(params)[0] for k in map(str, path)}
    assert any("GroupNorm" in n for n in names) and not any("BatchNorm" in n for n in names)
    # A pure function of each example: one example's logits do not depend on the rest of the batch.
    module, shape, _ = small("resnet18")
    x = jax.random.normal(jax.random.PRNGKey(1), (3, *shape))
    p = jax.jit(module.init)(jax.random.PRNGKey(0), x)
    apply = jax.jit(module.apply)
    assert_close(apply(p, x)[:1], apply(p, x[:1]))


@pytest.mark.parametrize(
    "name,shape,message",
    [
        ("vgg11", (28, 28, 1), "vgg11 needs image inputs"),
        ("lenet5", (8, 8, 1), "lenet5 needs image inputs"),
        ("char_lstm", (28, 28, 1), "char_lstm needs token sequences"),
        ("resnet", (32, 32, 3), "unknown model 'resnet'"),
    ],
)
def test_get_rejects_bad_names_and_shapes(name, shape, message):
    with pytest.raises(ValueError, match=message):
        models.get(name, shape, 10)


def small(name):
    """``(module, example shape, learning rate)``: the registered architecture's code at a CI size
    (full sizes: the slow test). The two ResNets differ by their shortcuts."""
    resnet = lambda shortcut: models.ResNet(10, stage_sizes=(1, 1), widths=(8, 16), shortcut=shortcut)
    return {
        "cnn": (models.CNN(10), (28, 28, 1), 1e-2),
        "lenet5": (models.LeNet5(10), (28, 28, 1), 1e-2),
        "resnet18": (resnet("projection"), (16, 16, 3), 1e-2),
        "resnet20": (resnet("pad"), (16, 16, 3), 1e-2),
        "vgg11": (models.VGG11(10, config=(8, "M", 16, "M", 16, 16, "M", 16, 16, "M", 16, 16, "M")), (32, 32, 3), 3e-3),
        "char_lstm": (models.CharLSTM(12, hidden=(32, 32)), (10,), 1e-2),
    }[name]


def synthetic_task(name, shape, classes, n=8):
    """Images whose bright rows give the class (rows r with r mod classes = label), in noise; for
    text, next = (token + 1) mod vocabulary."""
    key = jax.random.PRNGKey(1)
    if name == "char_lstm":
        start = jax.random.randint(key, (n, 1), 0, classes)
        text = (start + jnp.arange(shape[0] + 1)) % classes
        return text[:, :-1], text[:, 1:]
    y = jnp.arange(n) % classes
    rows = (jnp.arange(shape[0]) % classes == y[:, None]).astype(jnp.float32)
    return 0.5 * jax.random.uniform(key, (n, *shape)) + rows[:, :, None, None], y


def training_losses(module, x, y, steps=15, lr=1e-2):
    params = module.init(jax.random.PRNGKey(0), x[:1])["params"]
    loss = fljax.classification_loss(lambda p, x: module.apply({"params": p}, x))
    batch = fljax.Batch(x, y, jnp.ones(x.shape[0], bool))
    opt = optax.adam(lr)

    def step(carry, _):
        p, s = carry
        value, grads = jax.value_and_grad(loss)(p, batch)
        updates, s = opt.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), value

    return jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), None, length=steps)[1])(params)


@pytest.mark.parametrize(
    "name",
    [
        "lenet5",
        "char_lstm",
        *[
            pytest.param(n, marks=pytest.mark.slow)  # 8-15 s each on CI's CPU
            for n in ("resnet20", "resnet18", "vgg11")
        ],
    ],
)
def test_loss_decreases_on_a_tiny_synthetic_task(name):
    module, shape, lr = small(name)
    x, y = synthetic_task(name, shape, module.num_classes)
    losses = training_losses(module, x, y, lr=lr)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,shape,classes", [("resnet18", (32, 32, 3), 10), ("vgg11", (32, 32, 3), 10), ("char_lstm", (80,), 80)]
)
def test_loss_decreases_full_size(name, shape, classes):
    module = {"resnet18": models.ResNet18, "vgg11": models.VGG11, "char_lstm": models.CharLSTM}[name](classes)
    x, y = synthetic_task(name, shape, classes)
    losses = training_losses(module, x, y, steps=20, lr=1e-3)
    assert losses[-1] < 0.7 * losses[0], losses


class FlaxCNN(nn.Module):
    """The CNN as written before fljax.layers: flax.linen's own convolution and max-pool."""

    num_classes: int

    @nn.compact
    def __call__(self, x):
        x = nn.max_pool(nn.relu(nn.Conv(30, (3, 3), padding="VALID")(x)), (2, 2), strides=(2, 2))
        x = nn.max_pool(nn.relu(nn.Conv(50, (3, 3), padding="VALID")(x)), (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(200)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes)(x)


def test_cnn_is_flax_cnn_with_fast_convolutions_on_cpu():
    x = jnp.round(jax.random.uniform(jax.random.PRNGKey(1), (6, 28, 28, 1)) * 4) / 4  # ties in the pools
    y = jnp.arange(6) % 10
    ref, fast = FlaxCNN(10), models.CNN(10, impl="patches")
    params = jax.jit(ref.init)(jax.random.PRNGKey(0), x)
    jax.tree.map(np.testing.assert_array_equal, jax.jit(fast.init)(jax.random.PRNGKey(0), x), params)  # checkpoints

    def run(module):
        loss = lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(module.apply(p, x), y))
        return jax.jit(lambda p: (module.apply(p, x), jax.grad(loss)(p)))(params)

    assert_close(run(fast), run(ref))
    grad = jax.grad(lambda p: jnp.sum(models.CNN(10).apply(p, x)))
    used = primitives(grad, params)
    if jax.default_backend() == "cpu":  # auto: no XLA convolution or select_and_scatter on CPU
        assert not used & {"conv_general_dilated", "select_and_scatter_add"}, used


@pytest.mark.parametrize("name", ["lenet5", "resnet18", "resnet20", "vgg11"])
def test_conv_models_agree_across_implementations(name):
    module, shape, _ = small(name)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, *shape))
    xla, patches = module.clone(impl="xla"), module.clone(impl="patches")
    params = jax.jit(xla.init)(jax.random.PRNGKey(0), x)

    def run(module):
        return jax.jit(lambda p: (module.apply(p, x), jax.grad(lambda p: jnp.sum(jnp.sin(module.apply(p, x))))(p)))(
            params
        )

    assert_close(run(patches), run(xla), rtol=1e-4)


def _logits_model(params, x):
    """The inputs are the logits."""
    return x


def test_per_token_loss_and_accuracy_by_hand():
    # Two sequences of 3 tokens over a vocabulary of 2; label -1 is padding; example 1 is not real.
    logits = jnp.array([[[2.0, 0.0], [0.0, 1.0], [3.0, 3.0]], [[0.0, 5.0], [1.0, 0.0], [0.0, 0.0]]])
    labels = jnp.array([[0, 0, -1], [1, 1, 0]])
    log_softmax = jax.nn.log_softmax(logits)
    # Real tokens: example 0, positions 0 and 1 (position 2 is padding).
    expected = -(log_softmax[0, 0, 0] + log_softmax[0, 1, 0]) / 2
    loss = fljax.classification_loss(_logits_model)(None, fljax.Batch(logits, labels, jnp.array([True, False])))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    # Both examples real: 5 real tokens, each weighing the same.
    all_real = fljax.Batch(logits, labels, jnp.array([True, True]))
    expected5 = (
        -(
            log_softmax[0, 0, 0]
            + log_softmax[0, 1, 0]
            + log_softmax[1, 0, 1]
            + log_softmax[1, 1, 1]
            + log_softmax[1, 2, 0]
        )
        / 5
    )
    np.testing.assert_allclose(fljax.classification_loss(_logits_model)(None, all_real), expected5, rtol=1e-6)
    # Evaluation: predictions (argmax, first on ties) [[0, 1, 0], [1, 0, 0]]; hits on real tokens:
    # (0,0) yes, (0,1) no, (1,0) yes, (1,1) no, (1,2) yes -> 3 of 5.
    for batch_size in (1, 2, 1000):  # 1000: a padded test batch (the default)
        out = fljax.make_evaluate(_logits_model, batch_size=batch_size)(None, logits, labels)
        np.testing.assert_allclose(out["accuracy"], 3 / 5)
        np.testing.assert_allclose(out["loss"], expected5, rtol=1e-6)


def test_per_example_loss_unchanged_by_the_token_mask():
    logits = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
    labels = jnp.array([0, 3, 1, 1, 2])
    mask = jnp.array([True, True, False, True, False])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    np.testing.assert_allclose(
        fljax.classification_loss(_logits_model)(None, fljax.Batch(logits, labels, mask)),
        jnp.sum(losses * mask) / 3,
        rtol=1e-6,
    )


def test_runner_builds_and_runs_a_new_model():
    config = ExperimentConfig(
        dataset="mnist5k",
        model="lenet5",
        num_clients=4,
        clients_per_round=4,
        num_malicious=0,
        attack="none",
        aggregator="mean",
        rounds=1,
        eval_every=1,
        local_steps=1,
        batch_size=8,
    )
    experiment = build(config)
    assert models.num_params(experiment.model.init(jax.random.PRNGKey(0))) == 61_706


def test_lstm_layer_is_the_standard_lstm():
    """Against the LSTM equations step by step (gates i, f, g, o), and torch.nn.LSTM when present."""
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
    layer = models.LSTM(4)
    params = layer.init(jax.random.PRNGKey(0), x)
    p = params["params"]
    sigmoid = lambda v: 1 / (1 + np.exp(-v))
    c, h, expected = np.zeros((2, 4)), np.zeros((2, 4)), []
    for t in range(5):
        z = (
            np.asarray(x[:, t]) @ np.asarray(p["input_kernel"])
            + np.asarray(p["bias"])
            + h @ np.asarray(p["recurrent_kernel"])
        )
        i, f, g, o = np.split(z, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        expected.append(h)
    np.testing.assert_allclose(layer.apply(params, x), np.stack(expected, axis=1), rtol=1e-5, atol=1e-6)
    torch = pytest.importorskip("torch")
    reference = torch.nn.LSTM(3, 4, batch_first=True)
    with torch.no_grad():
        reference.weight_ih_l0.copy_(torch.tensor(np.asarray(p["input_kernel"]).T))
        reference.weight_hh_l0.copy_(torch.tensor(np.asarray(p["recurrent_kernel"]).T))
        reference.bias_ih_l0.copy_(torch.tensor(np.asarray(p["bias"])))
        reference.bias_hh_l0.zero_()
    np.testing.assert_allclose(
        layer.apply(params, x), reference(torch.tensor(np.asarray(x)))[0].detach().numpy(), rtol=1e-5, atol=1e-6
    )


def test_char_lstm_trains_under_parallel_execution():
    """A round of char_lstm with clients split over 2 CPU devices (pmap): the benchmark in a fresh
    process, since the device count is fixed when JAX starts."""
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "experiments.benchmark",
        "--model=char_lstm",
        "--clients_per_round=2",
        "--executions=parallel",
        "--local_steps=1",
        "--batch_size=4",
        "--examples_per_client=8",
        "--repeats=1",
        "--aggregators=",
        "--torch=false",
        "--cpu_cores=2",
    ]
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    proc = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(2 device(s))" in proc.stdout and "\nparallel " in proc.stdout, proc.stdout
