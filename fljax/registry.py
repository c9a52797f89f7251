"""Registries of named components: one per kind, built once, an entry a record.

``fljax.aggregators.REGISTRY`` (the rules), ``fljax.aggregators.PREAGGREGATORS``,
``fljax.attacks.DATA_ATTACKS`` and ``fljax.attacks.MODEL_ATTACKS`` are ``Registry`` objects: a
read-only mapping from a name to its ``Entry`` (the factory plus what the runner needs to know
about it), filled by ``register``, which refuses a name given twice and an anonymous function.
An entry calls through to its factory (``REGISTRY["krum"](num_byzantine=2)``), and a registry
builds a component from a spec string, checking the spec's arguments against the factory's
signature (``REGISTRY.build("krum(num_byzantine=2)")``); see ``fljax.spec``.

    @fljax.aggregators.REGISTRY.register("clipped_mean")
    def clipped_mean(factor: float = 2.0) -> fljax.Aggregator: ...
"""

from __future__ import annotations

import difflib
import functools
import inspect
import typing
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional, Union

from fljax import spec as spec_lib
from fljax.spec import Spec


class Entry(NamedTuple):
    """A registered component.

    Attributes:
      name: its name in specs, flags and results.
      factory: ``factory(**arguments) -> component`` (an ``Aggregator``, ``PreAggregator``,
        ``DataAttack`` or ``ModelAttack``); its signature holds the defaults.
      kind: the registry's kind, for messages ("aggregator", "model attack", ...).
      strength: a model attack's strength parameter (``sign_flip``'s ``scale``): what the
        runner's deprecated ``--attack_scale`` sets and the summary reports.
      local_training: for a model attack that changes how the malicious clients train, the
        factory of their local training, ``local_training(loss_fn, optimizer, *own arguments,
        *, local_steps, local_epochs, batch_size, protocol)``; a spec's arguments go to whichever
        of the two factories takes them.
      targeted: the component pursues a target: a data attack with a success test (its
        ``DataAttack.targeted``), or a model attack that boosts the attackers' training on a
        data attack's poisoned examples (pair it: ``backdoor(target_label=0)+model_replacement``).
    """

    name: str
    factory: Callable
    kind: str
    strength: Optional[str] = None
    local_training: Optional[Callable] = None
    targeted: bool = False

    def __call__(self, *args, **kwargs):
        return self.factory(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.factory)

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The parameters a spec may name: the factory's, then the local training's own (its
        positional parameters after ``loss_fn, optimizer``)."""
        params = dict(inspect.signature(self.factory).parameters)
        if self.local_training is not None:
            own = [
                p
                for p in inspect.signature(self.local_training).parameters.values()
                if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
            ][2:]
            params.update((p.name, p) for p in own if p.name not in params)
        return params

    def hints(self) -> dict[str, Any]:
        """The resolved annotation of every parameter (``typing.Any`` where there is none)."""
        hints = {}
        for f in (self.local_training, self.factory):
            while isinstance(f, functools.partial):  # a named variant, as optax's nadam = partial(adam, ...)
                f = f.func
            if f is not None:
                hints.update(typing.get_type_hints(f))
        return {name: hints.get(name, typing.Any) for name in self.parameters()}

    def arguments(self, spec: Spec, *, fixed=(), where: str = "") -> dict:
        """The spec's arguments, checked: each one a parameter, not one of the ``fixed`` ones
        (set by the caller, e.g. the run's population), of the annotated type (converted: an
        int where a float is due becomes a float)."""
        params, hints = self.parameters(), self.hints()
        owner = f"{where + ': ' if where else ''}{self.name}"
        out = {}
        for name, value in spec.args:
            if name not in params:
                valid = [p for p in params if p not in fixed and spec_lib.is_literal_type(hints[p])]
                close = difflib.get_close_matches(name, valid, n=1)
                raise ValueError(
                    f"{owner}: unknown argument {name!r}"
                    + (f" (did you mean {close[0]}?)" if close else "")
                    + f"; valid: {', '.join(valid) if valid else f'none, {self.name} takes no arguments'}"
                )
            if name in fixed:
                raise ValueError(f"{owner}: {name} is set by the run, not in the spec")
            out[name] = spec_lib.coerce(owner, name, value, hints[name])
        return out

    def signature_text(self, run_values: Mapping[str, str] = {}, hidden=()) -> str:
        """``name(param=default, ...)`` for ``--help``: the parameters a spec may give, with
        their defaults from the signatures (``<required>`` without one; ``run_values`` names
        the run's value of a parameter the run fills, e.g. ``{"num_byzantine": "<f>"}``)."""
        params, hints = self.parameters(), self.hints()
        parts = []
        for name, p in params.items():
            if name in hidden or not spec_lib.is_literal_type(hints[name]):
                continue
            if name in run_values:
                parts.append(f"{name}={run_values[name]}")
            elif p.default is inspect.Parameter.empty:
                parts.append(f"{name}=<required>")
            else:
                parts.append(f"{name}={p.default!r}")
        return f"{self.name}({', '.join(parts)})" if parts else self.name


def call(
    factory: Callable,
    name: str,
    arguments: Mapping[str, Any],
    fixed: Mapping[str, Any] = {},
    defaults: Mapping[str, Any] = {},
    where: str = "",
):
    """``factory`` (of the component ``name``) called with each of its parameters from
    ``arguments`` (a spec's), else from ``fixed`` or ``defaults`` (the caller's), else its own
    default; a parameter without any of them raises ``ValueError`` naming it."""
    kwargs, missing = {}, []
    for param, p in inspect.signature(factory).parameters.items():
        for source in (arguments, fixed, defaults):
            if param in source:
                kwargs[param] = source[param]
                break
        else:
            if p.default is inspect.Parameter.empty:
                missing.append(param)
    if missing:
        example = ", ".join(f"{m}=..." for m in missing)
        raise ValueError(
            f"{where + ': ' if where else ''}{name} has no default for {', '.join(missing)}: give {name}({example})"
        )
    return factory(**kwargs)


class Registry(Mapping[str, Entry]):
    """Named components of one ``kind``: a read-only mapping name -> ``Entry``.

    Args:
      kind: what the components are ("aggregator", "model attack", ...), for messages.
      factories: ``name -> factory`` entries to register first.
    """

    def __init__(self, kind: str, factories: Mapping[str, Callable] = {}):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        for name, factory in factories.items():
            self.register(name, factory)

    def register(self, name: str, factory: Optional[Callable] = None, *, replace: bool = False, **info):
        """Registers ``factory`` under ``name`` (``info``: the other ``Entry`` fields) and
        returns it; without ``factory``, a decorator that does so.

        Raises:
          ValueError: the name is taken (unless ``replace``), is not an identifier, the
            factory is an anonymous ``lambda`` (a component is a named function with a
            docstring, e.g. ``functools.partial`` of another under a name of its own), or
            ``strength`` is not one of its parameters.
        """
        if factory is None:
            return lambda f: (self.register(name, f, replace=replace, **info), f)[1]
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{self.kind} names are identifiers (a spec writes name(arg=value)), got {name!r}")
        if not callable(factory) or getattr(factory, "__name__", "") == "<lambda>":
            raise ValueError(
                f"{self.kind} {name!r}: register a named function (def {name}(...) with a docstring), got {factory!r}"
            )
        if name in self._entries and not replace:
            old = self._entries[name].factory
            raise ValueError(
                f"{self.kind} {name!r} is registered already ({old.__module__}.{old.__qualname__}); "
                "choose another name, or pass replace=True"
            )
        entry = Entry(name, factory, self.kind, **info)
        if entry.strength is not None and entry.strength not in inspect.signature(factory).parameters:
            raise ValueError(
                f"{self.kind} {name!r}: strength {entry.strength!r} is not a parameter of {factory.__name__}"
            )
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> Entry:
        """Removes ``name`` (e.g. a test's temporary entry) and returns its entry."""
        self.lookup(name)
        return self._entries.pop(name)

    def __getitem__(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(self.unknown(name)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def unknown(self, name, where: str = "") -> str:
        """The message for an unregistered ``name``: the close names, then every valid one."""
        close = difflib.get_close_matches(str(name), self._entries, n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        return f"{where + ': ' if where else ''}unknown {self.kind} {name!r}{hint}; valid: {', '.join(self.names())}"

    def lookup(self, name: str, where: str = "") -> Entry:
        """The entry of ``name``; ``ValueError`` listing the valid names otherwise."""
        if name not in self._entries:
            raise ValueError(self.unknown(name, where))
        return self._entries[name]

    def build(
        self,
        spec: Union[str, Spec],
        *,
        fixed: Mapping[str, Any] = {},
        defaults: Mapping[str, Any] = {},
        where: str = "",
    ):
        """The component of ``spec`` (a ``Spec`` or its text, e.g. ``"krum(num_byzantine=2)"``):
        the factory called with the spec's checked arguments, then for the parameters the spec
        leaves out the ``fixed`` values (which a spec may not set: the run's population, the
        dataset's classes), the ``defaults`` (which it may override: the run's f), and the
        factory's own defaults.

        Raises:
          ValueError: one line naming ``where``, the component and what is wrong (an unknown
            name or argument with the valid ones, a value of the wrong type, a missing one).
        """
        spec = self._one(spec, where)
        entry = self.lookup(spec.name, where)
        return call(entry.factory, entry.name, entry.arguments(spec, fixed=fixed, where=where), fixed, defaults, where)

    def build_local_training(self, spec: Union[str, Spec], *, fixed: Mapping[str, Any], where: str = ""):
        """The malicious clients' local training of ``spec``'s model attack (``Entry.local_training``,
        called with ``fixed``: ``loss_fn``, ``optimizer`` and the run's training settings), or None."""
        spec = self._one(spec, where)
        entry = self.lookup(spec.name, where)
        if entry.local_training is None:
            return None
        return call(entry.local_training, entry.name, entry.arguments(spec, where=where), fixed, where=where)

    def _one(self, spec, where: str) -> Spec:
        if isinstance(spec, Spec):
            return spec
        specs = spec_lib.parse(spec, where or self.kind)
        if len(specs) != 1:
            raise ValueError(f"{where or self.kind}: one {self.kind} expected, got {spec!r}")
        return specs[0]

    def help_lines(self, run_values: Mapping[str, str] = {}, hidden=()) -> list[str]:
        """One ``name(param=default, ...)`` line per entry, sorted by name (``--help``)."""
        return [self._entries[name].signature_text(run_values, hidden) for name in self.names()]
