"""CRFL: clip and perturb the global model every round, predict by a vote of noisy models at test
time, with a certified radius (Xie, Chen, Chen, Li, ICML 2021)."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from fljax import metrics
from fljax.aggregators import _common
from fljax.types import Aggregator, Array


class CRFLState(NamedTuple):
    """CRFL's state: the round number (the clipping norm grows with it)."""

    round: Array


def crfl(
    noise_std: float = 0.01,
    clip_norm: float = 15.0,
    clip_start: float = 2.0,
    clip_growth: float = 0.1,
    sigma_test: Optional[float] = None,
    num_samples: int = 100,
    alpha: float = 0.001,
    weighted: bool = True,
) -> Aggregator:
    """CRFL: the global MODEL (not the aggregate) is clipped to norm ``rho_t`` and perturbed each round.

    Round t (1-based) of the paper: ``w' = w_t + mean_i x_i`` (the example-count-weighted mean
    of the finite updates: FedAvg); ``w_{t+1} = w' min(1, rho_t / ||w'||) + N(0, noise_std^2 I)``
    with ``rho_t = min(clip_start + clip_growth * t, clip_norm)`` (the authors' schedule, MNIST's
    values by default: ``0.1 t + 2`` capped at 15, ``sigma = 0.01``). The norms must suit the
    model's own: fljax's MLP starts at norm 20.2 (the CNN 17.1, the 8x8 logistic regression 3.2);
    clipped to 2.1 and perturbed it trains to chance on mnist5k (10 rounds: 0.10), while
    ``crfl(clip_start=20.0, clip_norm=40.0)`` reached 0.83 (the mean: 0.85).

    How a rule on the parameters fits the ``Aggregator`` interface: the global model ``w_t`` is
    in ``context.params``, so the rule returns the update that lands there,
    ``aggregate = w_{t+1} - w_t``. With the default server optimizer (plain SGD with rate 1,
    FedAvg, the paper's protocol) the next global model is exactly ``w_{t+1}``; another server
    optimizer moves the model toward it by its own step (with ``--server_lr=eta``:
    ``w_t + eta (w_{t+1} - w_t)``).

    At test time the server predicts with the smoothed model: a vote of ``num_samples`` copies of
    the global model plus ``N(0, sigma_test^2 I)`` noise, certified at confidence ``1 - alpha``
    (``Aggregator.evaluate`` = ``fljax.metrics.smoothed_metrics``: the runner reports the
    smoothed accuracy, the certified accuracy and the average certified radius, in the model
    space, of a poisoning of the last round). The paper uses 1,000 copies (100 here by default,
    a CPU-friendly choice: the Hoeffding margin ``sqrt(ln(1/alpha) / 2M)`` is then 0.19 instead
    of 0.06, so fewer predictions are certified).

    Not FLPoison's version, which clips and perturbs the AGGREGATED UPDATE. Non-finite updates
    get weight 0. Nothing is excluded: detection flags no one.

    Args:
      noise_std: sigma, the training noise on every parameter each round (>= 0).
      clip_norm: the largest clipping norm rho (> 0).
      clip_start, clip_growth: ``rho_t = min(clip_start + clip_growth * t, clip_norm)`` (> 0, >= 0).
      sigma_test: the smoothing noise at test time (> 0; default ``noise_std``, or 0.01 when
        ``noise_std`` is 0).
      num_samples: M, the noisy copies of the vote (>= 2).
      alpha: the certificate's error probability, in (0, 1).
      weighted: weight the mean by example counts (FedAvg) or not.

    References:
      Xie, Chen, Chen, Li, "CRFL: Certifiably Robust Federated Learning against Backdoor
      Attacks", ICML 2021 (the authors' code: github.com/AI-secure/CRFL).

    Examples:
      >>> rule = crfl(noise_std=0.0, clip_norm=1.0, clip_start=1.0)
      >>> fljax.aggregate(rule, jnp.array([[3.0, 4.0]]))  # from w = 0: w' = (3, 4), clipped to norm 1
      Array([0.6, 0.8], dtype=float32)
    """
    rule = "crfl"
    _common.check_positive(rule, "noise_std", noise_std, allow_zero=True)
    _common.check_positive(rule, "clip_norm", clip_norm)
    _common.check_positive(rule, "clip_start", clip_start)
    _common.check_positive(rule, "clip_growth", clip_growth, allow_zero=True)
    for name, value in (
        ("noise_std", noise_std),
        ("clip_norm", clip_norm),
        ("clip_start", clip_start),
        ("clip_growth", clip_growth),
    ):
        if not math.isfinite(value):
            raise ValueError(f"{rule}: {name} must be a finite number, got {value!r}")
    if sigma_test is None:
        sigma_test = noise_std if noise_std > 0 else 0.01
    _common.check_positive(rule, "sigma_test", sigma_test)
    if not math.isfinite(sigma_test):
        raise ValueError(f"{rule}: sigma_test must be a finite number > 0, got {sigma_test!r}")
    _common.check_positive(rule, "num_samples", num_samples, integer=True)
    if num_samples < 2:
        raise ValueError(f"{rule}: num_samples must be an integer >= 2 (a vote), got {num_samples!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < 1:
        raise ValueError(f"{rule}: alpha must be a number in (0, 1), got {alpha!r}")
    _common.check_bool(rule, "weighted", weighted)

    def init(params):
        return CRFLState(round=jnp.zeros((), jnp.int32))

    def update(updates, state, context):
        finite = _common.finite_rows(updates)
        weights = jnp.where(finite, context.weights if weighted else 1.0, 0.0).astype(updates.dtype)
        w = context.params.astype(updates.dtype)
        target = w + _common.weighted_average(updates, weights)
        t = (state.round + 1).astype(updates.dtype)
        rho = jnp.minimum(clip_start + clip_growth * t, clip_norm)
        norm = _common.safe_norms(target[None])[0]
        scale = jnp.where(norm > rho, rho / jnp.where(norm > rho, norm, 1.0), 1.0)
        new = target * scale + noise_std * jax.random.normal(context.key, w.shape, updates.dtype)
        info = _common.info(weights, clip_bound=rho, model_norm=norm)
        return new - w, CRFLState(state.round + 1), info

    evaluate = functools.partial(
        metrics.smoothed_metrics,
        sigma_train=noise_std if noise_std > 0 else sigma_test,
        sigma_test=sigma_test,
        clip_norm=clip_norm,
        num_samples=num_samples,
        alpha=alpha,
    )
    return Aggregator(init=init, update=update, count_weighted=weighted, evaluate=evaluate)
