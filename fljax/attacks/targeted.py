"""Targeted model poisoning: how backdoor attackers train locally and what they send.

These attacks pair with a data attack (``fljax.attacks.backdoor``/``dba``/``feature_trigger``)
that poisons the malicious clients' batches. Each has two halves:

* a ``ModelAttack`` on what the malicious clients send after training (boosting by ``gamma``,
  projection onto a norm ball), passed to ``make_round(model_attack=...)``;
* for attacks that change local training itself, a ``*_training(loss_fn, optimizer, ...)``
  factory of the malicious clients' FedAvg update, passed to
  ``make_round(malicious_client_update=...)``; their registry entries (``MODEL_ATTACKS``) record it
  as ``local_training``.

The runner wires both from the model attack of ``--attack``, after the data attack it pairs with::

    python -m experiments.run --attack='backdoor(target_label=0)+model_replacement' --aggregator=mean

Examples:
  >>> import optax
  >>> from fljax.attacks import backdoor, pgd, pgd_training
  >>> loss_fn = fljax.classification_loss(lambda params, x: x.reshape(len(x), -1) @ params)
  >>> client_update = fljax.fedavg(loss_fn, optax.sgd(0.1), local_steps=10)
  >>> rnd = fljax.make_round(
  ...     client_update,
  ...     fljax.aggregators.mean(),
  ...     clients_per_round=20,
  ...     num_malicious=5,
  ...     data_attack=backdoor(target_label=0),
  ...     model_attack=pgd(norm_bound=1.0),
  ...     malicious_client_update=pgd_training(loss_fn, optax.sgd(0.1), norm_bound=1.0, local_steps=10),
  ... )
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from fljax.attacks._common import check_number, stateless
from fljax.client import Batch, ClientData, ClientUpdate, LossFn, fedavg
from fljax.types import Array, ModelAttack, PyTree

_TINY = 1e-12


def _safe_norm(x: Array) -> Array:
    """``||x||_2`` with gradient 0 (a subgradient) at ``x = 0`` instead of NaN."""
    sq = jnp.sum(x * x)
    return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


def _check_gamma(attack: str, gamma) -> Optional[float]:
    return None if gamma is None else check_number(attack, "gamma", gamma, positive=True)


def boost_factor(malicious: Array, weights: Array, gamma: Optional[float], server_lr: float) -> Array:
    """``gamma``, or when ``None`` Bagdasaryan et al.'s ``gamma = n / eta`` generalised to the
    count-weighted mean: ``W / (eta * W_mal)`` (W: the round's total example count, W_mal the
    malicious clients'), so that malicious clients that all trained to a model X replace the
    global model: ``G + eta * (W_mal / W) * gamma * (X - G) = X``."""
    if gamma is not None:
        return jnp.asarray(gamma, jnp.float32)
    w = weights.astype(jnp.float32)
    w_mal = jnp.sum(jnp.where(malicious, w, 0.0))
    return jnp.sum(w) / (server_lr * jnp.maximum(w_mal, _TINY))


def _send(attack: str, gamma: Optional[float], server_lr: float, norm_bound: Optional[float] = None) -> ModelAttack:
    """Malicious rows projected onto ``||delta|| <= norm_bound`` (if given), then scaled by gamma."""
    _check_gamma(attack, gamma)
    check_number(attack, "server_lr", server_lr, positive=True)

    def craft(updates, malicious, key, context):
        rows = updates
        if norm_bound is not None:
            norms = jnp.linalg.norm(updates, axis=1, keepdims=True)
            rows = updates * jnp.minimum(1.0, norm_bound / jnp.maximum(norms, _TINY))
        return boost_factor(malicious, context.weights, gamma, server_lr) * rows

    return stateless(craft)


def model_replacement(gamma: Optional[float] = None, server_lr: float = 1.0) -> ModelAttack:
    """Model replacement / boosting: each malicious client sends ``gamma * (X - G)``.

    In fljax's delta terms the malicious rows (deltas ``X - G`` of local training, normally on
    backdoor data: combine with a data attack) are multiplied by ``gamma``. ``gamma=None`` uses
    the paper's ``gamma = n / eta`` for the count-weighted mean (``boost_factor``), recomputed
    each round from the sampled cohort.

    Args:
      gamma: the boost factor (> 0), or ``None`` for ``n / eta``.
      server_lr: eta, the server learning rate (only used when ``gamma`` is ``None``).

    References:
      Bagdasaryan, Veit, Hua, Estrin, Shmatikov, "How To Backdoor Federated Learning",
      AISTATS 2020 (Section 4, "model replacement"); Bhagoji et al., "Analyzing Federated
      Learning through an Adversarial Lens", ICML 2019 ("explicit boosting").

    Examples:
      >>> fljax.apply_attack(
      ...     model_replacement(gamma=10.0), jnp.array([[0.1, 0.2], [0.3, 0.4]]), jnp.array([True, False])
      ... )
      Array([[1. , 2. ],
             [0.3, 0.4]], dtype=float32)
    """
    return _send("model_replacement", gamma, server_lr)


def constrain_and_scale(gamma: Optional[float] = None, server_lr: float = 1.0) -> ModelAttack:
    """What a constrain-and-scale attacker sends: its delta scaled by ``gamma`` (as
    ``model_replacement``); its local training is ``constrain_and_scale_training``.

    References:
      Bagdasaryan et al., "How To Backdoor Federated Learning", AISTATS 2020 (Section 4.2).

    Examples:
      >>> import optax
      >>> loss_fn = fljax.classification_loss(lambda params, x: x @ params)
      >>> rnd = fljax.make_round(
      ...     fljax.fedavg(loss_fn, optax.sgd(0.1), local_steps=10),
      ...     fljax.aggregators.mean(),
      ...     clients_per_round=10,
      ...     num_malicious=2,
      ...     model_attack=constrain_and_scale(gamma=5.0),
      ...     malicious_client_update=constrain_and_scale_training(loss_fn, optax.sgd(0.1), alpha=0.7, local_steps=10),
      ... )
    """
    return _send("constrain_and_scale", gamma, server_lr)


def pgd(norm_bound: float = 1.0, gamma: float = 1.0, server_lr: float = 1.0) -> ModelAttack:
    """What a PGD attacker sends: its delta projected onto ``||delta|| <= norm_bound`` (a no-op
    after ``pgd_training``, which keeps every local step in the ball), scaled by ``gamma``
    (``gamma > 1`` is "PGD with model replacement", ``gamma=None`` the ``n / eta`` boost).

    References:
      Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?", 2019; Wang
      et al., "Attack of the Tails: Yes, You Really Can Backdoor Federated Learning", NeurIPS 2020.

    Examples:
      >>> fljax.apply_attack(
      ...     pgd(norm_bound=1.0, gamma=2.0), jnp.array([[3.0, 4.0], [0.3, 0.4]]), jnp.array([True, False])
      ... )  # projected to (0.6, 0.8), then boosted
      Array([[1.2, 1.6],
             [0.3, 0.4]], dtype=float32)
    """
    check_number("pgd", "norm_bound", norm_bound, positive=True)
    return _send("pgd", gamma, server_lr, norm_bound=float(norm_bound))


def neurotoxin(gamma: float = 1.0, server_lr: float = 1.0) -> ModelAttack:
    """What a Neurotoxin attacker sends: its masked delta scaled by ``gamma`` (1: as trained);
    its local training is ``neurotoxin_training``.

    References:
      Zhang, Panda, Song, Yang, Mahoney, Mittal, Ramchandran, Gonzalez, "Neurotoxin: Durable
      Backdoors in Federated Learning", ICML 2022.

    Examples:
      >>> import optax
      >>> loss_fn = fljax.classification_loss(lambda params, x: x @ params)
      >>> rnd = fljax.make_round(
      ...     fljax.fedavg(loss_fn, optax.sgd(0.1), local_steps=10),
      ...     fljax.aggregators.mean(),
      ...     clients_per_round=10,
      ...     num_malicious=2,
      ...     model_attack=neurotoxin(),
      ...     malicious_client_update=neurotoxin_training(loss_fn, optax.sgd(0.1), mask_ratio=0.95, local_steps=10),
      ... )
    """
    return _send("neurotoxin", gamma, server_lr)


def _tree_sub(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(jnp.subtract, a, b)


def _local(attack: str, protocol: str, local_steps: Optional[int], local_epochs: Optional[int]) -> dict:
    """FedAvg's step settings (``local_steps`` wins over ``local_epochs``, as in the runner)."""
    if protocol != "fedavg":
        raise ValueError(f"{attack}: changes local training, so it needs protocol fedavg, got {protocol!r}")
    return dict(local_steps=local_steps, local_epochs=None if local_steps is not None else local_epochs)


