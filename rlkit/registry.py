"""One registry for every extension point: advantage estimators, losses, regularizers,
rewards and rollout engines.

A `Registry` maps names to functions or classes of one kind. A YAML config names a component
either by its registered name (`grpo`) or by an import path `pkg.module:attr`; both go
through `Registry.get`, so a user's own class or function is found the same way as a
built-in one. `Registry.bind` checks a params dict against the component's signature before
anything runs, so a misspelt parameter fails when the config is validated (`rlkit validate`),
with the config path and the closest accepted name, instead of at the first training step:

    loss.params.clip_hgh: unknown parameter of loss 'grpo' (GRPOLoss); did you mean
    'clip_high'? Accepted: agg_mode, clip_high, ...

Which parameters a component accepts is read from its signature, never declared twice:
- a class: the keyword parameters of `__init__`, following `**kwargs` up the MRO (a subclass
  that forwards `**kwargs` to its base accepts the base's parameters too);
- a function: its named parameters, less the registry's `fixed` ones (the calling convention,
  e.g. `rewards, group_ids, mask` of an estimator). A `**kwargs` catch-all never makes a name
  acceptable: rewards take `**_` to swallow dataset columns, not to accept any setting.
Keyword-only parameters without a default are required.

This module imports nothing heavy, so config validation stays fast.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["ParamError", "Registry", "Signature", "UnknownNameError"]

T = TypeVar("T")

_SKIPPED_KINDS = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL,
                  inspect.Parameter.VAR_KEYWORD)


class UnknownNameError(ValueError, KeyError):
    """Unknown registry name. Catchable as ValueError or KeyError; message lists known names."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable
        return str(self.args[0]) if self.args else ""


class ParamError(TypeError, ValueError):
    """A params dict does not fit a component's signature.

    A TypeError, as Python raises for a bad keyword, and a ValueError, so pydantic validators
    report it as a config error. The message starts with the config path of the parameter.
    """


@dataclass(frozen=True)
class Signature:
    """What a component takes as params: every accepted name, and those without a default."""

    accepted: tuple[str, ...]
    required: tuple[str, ...]


def _identity(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _init_parameters(cls: type) -> list[inspect.Parameter]:
    """Parameters of cls.__init__ (self dropped), following **kwargs up the MRO."""
    params: list[inspect.Parameter] = []
    for klass in cls.__mro__:
        if klass is object:
            break
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        own = list(inspect.signature(init).parameters.values())[1:]
        params.extend(own)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own):
            break
    return params


