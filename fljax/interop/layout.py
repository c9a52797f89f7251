"""Where each array of a model lies in its flat row: the one structure the bridges share."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Optional


class Layout(NamedTuple):
    """The structure of one client's model or update: a mapping of named arrays (a PyTorch
    ``state_dict``, a Flower ``ArrayRecord`` as NumPy), a list of arrays, or a single array.

    Framework-agnostic: it reads only ``.shape`` and ``.dtype``; the NumPy and PyTorch bridges
    pack rows and rebuild structures with their own array types.

    Attributes:
      names: the mapping's keys in order, or ``None`` for a list or a single array.
      single: the structure is one array (not a list of one).
      shapes: each array's shape, in order.
      dtypes: each array's dtype, in order.
    """

    names: Optional[tuple]
    single: bool
    shapes: tuple
    dtypes: tuple

    @classmethod
    def of(cls, tree) -> "Layout":
        """The layout of ``tree`` (a mapping, a list/tuple of arrays, or one array)."""
        if isinstance(tree, Mapping):
            names, arrays, single = tuple(tree.keys()), list(tree.values()), False
        elif isinstance(tree, (list, tuple)):
            names, arrays, single = None, list(tree), False
        else:
            names, arrays, single = None, [tree], True
        if not arrays:
            raise ValueError("Layout: a model needs at least one array, got an empty structure")
        for a in arrays:
            if not hasattr(a, "shape") or not hasattr(a, "dtype"):
                raise ValueError(f"Layout: every entry must be an array with .shape and .dtype, got {type(a).__name__}")
        return cls(names, single, tuple(tuple(a.shape) for a in arrays), tuple(a.dtype for a in arrays))

    @property
    def sizes(self) -> tuple[int, ...]:
        out = []
        for shape in self.shapes:
            size = 1
            for s in shape:
                size *= s
            out.append(size)
        return tuple(out)

    @property
    def size(self) -> int:
        """``d``: the length of the flat row."""
        return sum(self.sizes)

    def leaves(self, tree, where: str = "model") -> list:
        """``tree``'s arrays in layout order; ``ValueError`` naming ``where`` if the names or
        shapes differ from the layout's."""
        if self.names is not None:
            if not isinstance(tree, Mapping) or tuple(tree.keys()) != self.names:
                got = tuple(tree.keys()) if isinstance(tree, Mapping) else type(tree).__name__
                raise ValueError(f"{where}: expected arrays named {self.names}, got {got}")
            arrays = list(tree.values())
        elif self.single:
            arrays = [tree]
        else:
            if not isinstance(tree, (list, tuple)) or len(tree) != len(self.shapes):
                got = len(tree) if isinstance(tree, (list, tuple)) else type(tree).__name__
                raise ValueError(f"{where}: expected a list of {len(self.shapes)} arrays, got {got}")
            arrays = list(tree)
        for i, (a, shape) in enumerate(zip(arrays, self.shapes)):
            if tuple(getattr(a, "shape", ())) != shape:
                name = self.names[i] if self.names is not None else i
                raise ValueError(
                    f"{where}: array {name!r} has shape {tuple(getattr(a, 'shape', ()))}, expected {shape}"
                )
        return arrays

    def rebuild(self, arrays: list) -> Any:
        """The structure of the layout holding ``arrays`` (in layout order)."""
        if self.names is not None:
            return dict(zip(self.names, arrays))
        return arrays[0] if self.single else list(arrays)