def constrain_loss(loss_fn: LossFn, global_params: PyTree, alpha: float) -> LossFn:
    """``alpha * loss_fn + (1 - alpha) * ||w - G||_2``: the task loss plus the distance of the
    local model w to the global model G (Bagdasaryan et al.'s ``L_ano``; their code uses this
    unsquared L2 distance)."""

    def loss(params, batch: Batch, key=None):
        dist = _safe_norm(ravel_pytree(_tree_sub(params, global_params))[0])
        return alpha * loss_fn(params, batch, key) + (1.0 - alpha) * dist

    return loss


def constrain_and_scale_training(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    alpha: float = 0.7,
    *,
    local_steps: Optional[int] = None,
    local_epochs: Optional[int] = None,
    batch_size: int = 32,
    protocol: str = "fedavg",
) -> ClientUpdate:
    """Constrain-and-scale local training: FedAvg on ``constrain_loss(loss_fn, G, alpha)``.

    The distance term keeps the malicious model close to the global one so that its (boosted)
    update looks less anomalous. Send with ``constrain_and_scale(gamma)``.

    Args:
      loss_fn, optimizer: the task loss and the client optimizer.
      alpha: weight of the task loss, in (0, 1]; ``1 - alpha`` weighs the distance.
      local_steps, local_epochs, batch_size: as ``fljax.client.fedavg`` (``local_steps`` wins).
      protocol: must be ``fedavg``.

    References:
      Bagdasaryan et al., "How To Backdoor Federated Learning", AISTATS 2020 (Algorithm 1).

    Examples:
      >>> import optax
      >>> loss_fn = fljax.classification_loss(lambda params, x: x @ params)
      >>> mal = constrain_and_scale_training(loss_fn, optax.sgd(0.1), alpha=0.7, local_steps=10)
    """
    check_number("constrain_and_scale", "alpha", alpha, positive=True)
    if alpha > 1:
        raise ValueError(f"constrain_and_scale: alpha must be in (0, 1], got {alpha!r}")
    local = _local("constrain_and_scale", protocol, local_steps, local_epochs)
    fedavg(loss_fn, optimizer, batch_size=batch_size, **local)  # validates the settings at build time

    def update(params, data: ClientData, key, transform=None):
        train = fedavg(constrain_loss(loss_fn, params, alpha), optimizer, batch_size=batch_size, **local)
        return train(params, data, key, *(() if transform is None else (transform,)))

    return update