class Registry(Generic[T]):
    """Named functions or classes of one kind, plus the one resolver for import paths.

    kind: what the entries are, in messages ("loss", "reward").
    base: entries must be subclasses of it (class registries); None for function registries.
      May be given as an import path `pkg.module:Class` when the registry is created before
      its base class (resolved at the first registration).
    name_attr: attribute set to the registered name on each entry (e.g. `loss_name`).
    fixed: parameters of the calling convention, never taken from params.
    declared: attributes an entry may declare at registration, with their defaults
      (function registries set all of them on the function; a class inherits the defaults of
      its base class, where they are declared as class attributes).
    """

    def __init__(
        self,
        kind: str,
        *,
        base: type | str | None = None,
        name_attr: str | None = None,
        fixed: tuple[str, ...] = (),
        declared: Mapping[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self._base = base
        self.name_attr = name_attr
        self.fixed = frozenset(fixed)
        self.declared = dict(declared or {})
        self._entries: dict[str, T] = {}

    # ------------------------------------------------------------------ names

    @property
    def base(self) -> type | None:
        if isinstance(self._base, str):
            self._base = self._import(self._base, f"base class of the {self.kind} registry")
        return self._base

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"

    def register(self, name: str, **declared: Any) -> Callable[[T], T]:
        """Decorator: make `obj` selectable by `name`; sets `name_attr` and the declared attributes.

        A second, different object under a taken name is refused (the same one again is fine:
        a module imported twice registers again).
        """
        unknown = sorted(k for k in declared if k not in self.declared and not self._base_declares(k))
        if unknown:
            base = self.base
            known = ", ".join(self.declared) or (  # in declaration order
                f"the class attributes of {base.__qualname__}" if base not in (None, object) else "(none)"
            )
            raise TypeError(
                f"register({name!r}): no {self.kind} declares {', '.join(unknown)}; declared attributes: {known}"
            )

        def deco(obj: T) -> T:
            self._check_kind(obj, name)
            old = self._entries.get(name)
            if old is not None and _identity(old) != _identity(obj):
                raise ValueError(f"{self.kind} {name!r} is already registered by {_identity(old)}")
            attrs = declared if isinstance(obj, type) else {**self.declared, **declared}
            for key, value in attrs.items():
                setattr(obj, key, value)
            if self.name_attr is not None:
                setattr(obj, self.name_attr, name)
            self._entries[name] = obj
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove `name` (tests, interactive sessions)."""
        del self._entries[name]

    def get(self, name_or_path: str) -> T:
        """The entry registered as `name_or_path`, or the object at import path `pkg.module:attr`.

        Unknown name -> UnknownNameError with the closest name and the registered ones;
        a path that does not import -> ValueError; an object of the wrong kind -> TypeError.
        """
        if ":" in name_or_path:
            obj = self._import(name_or_path, self.kind)
            self._check_kind(obj, name_or_path)
            if not isinstance(obj, type):
                for key, value in self.declared.items():  # an unregistered function: the defaults
                    vars(obj).setdefault(key, value)
            return obj
        try:
            return self._entries[name_or_path]
        except KeyError:
            msg = f"unknown {self.kind} {name_or_path!r}"
            close = difflib.get_close_matches(name_or_path, self.names(), n=1)
            msg += f"; did you mean {close[0]!r}?" if close else "."
            raise UnknownNameError(
                f"{msg} Registered: {', '.join(self.names())}; "
                f"or give an import path 'pkg.module:{self._attr_hint}'"
            ) from None

    # ------------------------------------------------------------------ params

    def signature(self, obj: T) -> Signature:
        """The params `obj` takes (see the module docstring for the rules)."""
        if isinstance(obj, type):
            params = _init_parameters(obj)
        else:
            params = list(inspect.signature(obj).parameters.values())
        accepted: list[str] = []
        required: list[str] = []
        for p in params:
            if p.kind in _SKIPPED_KINDS or p.name in self.fixed or p.name in accepted:
                continue
            accepted.append(p.name)
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty:
                required.append(p.name)
        return Signature(tuple(accepted), tuple(required))

    def check_params(self, name_or_path: str, params: Mapping[str, Any], *, path: str = "params") -> T:
        """The entry, after checking `params` against its signature; ParamError naming
        `<path>.<param>` for the first unknown or missing parameter."""
        obj = self.get(name_or_path)
        sig = self.signature(obj)
        own = getattr(obj, "__name__", "")  # a callable instance has none
        label = f"{self.kind} {name_or_path!r}" + (f" ({own})" if own and own != name_or_path else "")
        accepted = ", ".join(sorted(sig.accepted)) or "(none)"
        for key in params:
            if key in sig.accepted:
                continue
            msg = f"{path}.{key}: unknown parameter of {label}"
            close = difflib.get_close_matches(str(key), sig.accepted, n=1)
            msg += f"; did you mean {close[0]!r}?" if close else "."
            raise ParamError(f"{msg} Accepted: {accepted}.")
        missing = [name for name in sig.required if name not in params]
        if missing:
            raise ParamError(
                f"{path}.{missing[0]}: required parameter of {label} is missing; "
                f"set {', '.join(f'{path}.{m}' for m in missing)}"
            )
        return obj

    def bind(self, name_or_path: str, params: Mapping[str, Any], *, path: str = "params") -> Callable[..., Any]:
        """`check_params`, then the entry with `params` bound: call it with the calling
        convention's arguments (a class: with none, to build it)."""
        return functools.partial(self.check_params(name_or_path, params, path=path), **params)

    # ------------------------------------------------------------------ helpers

    @property
    def _attr_hint(self) -> str:
        return "ClassName" if self._base is not None else "function"

    def _base_declares(self, key: str) -> bool:
        base = self.base
        return base is not None and base is not object and hasattr(base, key)

    def _check_kind(self, obj: Any, what: str) -> None:
        base = self.base
        if base is not None:
            if not (isinstance(obj, type) and issubclass(obj, base)):
                raise TypeError(
                    f"{self.kind} {what!r} is {obj!r}, not a subclass of {base.__module__}.{base.__qualname__}"
                )
        elif isinstance(obj, type) or not callable(obj):
            raise TypeError(f"{self.kind} {what!r} is {obj!r}, not a function")

    def _import(self, path: str, what: str) -> Any:
        mod_name, _, attr = path.partition(":")
        if not mod_name or not attr:
            raise ValueError(f"{what} import path {path!r} must look like 'pkg.module:{self._attr_hint}'")
        try:
            obj: Any = importlib.import_module(mod_name)
        except ImportError as exc:
            raise ValueError(f"{what} {path!r}: cannot import module {mod_name!r}: {exc}") from exc
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ValueError(f"{what} {path!r}: module {mod_name!r} has no attribute {attr!r}")
            obj = getattr(obj, part)
        return obj
