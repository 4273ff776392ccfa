"""Building frozen slots dataclasses on the packet path.

A frozen dataclass's generated ``__init__`` sets every field through ``object.__setattr__``,
one Python-level call per field. The dissectors build one such object per parsed message (a
STUN message, a DNS record, a QUIC header), so in pure Python they fill the slots directly
instead.

When the class's module was compiled with mypyc (``inspector.native``), the class is a native
class: its fields are not slot descriptors and ``object.__new__`` refuses it. The class itself is
then the constructor. Either way the result is called with the field values positionally, in
the dataclass's field order.

A compiled frozen dataclass still gets the ``__init__`` that ``dataclasses`` generates: Python
code setting each field through ``object.__setattr__`` (0.42 us for three fields, against 0.03 us
for a native ``__init__``). The classes built per packet or per flow therefore write their own
``__init__`` assigning each field, which mypyc compiles to native stores; ``frozen_init`` gives
them back the generated one when they run interpreted, where those assignments would meet the
frozen ``__setattr__``.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from typing import Any


def positional_constructor(cls: type) -> Callable[..., Any]:
    """``cls(*values)`` (values in field order), filling the slots directly where that is
    both possible and equivalent: a pure-Python slots dataclass without ``__post_init__``
    whose every field takes its value from the call."""
    fields = dataclasses.fields(cls)
    descriptors: list[Any] = [cls.__dict__.get(field.name) for field in fields]
    if hasattr(cls, "__post_init__") or not all(
        isinstance(descriptor, types.MemberDescriptorType) and field.init
        for field, descriptor in zip(fields, descriptors)
    ):
        return cls
    setters = tuple(descriptor.__set__ for descriptor in descriptors)
    count = len(setters)
    new = object.__new__

    def build(*values: object) -> Any:
        if len(values) != count:
            return cls(*values)  # the dataclass raises the usual TypeError
        instance: Any = new(cls)
        for setter, value in zip(setters, values):
            setter(instance, value)
        return instance

    build.__qualname__ = build.__name__ = f"new_{cls.__name__}"
    return build


def frozen_init(cls: type) -> None:
    """Let the frozen dataclass ``cls``, whose own ``__init__`` assigns each field (so that
    mypyc compiles it to native stores), be constructed when it runs interpreted: there
    ``self.field = value`` raises ``FrozenInstanceError``, so its ``__init__`` is replaced by the
    one ``dataclasses`` generates for the same fields and defaults. A compiled class (whose
    ``__init__`` is not a Python function) is left alone."""
    if not isinstance(cls.__dict__.get("__init__"), types.FunctionType):
        return  # compiled: the native __init__ is the fast one
    fields = dataclasses.fields(cls)
    shadow = dataclasses.make_dataclass(
        cls.__name__,
        [
            (f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory))
            for f in fields
        ],
        frozen=True,
    )
    init = shadow.__dict__["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    type.__setattr__(cls, "__init__", init)


def attribute_state(obj: object) -> dict[str, Any]:
    """Every attribute of ``obj``, for a ``__reduce__`` returning
    ``(rebuilt, (cls, args, attribute_state(self)))``. Such a class pickles the same whether or
    not mypyc compiled it: a native class has no ``__dict__``, lists its attributes in
    ``__mypyc_attrs__``, and has a ``__setstate__`` that ignores pickle's usual state forms."""
    names = getattr(type(obj), "__mypyc_attrs__", None) or tuple(vars(obj))
    missing = object()
    state = {}
    for name in names:
        value = getattr(obj, name, missing)
        if value is not missing:
            state[name] = value
    return state


def rebuilt(cls: type, args: tuple, state: dict[str, Any]) -> Any:
    """``cls(*args)`` with the attributes of ``attribute_state`` set again (unpickling)."""
    obj = cls(*args)
    for name, value in state.items():
        setattr(obj, name, value)
    return obj
