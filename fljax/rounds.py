"""One federated round as one pure, jit-compiled function.

``make_round`` composes cohort sampling, the cohort's local training (with the data attack of
its malicious clients), the model attack, the aggregation rule and the server optimizer::

    round = fljax.make_round(client_update, fljax.aggregators.median(), clients_per_round=10)
    state = round.init(params)
    state, metrics = round.step(state, data, key)  # jitted; traces once
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh

from fljax import sharding as sharding_lib
from fljax.aggregators import column_split
from fljax.aggregators._common import finite_rows, normalize
from fljax.attacks.model import no_attack
from fljax.client import ClientData, ClientUpdate, map_clients, resolve_execution
from fljax.data.federated import FederatedData
from fljax.momentum import WorkerMomentum
from fljax.types import AggregationContext, Aggregator, AttackContext, DataAttack, ModelAccess, ModelAttack, ServerState

DETECTION_THRESHOLD = 0.5
"""A client counts as flagged by a rule when the rule treats it at less than this fraction of
its equal treatment (``flagged_clients``)."""


class Round(NamedTuple):
    """``init(params) -> ServerState`` and the jitted ``step(state, data, key) -> (state, metrics)``."""

    init: Callable[..., ServerState]
    step: Callable[..., tuple[ServerState, dict]]


def flagged_clients(info: dict, counts, count_weighted: bool = False, threshold: float = DETECTION_THRESHOLD):
    """``bool[n]``: the clients a rule's aggregation flagged, measured against the rule's own
    equal treatment, so that a rule that excludes no one flags no one whatever the counts.

    * By default client i is flagged when its effective weight ``info["weights"][i]`` is below
      ``threshold`` times its weight under equal treatment: ``1 / n`` for a rule that ignores
      example counts, ``counts_i / sum(counts)`` for a count-weighted one
      (``Aggregator.count_weighted``: the weighted mean, norm clipping, AFA, ...). Selectors
      really drop clients: Krum flags all but the one it picks, multi-Krum all but its m,
      Bulyan those it does not select (or trims on most coordinates), FLAME / DnC / SignGuard /
      cluster filter the ones they filter out; reweighting rules (FLTrust, FoolsGold, AFA,
      CONTRA, geometric median, centered / norm clipping) those they weigh at less than half.
    * A coordinate-wise rule (median, trimmed mean) reports ``info["kept_share"]``: the share of
      each client's update, its entries weighed by magnitude, in the values it kept. Zero entries
      and coordinates where every client ties weigh nothing, so they do not dilute the verdict.
      Client i is flagged when its share is below ``threshold`` times the cohort's average.
    """
    n = counts.shape[0]
    uniform = jnp.full((n,), 1.0 / n, jnp.float32)
    if "kept_share" in info:
        return normalize(info["kept_share"].astype(jnp.float32)) < threshold * uniform
    baseline = normalize(counts.astype(jnp.float32)) if count_weighted else uniform
    return info["weights"] < threshold * baseline


def detection_rates(flagged, malicious):
    """True / false positive rates of ``flagged`` (``flagged_clients``) as a detector of the
    round's ``malicious`` clients; NaN when the round has no malicious (for TPR) or no honest
    (for FPR) client."""
    n_mal = jnp.sum(malicious)
    n_hon = jnp.sum(~malicious)
    tpr = jnp.where(n_mal > 0, jnp.sum(flagged & malicious) / jnp.maximum(n_mal, 1), jnp.nan)
    fpr = jnp.where(n_hon > 0, jnp.sum(flagged & ~malicious) / jnp.maximum(n_hon, 1), jnp.nan)
    return tpr, fpr


def make_round(
    client_update: ClientUpdate,
    aggregator: Aggregator,
    *,
    clients_per_round: int,
    num_malicious: int = 0,
    data_attack: Optional[DataAttack] = None,
    model_attack: Optional[ModelAttack] = None,
    malicious_client_update: Optional[ClientUpdate] = None,
    server_optimizer: Optional[optax.GradientTransformation] = None,
    execution: str = "auto",
    chunk_size: int = 8,
    root_size: int = 100,
    attack_knows_aggregator: bool = True,
    jit: bool = True,
    shard_clients: bool | Mesh = False,
    num_byzantine: Optional[int] = None,
    continuous_data_poisoning: bool = False,
    worker_momentum: Optional[WorkerMomentum] = None,
    num_clients: Optional[int] = None,
    model_apply: Optional[Callable] = None,
) -> Round:
    """Builds one federated round.

    Args:
      client_update: ``fljax.client.fedavg(...)`` or ``fedsgd(...)`` (or any function of the form).
      aggregator: the server's rule, e.g. ``fljax.aggregators.krum(num_byzantine=2)``.
      clients_per_round: the cohort size n, sampled without replacement each round.
      num_malicious: clients ``0 .. num_malicious - 1`` of the population are malicious; those
        sampled into a round attack in that round. Ids are a random order of the clients
        (``fljax.data.partition`` shuffles them after any structured assignment), so the
        malicious clients' data is distributed like everyone else's; data built by hand must
        shuffle its clients the same way.
      data_attack: poisons the malicious clients' training batches (a share of their real
        examples).
      model_attack: rewrites the malicious clients' updates after local training. Its schedule
        (``ModelAttack.active``, set by ``fljax.attacks.scheduled``) gates the WHOLE attack:
        outside its rounds the malicious clients train on clean data with the honest
        ``client_update`` and send exactly what honest clients would.
      malicious_client_update: how malicious clients train locally, for attacks that change
        local training itself (constrain-and-scale, PGD, Neurotoxin); default: like honest ones.
        Selected per client with ``lax.cond`` (a real branch under ``sequential`` execution,
        both branches computed under ``vmap``).
      server_optimizer: applied to the pseudo-gradient ``-aggregate``; the default
        ``optax.sgd(1.0)`` is plain FedAvg.
      execution: how the cohort is trained: ``vmap``, ``chunked`` (``chunk_size`` at a time),
        ``sequential`` or ``auto`` (per backend).
      root_size: examples of the server's clean root set, for rules that need a reference
        update (FLTrust); the root set is drawn once from the training examples.
      attack_knows_aggregator: the model attack's context carries the aggregator (full
        knowledge of the defense); ``False`` hides it.
      jit: compile ``step`` with ``jax.jit``.
      shard_clients: split the cohort's client axis over a mesh of every visible device
        (``True``), or over a given ``jax.sharding.Mesh`` with a ``"clients"`` axis: each device
        trains its ``ceil(clients_per_round / D)`` clients with ``execution`` (``fljax.sharding``;
        a cohort that is not a multiple of the device count D is padded, the padding dropped).
      num_byzantine: f, the malicious clients per round the defense and the attack assume:
        checked against the model attack's requirement, and rounds with more than f attacking
        clients are reported (metric ``beyond_f``; with partial participation the count per round
        is hypergeometric and can exceed f). Default: the expected number per round,
        ``round(num_malicious * clients_per_round / num_clients)``.
      continuous_data_poisoning: opt-in: the data attack poisons the malicious clients' batches
        in every round, also outside the model attack's schedule.
      worker_momentum: ``fljax.momentum.worker_momentum(beta, convention)``: every client keeps a
        momentum of its updates across rounds and sends it (the model attack sees the honest
        momenta); needs ``num_clients``, the population the state has a row for.
      num_clients: the population size, for ``worker_momentum`` (checked against the data).
      model_apply: the model's ``apply(params, x) -> logits``; required by a rule that reads the
        model (``Aggregator.needs_model``: DeepSight), which then gets ``context.model``
        (``fljax.types.ModelAccess``: this ``apply``, the params' unravel and the shape of one
        input of ``data.x``).

    Metrics per round: ``num_malicious`` (sampled), ``num_attacking`` (of them, those attacking
    in this round: none without any attack), ``beyond_f``, ``detection_tpr`` / ``detection_fpr`` (``flagged_clients``
    against the attacking clients), ``update_norm``, ``nonfinite_updates``, ``finite``.

    Requirements (the aggregator's, the attack's and the population's) are checked here, before
    compiling: at build time, or for those that need the population at the first trace.
    """
    if isinstance(clients_per_round, bool) or not isinstance(clients_per_round, int) or clients_per_round < 1:
        raise ValueError(f"make_round: clients_per_round must be an integer >= 1, got {clients_per_round!r}")
    if isinstance(num_malicious, bool) or not isinstance(num_malicious, int) or num_malicious < 0:
        raise ValueError(f"make_round: num_malicious must be an integer >= 0, got {num_malicious!r}")
    if num_byzantine is not None and (
        isinstance(num_byzantine, bool)
        or not isinstance(num_byzantine, int)
        or not 0 <= num_byzantine <= clients_per_round
    ):
        raise ValueError(
            f"make_round: num_byzantine must be an integer in 0..clients_per_round={clients_per_round} "
            f"(or None), got {num_byzantine!r}"
        )
    if not isinstance(continuous_data_poisoning, bool):
        raise ValueError(
            f"make_round: continuous_data_poisoning must be True or False, got {continuous_data_poisoning!r}"
        )
    if continuous_data_poisoning and data_attack is None:
        raise ValueError("make_round: continuous_data_poisoning needs a data_attack to keep poisoning with")
    if worker_momentum is not None and (
        isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < clients_per_round
    ):
        raise ValueError(
            f"make_round: worker_momentum needs num_clients, the population size (an integer >= "
            f"clients_per_round={clients_per_round}), got {num_clients!r}"
        )
    aggregator.requirement(clients_per_round)
    if aggregator.needs_model and model_apply is None:
        raise ValueError(
            "make_round: the rule reads the model (Aggregator.needs_model, e.g. deepsight): give "
            "model_apply, the model's apply(params, x) -> logits"
        )
    mesh = sharding_lib.resolve_mesh(shard_clients)
    # Without any attack the malicious clients behave honestly: no one attacks (detection TPR is NaN).
    has_attack = data_attack is not None or model_attack is not None or malicious_client_update is not None
    model_attack = no_attack() if model_attack is None else model_attack
    if num_byzantine is not None:
        model_attack.requirement(clients_per_round, num_byzantine)
    server_optimizer = optax.sgd(1.0) if server_optimizer is None else server_optimizer

    def init(params) -> ServerState:
        flat, _ = ravel_pytree(params)
        momenta = () if worker_momentum is None else worker_momentum.init(num_clients, flat.shape[0], flat.dtype)
        return ServerState(
            params=params,
            opt_state=server_optimizer.init(params),
            agg_state=aggregator.init(flat),
            attack_state=model_attack.init(flat),
            round=jnp.zeros((), jnp.int32),
            momenta=momenta,
        )

    def step(state: ServerState, data: FederatedData, key):
        if clients_per_round > data.num_clients:
            raise ValueError(
                f"make_round: clients_per_round must be in 1..num_clients={data.num_clients}, got {clients_per_round}"
            )
        if num_malicious > data.num_clients:
            raise ValueError(
                f"make_round: num_malicious must be in 0..num_clients={data.num_clients}, got {num_malicious}"
            )
        if worker_momentum is not None and num_clients != data.num_clients:
            raise ValueError(
                f"make_round: num_clients={num_clients} (the worker momenta's rows) must be the data's "
                f"{data.num_clients} clients"
            )
        f = num_byzantine
        if f is None:  # the expected malicious clients per round (the runner's default num_byzantine)
            f = int(round(num_malicious * clients_per_round / data.num_clients))
            model_attack.requirement(clients_per_round, f)
        k_cohort, k_train, k_attack, k_agg, k_root = jax.random.split(jax.random.fold_in(key, state.round), 5)
        cohort = jax.random.choice(k_cohort, data.num_clients, (clients_per_round,), replace=False)
        malicious = cohort < num_malicious
        # The schedule gates the whole attack: attack-specific local training and data poisoning too.
        active = jnp.bool_(True) if model_attack.active is None else jnp.asarray(model_attack.active(state.round), bool)
        attacking = malicious & active & has_attack
        poisoning = malicious & (active | continuous_data_poisoning) if data_attack is not None else attacking
        counts = data.client_counts[cohort]
        flat_params, unravel = ravel_pytree(state.params)

        def train_one(args):
            client_id, is_attacking, is_poisoning, client_key = args
            client = ClientData(data.x, data.y, data.client_indices[client_id], data.client_counts[client_id])
            transform = None
            if data_attack is not None:

                def transform(x, y, mask, k):
                    px, py = data_attack.poison(x, y, mask, k, client_id)
                    return jnp.where(is_poisoning, px, x), jnp.where(is_poisoning, py, y)

            extra = () if transform is None else (transform,)
            if malicious_client_update is None:
                delta = client_update(state.params, client, client_key, *extra)
            else:
                delta = jax.lax.cond(
                    is_attacking,
                    lambda: malicious_client_update(state.params, client, client_key, *extra),
                    lambda: client_update(state.params, client, client_key, *extra),
                )
            return ravel_pytree(delta)[0]

        client_keys = jax.random.split(k_train, clients_per_round)
        per_client = (cohort, attacking, poisoning, client_keys)
        if mesh is None:
            updates = map_clients(train_one, per_client, execution, chunk_size)
        else:
            updates = sharding_lib.map_clients_sharded(train_one, per_client, mesh, execution, chunk_size)
        momenta = state.momenta
        if worker_momentum is not None:  # the clients send their momenta; the attack sees the honest ones
            updates, momenta = worker_momentum.update(momenta, updates, cohort)

        reference = jnp.zeros_like(flat_params)
        if aggregator.needs_reference:
            root = jax.random.permutation(jax.random.PRNGKey(0), data.x.shape[0])[:root_size]
            root_data = ClientData(data.x, data.y, root, jnp.asarray(root.shape[0]))
            reference = ravel_pytree(client_update(state.params, root_data, k_root))[0]
        model = None
        if aggregator.needs_model:
            model = ModelAccess(
                unravel=unravel, apply=model_apply, inputs=jax.ShapeDtypeStruct(data.x.shape[1:], data.x.dtype)
            )
        attack_ctx = AttackContext(
            params=flat_params,
            weights=counts,
            round=state.round,
            aggregator=aggregator if attack_knows_aggregator else None,
            agg_state=state.agg_state,
            client_ids=cohort,
            # What the server's rule reads besides the updates, for attacks that run it.
            reference=reference if attack_knows_aggregator and aggregator.needs_reference else None,
            model=model if attack_knows_aggregator else None,
        )
        # Clients run one stream per CPU core: the rule (and an attack's calls of it) may split
        # its coordinates over the same cores (``column_split.columns_over_devices``).
        split = mesh is None and resolve_execution(execution) == "parallel" and jax.process_count() == 1
        with column_split.columns_over_devices(split):
            updates, attack_state = model_attack.update(updates, malicious, state.attack_state, k_attack, attack_ctx)

        agg_ctx = AggregationContext(
            weights=counts.astype(updates.dtype),
            key=k_agg,
            client_ids=cohort,
            params=flat_params,
            reference=reference,
            model=model,
        )
        with column_split.columns_over_devices(split):
            aggregate, agg_state, info = aggregator.update(updates, state.agg_state, agg_ctx)

        pseudo_grad = unravel(-aggregate)
        server_updates, opt_state = server_optimizer.update(pseudo_grad, state.opt_state, state.params)
        params = optax.apply_updates(state.params, server_updates)
        new_flat = ravel_pytree(params)[0]
        acting = attacking | poisoning  # clients that do not behave honestly this round
        tpr, fpr = detection_rates(flagged_clients(info, counts, aggregator.count_weighted), acting)
        metrics = {
            "num_malicious": jnp.sum(malicious),
            "num_attacking": jnp.sum(acting),
            "beyond_f": jnp.sum(acting) > f,
            "detection_tpr": tpr,
            "detection_fpr": fpr,
            "update_norm": jnp.linalg.norm(jnp.where(jnp.isfinite(aggregate), aggregate, 0.0)),
            "nonfinite_updates": jnp.sum(~finite_rows(updates)),
            "finite": jnp.all(jnp.isfinite(new_flat)),
        }
        new_state = ServerState(
            params=params,
            opt_state=opt_state,
            agg_state=agg_state,
            attack_state=attack_state,
            round=state.round + 1,
            momenta=momenta,
        )
        if mesh is not None:  # every process holds the whole state and metrics (fetchable anywhere)
            new_state, metrics = sharding_lib.constrain_replicated((new_state, metrics), mesh)
        return new_state, metrics

    return Round(init=init, step=jax.jit(step) if jit else step)
