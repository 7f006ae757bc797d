"""What a user can compare: variant keys, resolved at a scale to the model that runs.

A variant key is a registered variant (``dsconv``, ``kdsconv-det``, ... resolved at the chosen scale to
its model on the variants' backbone, see :func:`kaldn.models.variants`), ``bicubic``, a full model name
(a bundled model of another backbone, ``small-kdsconv-det-x4``), or the key of one of the session's
fine-tuned or uploaded models (:mod:`kaldn.session_models`). A client's list is checked and capped by
:func:`requested_keys` before anything is resolved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .errors import UserError, quoted
from .hub import available_models
from .models import BICUBIC, is_featured, model_label, on_other_backbone, parse_model_name, variant_of, variants
from .session_models import SessionModels, is_session_key

__all__ = ["BICUBIC", "BICUBIC_LABEL", "ResolvedVariant", "default_variants", "other_backbone_models",
           "requested_keys", "resolve_variant", "runnable_selection", "variant_choices", "variant_label"]

BICUBIC_LABEL = "Bicubic"

# --- variants: what the user can choose, resolved at a scale ----------------------------------------------

@dataclass
class ResolvedVariant:
    key: str
    label: str
    ref: str | None                 # what load_model takes: a model name or a checkpoint directory
    model: str | None               # model name
    unavailable: str | None = None  # why it cannot run at this scale


def variant_label(key: str, registry: SessionModels | None = None) -> str:
    if key == BICUBIC:
        return BICUBIC_LABEL
    labels = {v.key: v.label for v in variants()}
    if key in labels:
        return labels[key]
    if registry is not None and (entry := registry.get(key)) is not None:
        return entry.label
    try:
        return model_label(key)
    except ValueError:  # not a model name
        return key


def other_backbone_models(available: Sequence[str], scale: int | None = None) -> list[str]:
    """The ``available`` family models on a backbone other than the variants' (``small-kdsconv-det-x4``), which
    the app offers beside the variants; by scale, then variant order; ``scale`` keeps that scale's only."""
    found = [n for n in available if on_other_backbone(n) and (scale is None or parse_model_name(n).scale == scale)]
    return sorted(found, key=lambda n: (parse_model_name(n).scale, variant_of(n).order, n))


def requested_keys(requested: Any, scale: int, registry: SessionModels | None = None) -> list[str]:
    """A client's list of variant keys, checked before anything is resolved or run: strings only, stripped,
    de-duplicated (order kept), at least one, and no more than there are distinct choices at ``scale``
    (each costs a model run and a full-size output)."""
    if not isinstance(requested, (list, tuple)) or not all(isinstance(v, str) for v in requested):
        raise UserError("The variants must be a list of names.")
    keys = list(dict.fromkeys(v.strip() for v in requested))
    if not keys:
        raise UserError("Choose at least one variant to run.")
    limit = (1 + len(variants()) + len(other_backbone_models(available_models(), scale))
             + (len(registry.items()) if registry is not None else 0))
    if len(keys) > limit:
        raise UserError(f"At most {limit} variants can be compared at once; {len(keys)} were given.")
    return keys


def resolve_variant(key: str, scale: int, registry: SessionModels | None = None) -> ResolvedVariant:
    """A variant key -> what to run at ``scale`` (``unavailable`` set when it cannot run at that scale)."""
    key = str(key).strip()
    if key == BICUBIC:
        return ResolvedVariant(key, BICUBIC_LABEL, None, None)
    known = {v.key: v for v in variants()}
    if key in known:
        v = known[key]
        if scale not in v.scales:
            return ResolvedVariant(key, v.label, None, None, f"no x{scale} model")
        name = v.model_name(scale)
        return ResolvedVariant(key, v.label, name, name)
    if registry is not None and (entry := registry.get(key)) is not None:
        model_scale = parse_model_name(entry.model).scale
        # Messages never repeat the label: they are shown after it ("<label>: <message>").
        missing = None if model_scale == scale else f"a x{model_scale} model; the chosen scale is x{scale}"
        return ResolvedVariant(key, entry.label, str(entry.path), entry.model, missing)
    if is_session_key(key):  # expired, evicted, or another session's: the same answer, so nothing leaks
        raise UserError(f"{quoted(key)} is not one of this session's models (any more): fine-tuned and uploaded models "
                        "belong to the session that made them and are dropped after a while unused. Fine-tune "
                        "or upload it again.")
    try:
        spec = parse_model_name(key)
    except ValueError:
        valid = [BICUBIC, *known] + ([e.key for e in registry.items()] if registry is not None else [])
        raise UserError(f"Unknown variant {quoted(key)}; valid: {', '.join(valid)} or a model name "
                        f"such as {variants()[0].model_name(variants()[0].scales[-1])}.") from None
    missing = None if spec.scale == scale else f"a x{spec.scale} model; the chosen scale is x{scale}"
    return ResolvedVariant(key, model_label(key), key, key, missing)


def variant_choices(scale: int, available: Sequence[str], registry: SessionModels | None = None
                    ) -> list[tuple[str, str]]:
    """(label, key) pairs for a checkbox group; labels say which variants have no checkpoint at ``scale``."""
    choices = [(BICUBIC_LABEL, BICUBIC)]
    for v in variants():
        shipped = scale in v.scales and v.model_name(scale) in available
        choices.append((v.label if shipped else f"{v.label} (no x{scale} checkpoint)", v.key))
    for name in other_backbone_models(available):
        model_scale = parse_model_name(name).scale
        choices.append((model_label(name) if model_scale == scale else f"{model_label(name)} (x{model_scale} only)",
                        name))
    for entry in registry.items() if registry is not None else []:
        model_scale = parse_model_name(entry.model).scale
        choices.append((entry.label if model_scale == scale else f"{entry.label} (x{model_scale} only)", entry.key))
    return choices


def ticked(selected: Any) -> list[str]:
    """A client's ticked keys, as far as they are strings: they only carry ticks across a change, so anything
    else is dropped, not refused."""
    return [key for key in selected if isinstance(key, str)] if isinstance(selected, (list, tuple)) else []


def runnable_selection(selected: Sequence[str] | None, scale: int, available: Sequence[str],
                       registry: SessionModels | None = None) -> list[str]:
    """The keys of ``selected`` that can run at ``scale`` (a scale switch unticks fine-tuned models and variants
    of another scale instead of leaving them ticked to fail); the defaults when none is left."""
    runnable = {BICUBIC} | {v.key for v in variants() if scale in v.scales and v.model_name(scale) in available}
    runnable |= set(other_backbone_models(available, scale))
    runnable |= {e.key for e in (registry.items() if registry is not None else [])
                 if parse_model_name(e.model).scale == scale}
    kept = [key for key in ticked(selected) if key in runnable]
    return kept or default_variants(scale, available)


def default_variants(scale: int, available: Sequence[str]) -> list[str]:
    """Bicubic, every variant selected by default that has a checkpoint at ``scale``, and the family's featured
    models of another backbone shipped at ``scale`` (the long-trained ``small-kdsconv-det``: the best a user can
    get here, on the slider's right as the best PSNR when there is a ground truth). Other models of another backbone are offered but not
    ticked: beside the variants' one budget, one showcase is enough."""
    return ([BICUBIC] + [v.key for v in variants()
                         if v.default and scale in v.scales and v.model_name(scale) in available]
            + [name for name in other_backbone_models(available, scale) if is_featured(name)])
