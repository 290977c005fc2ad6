"""Rule tables: which rule says how channel ids flow through a module type or a function.

A *module rule* is ``rule(prop, node, module, x) -> value``: ``prop`` is the running ``Propagator``, ``node`` the
``call_module`` fx node, ``module`` the module it calls and ``x`` the value of its first input (a ``Chan``, a
tuple or ``None``); it returns the value of the output (``prop.unknown(node, reason)`` freezes what it sees).
A *function rule* is ``rule(prop, node, name, x) -> value`` for ``call_function`` / ``call_method`` nodes, keyed
by the op name the propagator normalises (``torch.relu``, ``F.relu`` and ``x.relu()`` are all ``"relu"``).

Module rules are looked up along the module type's MRO (most specific class first); a rule registered with
``exact=True`` only matches that very type (a Conv2d subclass may transform its weight: it is not a conv).
Rules for an optional package's modules (timm's) are registered once that package has been imported
(``RuleTable.when_imported``): a model made of its modules has imported it, and lcp does not pay its import.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch.fx as fx
from torch import nn

if TYPE_CHECKING:
    from lcp.engine.rules.propagator import Propagator

ModuleRule = Callable[["Propagator", fx.Node, nn.Module, Any], Any]
FunctionRule = Callable[["Propagator", fx.Node, str, Any], Any]


@dataclass(frozen=True)
class ModuleEntry:
    """A module rule and how it matches: ``exact`` (no subclasses) and ``leaf`` (the tracer keeps it whole)."""

    rule: ModuleRule
    exact: bool = False
    leaf: bool = True


def _function_key(name_or_fn: str | Callable) -> str:
    return name_or_fn if isinstance(name_or_fn, str) else getattr(name_or_fn, "__name__", str(name_or_fn))


class RuleTable:
    """Module rules by type and function rules by op name; ``parent`` tables are consulted after this one."""

    def __init__(self, parent: RuleTable | None = None):
        self.parent = parent
        self.modules: dict[type, ModuleEntry] = {}
        self.functions: dict[str, FunctionRule] = {}
        self._shadowed_modules: dict[type, list[ModuleEntry]] = {}
        self._shadowed_functions: dict[str, list[FunctionRule]] = {}
        self._deferred: list[tuple[str, Callable[[RuleTable], None]]] = []

    # ------------------------------------------------------------------ registration
    def when_imported(self, module_name: str, register: Callable[[RuleTable], None]) -> None:
        """Call ``register(self)`` once ``module_name`` is in ``sys.modules`` (checked before every lookup and
        registration, so rules registered later still take precedence over these)."""
        self._deferred.append((module_name, register))
        self._load_deferred()

    def _load_deferred(self) -> None:
        if self._deferred:
            ready = [d for d in self._deferred if d[0] in sys.modules]
            self._deferred = [d for d in self._deferred if d not in ready]
            for _, register in ready:
                register(self)

    def module(
        self, module_type: type | tuple[type, ...], rule: ModuleRule, *, exact: bool = False, leaf: bool = True
    ) -> ModuleRule:
        """Use ``rule`` for modules of ``module_type`` (a type or a tuple of types); returns ``rule``."""
        self._load_deferred()
        for t in module_type if isinstance(module_type, tuple) else (module_type,):
            if not (isinstance(t, type) and issubclass(t, nn.Module)):
                raise TypeError(f"a module rule needs an nn.Module subclass, got {t!r}")
            if t in self.modules:
                self._shadowed_modules.setdefault(t, []).append(self.modules[t])
            self.modules[t] = ModuleEntry(rule, exact, leaf)
        return rule

    def function(self, name_or_fn: str | Callable | tuple, rule: FunctionRule) -> FunctionRule:
        """Use ``rule`` for the op ``name_or_fn`` (a name such as ``"relu"``, or the function itself)."""
        for n in name_or_fn if isinstance(name_or_fn, tuple) else (name_or_fn,):
            key = _function_key(n)
            if key in self.functions:
                self._shadowed_functions.setdefault(key, []).append(self.functions[key])
            self.functions[key] = rule
        return rule

    def remove_module(self, module_type: type) -> None:
        """Undo the last ``module(module_type, ...)``; a rule it replaced comes back."""
        if module_type not in self.modules:
            raise KeyError(f"no module rule registered for {module_type.__name__}")
        shadowed = self._shadowed_modules.get(module_type)
        if shadowed:
            self.modules[module_type] = shadowed.pop()
        else:
            del self.modules[module_type]

    def remove_function(self, name_or_fn: str | Callable) -> None:
        """Undo the last ``function(name_or_fn, ...)``; a rule it replaced comes back."""
        key = _function_key(name_or_fn)
        if key not in self.functions:
            raise KeyError(f"no function rule registered for {key!r}")
        shadowed = self._shadowed_functions.get(key)
        if shadowed:
            self.functions[key] = shadowed.pop()
        else:
            del self.functions[key]

    # ------------------------------------------------------------------ lookup
    def _chain(self) -> list[RuleTable]:
        tables, t = [], self
        while t is not None:
            t._load_deferred()
            tables.append(t)
            t = t.parent
        return tables

    def module_rule(self, m: nn.Module) -> ModuleRule | None:
        """The rule for module ``m``: the most specific class of its MRO with a rule (this table first)."""
        tables = self._chain()
        for cls in type(m).__mro__:
            for table in tables:
                entry = table.modules.get(cls)
                if entry is not None and (not entry.exact or cls is type(m)):
                    return entry.rule
        return None

    def function_rule(self, name: str) -> FunctionRule | None:
        for table in self._chain():
            rule = table.functions.get(name)
            if rule is not None:
                return rule
        return None

    def leaf_types(self) -> tuple[type, ...]:
        """Module types the tracer keeps whole (and their subclasses) because a rule models them."""
        return tuple(dict.fromkeys(t for table in self._chain() for t, e in table.modules.items() if e.leaf))

    def extended(self, extra: RuleTable | dict[type, ModuleRule] | None) -> RuleTable:
        """This table with ``extra``'s rules (a ``RuleTable`` or ``{module type: rule}``) taking precedence."""
        if extra is None:
            return self
        table = RuleTable(parent=self)
        if isinstance(extra, RuleTable):
            for t in extra._chain()[::-1]:
                table.modules.update(t.modules)
                table.functions.update(t.functions)
        else:
            for t, rule in extra.items():
                table.module(t, rule)
        return table


