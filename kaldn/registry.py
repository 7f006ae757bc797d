"""One registry of architectures and convolution variants: every model name, label and list derives from it.

Two kinds of entry, in the manner of timm's ``register_model`` and BasicSR's ``ARCH_REGISTRY``:

* a **convolution variant** (:func:`register_conv`, in ``kaldn/layers.py``): the layer inside every
  residual dense block of a *family* (RDN); its models are ``{backbone}-{conv}-x{scale}``, e.g.
  ``tiny-kdsconv-det-x4``;
* an **architecture** (:func:`register_architecture`, next to its ``nn.Module``): a family with
  named backbones (``rdn``: ``tiny``, ``small``, ``paper``) or a single network (a peer such as
  LESRCNN), whose models are ``{name}-x{scale}``, e.g. ``lesrcnn-x4``.

Each entry carries its name, the label the app and the tables show, its display order, the
options it takes and, for conv variants, the paper's claims it is compared on. Model names
(:func:`kaldn.models.model_names`), the app's choices, the evaluation claims, the benchmarks and
the tests read this registry; nothing else lists variants or scales. Adding one is one entry, e.g.
a KDSConv with a wider gate (README's example, run by ``tests/test_registry.py``)::

    register_conv("kdsconv-det-r4", functools.partial(KDSConv, kernel_pool="det", reduction=4),
                  label="KDSConv (det, r = 4)", order=35, options=("descriptor_norm",), depthwise=True)

and a single network is registered as LESRCNN is (a new kernel pooling is a new entry in ``kaldn.layers.KERNEL_POOLS`` with its branch in ``kaldn.layers.pool_kernels``)::

    register_architecture("lesrcnn", lambda scale: LESRCNN(scale), label="LESRCNN", order=100,
                          default=False, published=Published(...))

This module holds the tables only (no model code, no imports of its own); ``kaldn.models``
imports every built-in architecture, so query through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

SCALES = (2, 3, 4)  # the scales every built-in architecture is registered for


def require_scale(scale: int) -> None:
    """For the architectures' constructors: a ValueError unless ``scale`` is one of :data:`SCALES`."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(map(str, SCALES))}, got {scale}")


@dataclass(frozen=True)
class Claim:
    """A claim of the papers, checked on equal budgets: the entry it belongs to beats ``other``."""

    other: str
    text: str


@dataclass(frozen=True)
class ConvEntry:
    """A convolution variant: ``build(in_channels, out_channels, **options)`` -> a layer ending in a ReLU."""

    name: str
    build: Callable[..., Any]
    label: str
    order: int
    options: tuple[str, ...] = ()       # the options it takes (the attention's reduction, descriptor_norm)
    default: bool = True                # selected by default in the app's choices
    depthwise: bool = False             # has depthwise kernels (shown by the app's kernel view)
    kernel_pool: str | None = None      # attention computed from each kernel's det / avg / max (pooling ranking)
    claims: tuple[Claim, ...] = ()


@dataclass(frozen=True)
class Published:
    """Where a network's authors release weights, and how their tensor names map onto this project's."""

    paper: str                                  # citation
    url: str                                    # where the authors publish weights
    key: Callable[[str], str | None]            # published tensor name -> this module's (None: not in the layout)
    options: Callable[[Iterable[str]], dict[str, Any]] | None = None  # the options a release's tensor names imply


@dataclass(frozen=True)
class Architecture:
    """A network. ``build(scale=..., **options)`` for a single network; a family (``backbones`` given) is
    built as ``build(scale=..., conv=..., **backbone_preset, **options)``."""

    name: str
    build: Callable[..., Any]
    label: str
    order: int
    scales: tuple[int, ...] = SCALES
    options: Mapping[str, Any] = field(default_factory=dict)   # option -> default, recorded in model.config
    backbones: Mapping[str, Mapping[str, Any]] | None = None    # family: named presets
    default_backbone: str | None = None                         # family: the app's backbone
    default: bool = True                                        # single network: selected by default in the app
    published: Published | None = None                          # a peer with released weights (kaldn.convert)
    featured: tuple[str, ...] = ()                              # family: "{backbone}-{conv}" models on another
                                                                # backbone selected by default once shipped

    @property
    def family(self) -> bool:
        return self.backbones is not None


_CONVS: dict[str, ConvEntry] = {}
_ARCHITECTURES: dict[str, Architecture] = {}


def register_conv(name: str, build: Callable[..., Any], *, label: str, order: int,
                  options: tuple[str, ...] = (), default: bool = True, depthwise: bool = False,
                  kernel_pool: str | None = None, claims: tuple[Claim, ...] = ()) -> ConvEntry:
    """Add a convolution variant; every family (RDN) then offers ``{backbone}-{name}-x{scale}``."""
    if name in _CONVS:
        raise ValueError(f"conv {name!r} is already registered")
    entry = ConvEntry(name, build, label, order, tuple(options), default, depthwise, kernel_pool, tuple(claims))
    _CONVS[name] = entry
    return entry


def register_architecture(name: str, build: Callable[..., Any], *, label: str, order: int,
                          scales: tuple[int, ...] = SCALES, options: Mapping[str, Any] | None = None,
                          backbones: Mapping[str, Mapping[str, Any]] | None = None,
                          default_backbone: str | None = None, default: bool = True,
                          published: Published | None = None, featured: tuple[str, ...] = ()) -> Architecture:
    """Add an architecture: a single network (models ``{name}-x{scale}``) or, with ``backbones``, a family."""
    if name in _ARCHITECTURES:
        raise ValueError(f"architecture {name!r} is already registered")
    if backbones is not None and default_backbone not in backbones:
        raise ValueError(f"{name}: default_backbone must be one of {', '.join(backbones)}")
    if isinstance(featured, str):
        raise ValueError(f"{name}: featured must be a tuple of '{{backbone}}-{{conv}}' names, not a string")
    for stem in featured:
        backbone, _, conv = str(stem).partition("-")
        if backbones is None or backbone not in backbones or backbone == default_backbone or conv not in _CONVS:
            raise ValueError(f"{name}: featured model {stem!r} must be '{{backbone}}-{{conv}}' with a backbone other "
                             f"than {default_backbone!r} and a registered conv")
    entry = Architecture(name, build, label, order, tuple(scales), MappingProxyType(dict(options or {})),
                         None if backbones is None else MappingProxyType(dict(backbones)), default_backbone,
                         default, published, tuple(featured))
    _ARCHITECTURES[name] = entry
    return entry


def conv_entries() -> list[ConvEntry]:
    """Every convolution variant, in display order."""
    return sorted(_CONVS.values(), key=lambda e: (e.order, e.name))


def conv_entry(name: str) -> ConvEntry:
    try:
        return _CONVS[name]
    except KeyError:
        raise ValueError(f"unknown conv {name!r}; valid: {', '.join(e.name for e in conv_entries())}") from None


def architectures() -> list[Architecture]:
    """Every architecture, in display order."""
    return sorted(_ARCHITECTURES.values(), key=lambda a: (a.order, a.name))


def architecture(name: str) -> Architecture:
    try:
        return _ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; valid: "
                         f"{', '.join(a.name for a in architectures())}") from None


def unregister_conv(name: str) -> None:
    """Remove a convolution variant (tests; a plugin withdrawing its entry)."""
    conv_entry(name)
    del _CONVS[name]


def unregister_architecture(name: str) -> None:
    """Remove an architecture (tests; a plugin withdrawing its entry)."""
    architecture(name)
    del _ARCHITECTURES[name]
