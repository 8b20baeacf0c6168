"""The names the callback logs and writes: its exact logged names, and its report files' names.

Only the names the callback logs are its own: monitors, the clean-up of stale values and the
check for a second logger of the same name match these exact names, never a string prefix of
the user's (with ``prefix="val/"``, ``val/loss`` is the user's).
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set

from liegg_lightning.functional.layers import MODEL_OUTPUT

__all__ = ["check_prefixes", "clash_message", "is_logged_name", "legacy_state", "new_clashes", "owned_names",
           "report_file_name"]

#: The names the callback logs after its prefix (and a layer's name): the report's summary, the
#: sample count and the drift.
LOGGED_NAMES = frozenset({
    "symmetry_variance", "symmetry_variance_stderr", "normalized_variance", "relative_variance", "nullity",
    "closure_error", "symmetry_bias", "subspace_bias", "border_share", "num_samples", "generator_drift",
})
#: Families of names: the known generator's (or transformation's) name comes after them.
LOGGED_FAMILIES = ("variance/", "transform/")


def is_logged_name(name: str, layers: Iterable[str] = ()) -> bool:
    """Whether ``name`` (the part after the prefix) is one the callback logs during ``fit``."""
    candidates = [name] + [name[len(layer) + 1:] for layer in layers if name.startswith(f"{layer}/")]
    return any(c in LOGGED_NAMES or any(c.startswith(f) and len(c) > len(f) for f in LOGGED_FAMILIES)
               for c in candidates)


def owned_names(keys: Iterable[str], prefix: str, layers: Sequence[str]) -> List[str]:
    """The ``keys`` that are the callback's own fit values under ``prefix``."""
    return [k for k in keys if k.startswith(prefix) and is_logged_name(k[len(prefix):], layers)]


def new_clashes(keys: Iterable[str], prefix: str, layers: Sequence[str], seen: Set[str]) -> List[str]:
    """The callback's names among ``keys`` not in ``seen`` (added to it): logged by something else.

    Called after a run the callback logged nothing in (the sanity check, an epoch without an
    analysis, where its stale values were removed): any of its names there came from elsewhere.
    """
    found = [k for k in owned_names(keys, prefix, layers) if k not in seen]
    seen.update(found)
    return found


def _file_prefix(prefix: str) -> str:
    """The prefix as report files carry it: safe characters only."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", prefix).strip("-") or "liegg"


def check_prefixes(prefix: str, others: Sequence[str]) -> None:
    """Refuse a prefix another LieGGCallback of the Trainer has, or one whose report files it would overwrite."""
    if prefix in others:
        raise ValueError(
            f"Two LieGGCallbacks share the prefix {prefix!r}: their values would mix. "
            "Give each its own `prefix` (e.g. 'liegg_images/')."
        )
    clash = [other for other in others if _file_prefix(other) == _file_prefix(prefix)]
    if clash:
        raise ValueError(
            f"The LieGGCallback prefixes {prefix!r} and {clash[0]!r} write report files of the same names "
            f"({_file_prefix(prefix)}-report_...): give them prefixes that differ in letters or digits."
        )


def report_file_name(prefix: str, stage: str, epoch: int, step: int, index: int, layer: str) -> str:
    """``<prefix>-report_<stage>_epoch<E>_step<S>_<n>[_layer-<name>].json``: one distinct name per analysis."""
    where = f"_layer-{re.sub(r'[^A-Za-z0-9_.-]+', '-', layer)}" if layer != MODEL_OUTPUT else ""
    return f"{_file_prefix(prefix)}-report_{stage}_epoch{epoch:04d}_step{step:07d}_{index:04d}{where}.json"


def clash_message(names: Sequence[str]) -> str:
    """What to say when something besides the callback logs its names: Lightning keeps one value per name."""
    return (f"LieGGCallback: something else logs {', '.join(names)} too (the LightningModule or another callback), "
            "and Lightning keeps one value per name. Rename yours or change `prefix`.")


def legacy_state(states: Mapping[Any, Any], state_key: str, prefix: str) -> Optional[Dict[str, Any]]:
    """The callback's state in a checkpoint of version 0.1, keyed by prefix and action repr; else ``None``."""
    if state_key in states:
        return None  # today's key: Lightning restores it itself
    marker = f"'prefix': {prefix!r}"
    legacy = [k for k in states if isinstance(k, str) and k.startswith("LieGGCallback{") and marker in k]
    return states[legacy[0]] if len(legacy) == 1 else None
