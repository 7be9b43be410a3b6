"""The catalog: model name -> ModelSpec, filled from the spec table, extendable at run time.

Names are the spec names of :data:`pipeline.models.specs.SPEC_TABLE`, plus ``timm:<model>`` for any
timm architecture (its spec is derived from timm's own config; its weights must be supplied), plus
``<name>.random_init``: an untrained copy of any entry, a control that a real transfer should beat.
"""

from __future__ import annotations

import dataclasses
from pipeline.models.specs import SPEC_TABLE, ModelSpec, WeightsRef

__all__ = ["register", "get_spec", "list_models", "RANDOM_INIT_SUFFIX", "TIMM_PREFIX"]

RANDOM_INIT_SUFFIX = ".random_init"
TIMM_PREFIX = "timm:"
_CATALOG: dict[str, ModelSpec] = {}


def register(spec: ModelSpec, replace: bool = False) -> ModelSpec:
    """Add a spec to the catalog.

    Args:
        spec: the spec; its name is the key.
        replace: allow overwriting an existing entry (otherwise a duplicate name is an error).
    Returns:
        The spec (so this also works as a decorator on a function returning a spec).
    """
    if spec.name in _CATALOG and not replace:
        raise ValueError(f"model {spec.name!r} is already in the catalog")
    _CATALOG[spec.name] = spec
    return spec


def list_models(include_dynamic: bool = False) -> list[str]:
    """Names of the registered models, in table order.

    Args:
        include_dynamic: also list the ``<name>.random_init`` controls.
    Returns:
        The names.
    """
    names = list(_CATALOG)
    return names + [n + RANDOM_INIT_SUFFIX for n in names] if include_dynamic else names


def get_spec(name: str) -> ModelSpec:
    """Return the spec of a model name.

    Args:
        name: a registered name, ``timm:<arch>``, or ``<name>.random_init``.
    Returns:
        The spec.
    Raises:
        KeyError: unknown name; the message lists the valid ones.
    """
    if name in _CATALOG:
        return _CATALOG[name]
    if name.endswith(RANDOM_INIT_SUFFIX):
        return _random_init(name)
    if name.startswith(TIMM_PREFIX):
        from pipeline.models.timm_specs import timm_spec  # local: inspecting timm builds a model

        return timm_spec(name.removeprefix(TIMM_PREFIX))
    raise KeyError(f"unknown model {name!r}; valid names: {', '.join(_CATALOG)}, "
                   f"{TIMM_PREFIX}<any timm model name>, or <name>{RANDOM_INIT_SUFFIX}")


def _random_init(name: str) -> ModelSpec:
    base = get_spec(name.removesuffix(RANDOM_INIT_SUFFIX))
    return dataclasses.replace(base, name=name, weights=WeightsRef("random-init"),
                               source=f"untrained {base.arch} (control, seed-initialised)", licence="n/a")


for _spec in SPEC_TABLE:
    register(_spec)