def project_to_ball(center: PyTree, radius: float) -> optax.GradientTransformation:
    """An optax transformation (chain it last) that projects the parameters after the step
    onto the L2 ball ``||w - center|| <= radius`` (the whole pytree as one vector)."""

    def project(updates, params):
        diff = _tree_sub(optax.apply_updates(params, updates), center)
        scale = jnp.minimum(1.0, radius / jnp.maximum(optax.global_norm(diff), _TINY))
        projected = jax.tree.map(lambda c, d: c + scale * d, center, diff)
        return _tree_sub(projected, params)

    return optax.stateless(project)


def pgd_training(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    norm_bound: float = 1.0,
    *,
    local_steps: Optional[int] = None,
    local_epochs: Optional[int] = None,
    batch_size: int = 32,
    protocol: str = "fedavg",
) -> ClientUpdate:
    """Projected gradient descent: after every local step, the local model is projected onto
    ``||w - G|| <= norm_bound``, so the delta never exceeds a norm-clipping server's bound.

    References:
      Sun et al., "Can You Really Backdoor Federated Learning?", 2019; Wang et al., "Attack of
      the Tails: Yes, You Really Can Backdoor Federated Learning", NeurIPS 2020.

    Examples:
      >>> import optax
      >>> loss_fn = fljax.classification_loss(lambda params, x: x @ params)
      >>> mal = pgd_training(loss_fn, optax.sgd(0.1), norm_bound=1.0, local_steps=10)
    """
    check_number("pgd", "norm_bound", norm_bound, positive=True)
    local = _local("pgd", protocol, local_steps, local_epochs)
    fedavg(loss_fn, optimizer, batch_size=batch_size, **local)

    def update(params, data: ClientData, key, transform=None):
        opt = optax.chain(optimizer, project_to_ball(params, float(norm_bound)))
        train = fedavg(loss_fn, opt, batch_size=batch_size, **local)
        return train(params, data, key, *(() if transform is None else (transform,)))

    return update