#: the rules every ``build_graph`` uses: lcp's built-in rules plus everything registered with the functions below
RULES = RuleTable()


def register_module_rule(
    module_type: type | tuple[type, ...], rule: ModuleRule | None = None, *, exact: bool = False, leaf: bool = True
) -> Any:
    """Teach lcp how channels flow through ``module_type``: ``rule(prop, node, module, x) -> value``.

    ``exact``: match only this type, not subclasses. ``leaf``: the tracer keeps the module whole instead of
    tracing its forward. Without ``rule``, returns a decorator for it. ``unregister_module_rule`` undoes it.
    """
    if rule is None:
        return lambda r: RULES.module(module_type, r, exact=exact, leaf=leaf)
    return RULES.module(module_type, rule, exact=exact, leaf=leaf)


def unregister_module_rule(module_type: type) -> None:
    """Remove the last rule registered for ``module_type`` (a built-in rule it replaced comes back)."""
    RULES.remove_module(module_type)


def register_function_rule(name_or_fn: str | Callable | tuple, rule: FunctionRule | None = None) -> Any:
    """Teach lcp how channels flow through a function or method: ``rule(prop, node, name, x) -> value``.

    ``name_or_fn``: the op name (``"relu"``; a tensor method's name) or the function (keyed by its ``__name__``).
    Without ``rule``, returns a decorator for it. ``unregister_function_rule`` undoes it.
    """
    if rule is None:
        return lambda r: RULES.function(name_or_fn, r)
    return RULES.function(name_or_fn, rule)


def unregister_function_rule(name_or_fn: str | Callable) -> None:
    """Remove the last rule registered for the op ``name_or_fn``."""
    RULES.remove_function(name_or_fn)


@contextmanager
def module_rule(module_type: type, rule: ModuleRule, *, exact: bool = False, leaf: bool = True) -> Iterator[None]:
    """``with module_rule(MyBlock, rule): ...`` registers ``rule`` for the duration of the block."""
    register_module_rule(module_type, rule, exact=exact, leaf=leaf)
    try:
        yield
    finally:
        unregister_module_rule(module_type)
