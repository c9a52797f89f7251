"""Classifiers for FL poisoning experiments, as flax modules with pure init/apply.

``get(name, input_shape, num_classes)`` builds any of ``MODELS``: logistic regression, an MLP,
Fang et al.'s CNN, LeNet-5, ResNet-18 and ResNet-20 (CIFAR stem, GroupNorm), VGG-11 and a
character LSTM. Convolutions and max-pools come from ``fljax.layers``: on CPU they run as image
patches times a matmul (XLA's own convolution backward is slow there), elsewhere as XLA's
convolution; ``impl`` (``"auto"``, ``"xla"``, ``"patches"``) forces one for every conv model.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fljax import layers
from fljax.types import Array, PyTree

MODELS = ("logreg", "mlp", "cnn", "lenet5", "resnet18", "resnet20", "vgg11", "char_lstm")
CONV_MODELS = ("cnn", "lenet5", "resnet18", "resnet20", "vgg11")
"""Models with convolutions: they take ``impl`` (``fljax.layers``: ``"auto"``, ``"xla"``, ``"patches"``)."""
SEQUENCE_MODELS = ("char_lstm",)
"""Models of token sequences: inputs ``[B, T]`` int token ids, logits ``[B, T, vocabulary]``."""


class LogisticRegression(nn.Module):
    """Multinomial logistic regression on the flattened input."""

    num_classes: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


class MLP(nn.Module):
    """ReLU multi-layer perceptron (784-200-200-10 for MNIST by default)."""

    num_classes: int
    hidden: Sequence[int] = (200, 200)

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


class CNN(nn.Module):
    """Fang et al. 2020's CNN: conv3x3x30, maxpool 2, conv3x3x50, maxpool 2, dense 200, dense C.

    Each convolution computes only the outputs its pool keeps (``layers.crop_for_pool``: on
    28x28 inputs the second one computes 10x10 of its 11x11 outputs); values and gradients are
    those of the uncropped network. With patch convolutions (CPU) the convolutions and pools run
    in the ``"CHWN"`` layout (``fljax.layers``: every product has the long axis minor).

    References:
      Fang, Cao, Jia, Gong, "Local Model Poisoning Attacks to Byzantine-Robust Federated
      Learning", USENIX Security 2020 (Table 1).
    """

    num_classes: int
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        layout = layers.layout_for(self.impl)
        x = layers.from_nhwc(x, layout)
        for features in (30, 50):  # each convolution computes only the outputs its pool keeps
            conv = layers.Conv(features, (3, 3), padding="VALID", impl=self.impl, layout=layout)
            x = layers.max_pool(nn.relu(conv(layers.crop_for_pool(x, (3, 3), (2, 2)))), (2, 2), impl=self.impl)
        x = layers.to_nhwc(x, layout)
        x = nn.relu(nn.Dense(200)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes)(x)


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max-pooling: conv 5x5x6, pool 2, conv 5x5x16, pool 2, dense 120, 84, C.

    The first convolution zero-pads its input up to 32x32 (LeCun et al. padded MNIST's 28x28
    digits to 32x32), so 28x28x1 gives the classic 61,706 parameters and 32x32x3 is unpadded.

    References:
      LeCun, Bottou, Bengio, Haffner, "Gradient-Based Learning Applied to Document
      Recognition", Proc. IEEE 1998.
    """

    num_classes: int
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        pad = [(max(0, (32 - n) // 2), max(0, 32 - n - (32 - n) // 2)) for n in x.shape[1:3]]
        layout = layers.layout_for(self.impl)
        x = layers.from_nhwc(x, layout)
        x = nn.relu(layers.Conv(6, (5, 5), padding=pad, impl=self.impl, layout=layout)(x))
        x = layers.max_pool(x, (2, 2), strides=(2, 2), impl=self.impl)
        x = nn.relu(layers.Conv(16, (5, 5), padding="VALID", impl=self.impl, layout=layout)(x))
        x = layers.max_pool(x, (2, 2), strides=(2, 2), impl=self.impl)
        x = layers.to_nhwc(x, layout)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(120)(x))
        x = nn.relu(nn.Dense(84)(x))
        return nn.Dense(self.num_classes)(x)


class ResidualBlock(nn.Module):
    """He et al.'s basic block: two 3x3 convolutions with GroupNorm and a shortcut.

    ``shortcut``: ``"projection"`` (a 1x1 convolution and GroupNorm where the shape changes,
    ResNet-18's option B) or ``"pad"`` (the input subsampled and zero-padded to the new width,
    parameter-free: the CIFAR ResNets' option A).
    """

    features: int
    strides: int = 1
    shortcut: str = "projection"
    norm_groups: int = 2
    impl: str = "auto"
    layout: str = "NHWC"  # or "CHWN" (``fljax.layers``)

    @nn.compact
    def __call__(self, x):
        conv = lambda f, k, s: layers.Conv(
            f,
            (k, k),
            strides=s,
            padding="SAME" if k > 1 else "VALID",
            use_bias=False,
            impl=self.impl,
            layout=self.layout,
        )
        norm = lambda: layers.GroupNorm(num_groups=self.norm_groups, layout=self.layout)
        channels = 0 if self.layout == "CHWN" else -1
        y = nn.relu(norm()(conv(self.features, 3, self.strides)(x)))
        y = norm()(conv(self.features, 3, 1)(y))
        if self.strides != 1 or x.shape[channels] != self.features:
            if self.shortcut == "projection":
                x = norm()(conv(self.features, 1, self.strides)(x))
            else:
                x = x[:, :: self.strides, :: self.strides, :]
                extra = self.features - x.shape[channels]
                pads = [(0, 0)] * 4
                pads[channels] = (extra // 2, extra - extra // 2)
                x = jnp.pad(x, pads)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """ResNet for small images with the CIFAR stem (one 3x3 convolution of stride 1, no
    max-pool) and GroupNorm instead of BatchNorm, then stages of residual blocks (the first
    block of each stage after the first strides 2), global average pooling and a dense layer.

    GroupNorm, not BatchNorm: BatchNorm normalises with the statistics of the current batch
    and keeps running averages of them as model state. In federated learning each client's
    batches come from its own (non-IID) distribution, so the statistics differ across clients,
    the averaged weights were trained against none of them, and the running averages are state
    outside the parameters that aggregation rules and attacks never see (or must special-case).
    GroupNorm normalises each example over groups of its own channels: the model is a pure
    function of its parameters and one example, identical in training and evaluation (Hsieh et
    al. 2020; Reddi et al. 2021's federated ResNet-18).

    References:
      He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
      Wu, He, "Group Normalization", ECCV 2018.
      Hsieh, Phanishayee, Mutlu, Gibbons, "The Non-IID Data Quagmire of Decentralized Machine
      Learning", ICML 2020.
      Reddi et al., "Adaptive Federated Optimization", ICLR 2021.
    """

    num_classes: int
    stage_sizes: Sequence[int]
    widths: Sequence[int]
    shortcut: str = "projection"
    norm_groups: int = 2
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        layout = layers.layout_for(self.impl)
        x = layers.from_nhwc(x, layout)
        x = layers.Conv(self.widths[0], (3, 3), padding="SAME", use_bias=False, impl=self.impl, layout=layout)(x)
        x = nn.relu(layers.GroupNorm(num_groups=self.norm_groups, layout=layout)(x))
        for stage, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
            for block in range(blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = ResidualBlock(width, strides, self.shortcut, self.norm_groups, self.impl, layout)(x)
        x = layers.to_nhwc(jnp.mean(x, axis=(1, 2)), layout)  # [B, C] ([C, B] in CHWN before)
        return nn.Dense(self.num_classes)(x)


def ResNet18(num_classes: int, **kwargs) -> ResNet:
    """ResNet-18 for CIFAR (He et al.'s ImageNet widths 64-512, 2 blocks per stage, projection
    shortcuts): 11,173,962 parameters for 32x32x3 inputs and 10 classes."""
    return ResNet(num_classes, stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512), shortcut="projection", **kwargs)


def ResNet20(num_classes: int, **kwargs) -> ResNet:
    """He et al.'s CIFAR ResNet-20 (3 stages of 3 blocks, widths 16-32-64, zero-padding
    shortcuts): 0.27M parameters (269,722 for 10 classes)."""
    return ResNet(num_classes, stage_sizes=(3, 3, 3), widths=(16, 32, 64), shortcut="pad", **kwargs)


class VGG11(nn.Module):
    """VGG-11 (configuration A: 3x3 convolutions of 64, M, 128, M, 256, 256, M, 512, 512, M, 512,
    512, M, M a 2x2 max-pool) with the CIFAR head of one dense layer, and no normalisation (as
    in the paper; BatchNorm does not federate, see ``ResNet``): 9,225,610 parameters for
    32x32x3 inputs and 10 classes. Needs inputs of at least 32x32 (five pools).

    References:
      Simonyan, Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
      Recognition", ICLR 2015.
    """

    num_classes: int
    impl: str = "auto"
    config: Sequence = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    @nn.compact
    def __call__(self, x):
        for c in self.config:
            if c == "M":
                x = layers.max_pool(x, (2, 2), strides=(2, 2), impl=self.impl)
            else:
                x = nn.relu(layers.Conv(c, (3, 3), padding="SAME", impl=self.impl)(x))
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def _orthogonal_blocks(blocks: int):
    """Initialiser of an ``[h, blocks * h]`` kernel: ``blocks`` orthogonal ``[h, h]`` blocks (one per gate)."""

    def init(key, shape, dtype=jnp.float32):
        h = shape[0]
        keys = jax.random.split(key, blocks)
        return jnp.concatenate([nn.initializers.orthogonal()(k, (h, h), dtype) for k in keys], axis=1)

    return init


class LSTM(nn.Module):
    """One LSTM layer over ``[B, T, D]`` inputs, returning the ``[B, T, features]`` hidden states.

    Gates i, f, g, o from one input kernel (applied to all steps at once, a single matmul), one
    recurrent kernel (orthogonal blocks) and one bias; a ``lax.scan`` over time from zero state.
    4 x (D x h + h x h + h) parameters.

    References:
      Hochreiter, Schmidhuber, "Long Short-Term Memory", Neural Computation 1997.
    """

    features: int

    @nn.compact
    def __call__(self, x):
        h = self.features
        w_in = self.param("input_kernel", nn.initializers.lecun_normal(), (x.shape[-1], 4 * h))
        w_rec = self.param("recurrent_kernel", _orthogonal_blocks(4), (h, 4 * h))
        bias = self.param("bias", nn.initializers.zeros, (4 * h,))
        inputs = jnp.swapaxes(x @ w_in + bias, 0, 1)  # [T, B, 4h]

        def step(carry, z):
            c, state = carry
            i, f, g, o = jnp.split(z + state @ w_rec, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            state = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (c, state), state

        zeros = jnp.zeros((x.shape[0], h), inputs.dtype)
        # The kernel enters the scan as a value made here: closed over as the parameter itself, the
        # scan's transpose failed under pmap (parallel execution) with a sharding-mesh mismatch
        # (jax 0.10.2; flax's nn.RNN too).
        w_rec = w_rec * 1.0
        _, states = jax.lax.scan(step, (zeros, zeros), inputs)
        return jnp.swapaxes(states, 0, 1)


class CharLSTM(nn.Module):
    """Next-character prediction: an 8-dimensional embedding, two LSTM layers of 256 units and
    a dense layer over the vocabulary at every position (LEAF's and FedJAX's Shakespeare
    model). Inputs ``[B, T]`` token ids; logits ``[B, T, num_classes]``; ``num_classes`` is the
    vocabulary size. Train with per-token labels ``[B, T]`` (``classification_loss`` masks
    negative labels, e.g. padding).

    References:
      Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018.
      McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
      Data", AISTATS 2017 (the Shakespeare task).
    """

    num_classes: int
    embedding: int = 8
    hidden: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.num_classes, self.embedding)(tokens)
        for width in self.hidden:
            x = LSTM(width)(x)
        return nn.Dense(self.num_classes)(x)


class Model(NamedTuple):
    """A model as two pure functions: ``init(key) -> params``, ``apply(params, x) -> logits``."""

    init: Callable[[Array], PyTree]
    apply: Callable[[PyTree, Array], Array]


def get(name: str, input_shape: Sequence[int], num_classes: int, **kwargs) -> Model:
    """Builds one of ``MODELS`` for inputs of ``input_shape`` (one example: ``[H, W, C]`` images,
    ``[T]`` token sequences for ``SEQUENCE_MODELS``) and ``num_classes`` outputs (the vocabulary
    for sequences). ``kwargs`` go to the module (e.g. ``impl="xla"`` for ``CONV_MODELS``)."""
    modules = {
        "logreg": LogisticRegression,
        "mlp": MLP,
        "cnn": CNN,
        "lenet5": LeNet5,
        "resnet18": ResNet18,
        "resnet20": ResNet20,
        "vgg11": VGG11,
        "char_lstm": CharLSTM,
    }
    if name not in modules:
        raise ValueError(f"model: unknown model {name!r}; valid: {', '.join(MODELS)}")
    input_shape = tuple(input_shape)
    smallest = {"cnn": 10, "lenet5": 14, "resnet18": 1, "resnet20": 1, "vgg11": 32}
    if name in smallest and (len(input_shape) != 3 or min(input_shape[:2]) < smallest[name]):
        raise ValueError(
            f"model: {name} needs image inputs [H, W, C] with H, W >= {smallest[name]}, got "
            f"{input_shape}; use mlp or logreg"
        )
    if name in SEQUENCE_MODELS and len(input_shape) != 1:
        raise ValueError(f"model: {name} needs token sequences [T], got inputs of shape {input_shape}")
    if "impl" in kwargs and name not in CONV_MODELS:
        kwargs = {k: v for k, v in kwargs.items() if k != "impl"}  # no convolution to choose for
    module = modules[name](num_classes=num_classes, **kwargs)
    dummy = jnp.zeros((1, *input_shape), jnp.int32 if name in SEQUENCE_MODELS else jnp.float32)
    return Model(
        init=lambda key: module.init(key, dummy)["params"], apply=lambda params, x: module.apply({"params": params}, x)
    )


def num_params(params: PyTree) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