def neurotoxin_mask(grads: PyTree, mask_ratio: float) -> PyTree:
    """1 on the ``floor(mask_ratio * d)`` coordinates with the SMALLEST ``|grads|`` (over the
    whole model, as the authors' ``grad_mask_cv``), 0 elsewhere; shaped like ``grads``."""
    flat, unravel = ravel_pytree(grads)
    k = int(mask_ratio * flat.shape[0])
    if k == 0:
        return unravel(jnp.zeros_like(flat))
    _, idx = lax.top_k(-jnp.abs(flat), k)
    return unravel(jnp.zeros_like(flat).at[idx].set(1.0))


def _masked(mask: PyTree) -> optax.GradientTransformation:
    return optax.stateless(lambda updates, params=None: jax.tree.map(jnp.multiply, updates, mask))


def neurotoxin_training(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    mask_ratio: float = 0.95,
    *,
    local_steps: Optional[int] = None,
    local_epochs: Optional[int] = None,
    batch_size: int = 32,
    protocol: str = "fedavg",
) -> ClientUpdate:
    """Neurotoxin: train only on the coordinates that benign training changes least.

    Before training, the attacker computes its benign gradient (one gradient of ``loss_fn`` on
    all its clean examples at the global model) as the proxy of the benign clients' update,
    and keeps the ``mask_ratio`` share of coordinates where that gradient is smallest in
    magnitude (the paper removes the top-k%, k = 1 - mask_ratio). Every local step's gradient
    (on the poisoned batches) is masked to those coordinates before the optimizer, and the
    final delta is masked again, so it is exactly zero outside the mask. The paper's other
    proxy, the previous round's global update, is not visible to a client update in fljax;
    the benign-gradient proxy is what the authors' code (``grad_mask_cv``) uses.

    Args:
      loss_fn, optimizer: the task loss and the client optimizer.
      mask_ratio: share of coordinates the attacker may change, in (0, 1].
      local_steps, local_epochs, batch_size, protocol: as ``constrain_and_scale_training``.

    References:
      Zhang et al., "Neurotoxin: Durable Backdoors in Federated Learning", ICML 2022.

    Examples:
      >>> import optax
      >>> loss_fn = fljax.classification_loss(lambda params, x: x @ params)
      >>> mal = neurotoxin_training(loss_fn, optax.sgd(0.1), mask_ratio=0.9, local_steps=10)
    """
    check_number("neurotoxin", "mask_ratio", mask_ratio, positive=True)
    if mask_ratio > 1:
        raise ValueError(f"neurotoxin: mask_ratio must be in (0, 1], got {mask_ratio!r}")
    local = _local("neurotoxin", protocol, local_steps, local_epochs)
    fedavg(loss_fn, optimizer, batch_size=batch_size, **local)

    def update(params, data: ClientData, key, transform=None):
        k_grad, k_train = jax.random.split(key)
        real = jnp.arange(data.indices.shape[0]) < data.count
        clean = Batch(data.x[data.indices], data.y[data.indices], real)
        mask = neurotoxin_mask(jax.grad(loss_fn)(params, clean, k_grad), mask_ratio)
        train = fedavg(loss_fn, optax.chain(_masked(mask), optimizer), batch_size=batch_size, **local)
        delta = train(params, data, k_train, *(() if transform is None else (transform,)))
        return jax.tree.map(jnp.multiply, delta, mask)

    return update
