"""Turn a published PyTorch checkpoint, or a bare kaldn ``.safetensors`` file, into a kaldn checkpoint folder.

    python -m kaldn.convert --arch fdiwn --scale 4 model_best.pt OUT_DIR
    python -m kaldn.convert --arch lesrcnn --scale 4 lesrcnn_x4.pth OUT_DIR
    python -m kaldn.convert model.safetensors OUT_DIR              # config in the file's metadata
    python -m kaldn.convert --arch tiny-kdsconv-det --scale 4 model.safetensors OUT_DIR

The result is an ordinary checkpoint folder (``model.safetensors``, ``config.json``,
``README.md``) that ``kaldn.load_model(OUT_DIR)`` loads.

Safety: a PyTorch file is read with ``torch.load(weights_only=True)`` and nothing
else, so a pickle that carries code is refused, never run. Strictness: every
tensor of the file must map onto the architecture and every tensor of the
architecture must come from the file, with the same shape; anything else is an
error naming the tensors. The published name layouts live beside each
architecture (``kaldn/archs/*.py``, ``published_key``).

Weights converted from a peer's release are the authors', not this project's:
the folder's config says so (``"weights": {"origin": "third-party", ...}``), its
model card names the source, and ``python -m kaldn.hub push`` refuses it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .checkpoint import (CONFIG_METADATA_KEY, CONFIG_NAME, WEIGHTS_NAME, CheckpointError, header_config,
                         save_checkpoint)
from .layers import DESCRIPTOR_NORMS
from .models import architectures, create_model, options_taken, parse_model_name
from .registry import SCALES, Architecture

# Containers some trainers wrap the state dict in (EDSR-style code saves it bare; BasicSR under "params").
WRAPPER_KEYS = ("state_dict", "params", "params_ema", "model")
MAX_NAMES = 6
MAX_NAME_CHARS = 80        # a tensor or model name quoted in a message
MAX_MESSAGE_CHARS = 500    # what convert_isolated passes on from the child
RECORD_KEYS = ("origin", "architecture", "paper", "published_at", "source_file", "source_sha256", "converted_by",
               "note", "repacked_from", "repacked_sha256", "repacked_by")
MAX_RECORD_CHARS = 512
MAX_OPTION_CHARS = 64      # an architecture option's value is a short name ("standardize", "pixelshuffle")
THIRD_PARTY_NOTE = ("the authors' released weights, not the kaldn project's; the source carries no licence: "
                    "do not redistribute, bundle or upload them")


def published_architectures() -> dict[str, Architecture]:
    """The architectures whose authors release weights this converter reads, by name (from the registry)."""
    return {a.name: a for a in architectures() if a.published is not None}


class ConversionError(ValueError):
    """A file that cannot be converted; the message names the file and the tensors at fault."""


def _short(name: str) -> str:
    return name if len(name) <= MAX_NAME_CHARS else name[:MAX_NAME_CHARS] + "..."


def _names(keys: Sequence[str]) -> str:
    keys = [_short(str(k)) for k in keys]
    return ", ".join(keys[:MAX_NAMES]) + (f" ... ({len(keys)} in all)" if len(keys) > MAX_NAMES else "")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_torch_state(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a PyTorch checkpoint, read with ``weights_only=True`` only; ConversionError otherwise."""
    path = Path(path)
    if tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < (2, 6):
        raise ConversionError("refused: torch >= 2.6 is needed to read PyTorch files safely (weights_only)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConversionError(f"{path}: no such file") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError,
            MemoryError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, MemoryError) or "can't allocate memory" in first:  # torch's CPU allocator says so
            asked = re.search(r"allocate (\d+) bytes", first)
            size = f" ({int(asked.group(1)) / 2**20:,.0f} MiB at once)" if asked else ""
            raise ConversionError(f"{path}: refused: it asks for more memory than a conversion may use{size}; "
                                  "a checkpoint of a supported architecture needs a few MiB") from None
        raise ConversionError(
            f"{path}: refused: not a plain PyTorch tensor file. Only torch.load(weights_only=True) is used, "
            f"which reads tensors and plain containers and never runs code from the file ({first})") from None
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            raise ConversionError(f"{path}: has no entry {key!r}")
        obj = obj[key]
    elif isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        wrappers = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        if len(wrappers) > 1:
            raise ConversionError(f"{path}: holds several state dicts ({', '.join(wrappers)}); choose one with --key")
        if wrappers:
            obj = obj[wrappers[0]]
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConversionError(f"{path}: entries that are not tensors: {_names(not_tensors)}")
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def map_state(state: Mapping[str, torch.Tensor], name: str, source: str,
              rename: Callable[[str], str | None], options: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Rename ``state`` onto model ``name`` (built with ``options``) strictly: every tensor used once, every
    shape equal."""
    expected = _build(name, options or {}, source).state_dict()
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unknown, duplicate = [], []
    for key, tensor in state.items():
        target = rename(key)
        if target is None:
            unknown.append(key)
        elif target in mapped:
            duplicate.append(f"{origin[target]} and {key} (both {target})")
        else:
            mapped[target], origin[target] = tensor, key
    unexpected = unknown + [origin[k] for k in mapped if k not in expected]
    missing = [k for k in expected if k not in mapped]
    wrong = [f"{origin[k]} {tuple(mapped[k].shape)} (expected {tuple(expected[k].shape)})"
             for k in mapped if k in expected and mapped[k].shape != expected[k].shape]
    problems = [f"{label}: {_names(keys)}" for label, keys in
                (("unexpected tensors", unexpected), ("missing tensors", missing), ("wrong shape", wrong),
                 ("mapped twice", duplicate)) if keys]
    if problems:
        raise ConversionError(f"{source}: does not fit {name} ({'; '.join(problems)})")
    return {k: v.detach().to(torch.float32).contiguous() for k, v in mapped.items()}


def _recorded_weights(metadata: Mapping[str, str], source: Path) -> dict:
    """The ``weights`` record ``save_checkpoint`` leaves in a safetensors file's metadata, if any."""
    if "weights" not in metadata:
        return {}
    try:
        record = json.loads(metadata["weights"])
    except (ValueError, RecursionError):  # not JSON, a number too long to read, nesting too deep
        raise ConversionError(f"{source}: its 'weights' metadata is not JSON") from None
    if not isinstance(record, dict):
        raise ConversionError(f"{source}: its 'weights' metadata is not a JSON object")
    # Only the fields save_checkpoint writes, as short strings: nothing else of a stranger's file goes on.
    return {k: v for k, v in record.items() if k in RECORD_KEYS and isinstance(v, str) and len(v) <= MAX_RECORD_CHARS}


def _identity(key: str) -> str:
    return key


def _build(name: str, options: Mapping[str, Any], source: str) -> torch.nn.Module:
    try:
        return create_model(name, **options)
    except ValueError as exc:  # an option value the architecture does not know (from a file's own config)
        raise ConversionError(f"{source}: {str(exc)[:300]}") from None


def _recorded_options(name: str, metadata: Mapping[str, str], source: Path) -> dict[str, Any]:
    """The architecture options a kaldn ``.safetensors`` file's own config records (``descriptor_norm``, SCNet's
    upsampler), so the model is rebuilt as it was trained; none for a file from before configs were stored."""
    try:
        config = header_config(metadata, str(source))
    except CheckpointError as exc:
        raise ConversionError(str(exc)) from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConversionError(f"{source}: its {CONFIG_METADATA_KEY!r} metadata is not a JSON object")
    if config.get("model", name) != name:  # the config of another model: its options are not this one's
        raise ConversionError(f"{source}: its config is for {_short(str(config['model']))}, not {name}")
    options = options_taken(name, config)
    odd = [k for k, v in options.items() if not (isinstance(v, str) and len(v) <= MAX_OPTION_CHARS)]
    if odd:
        raise ConversionError(f"{source}: its config's {', '.join(odd)} is not a short name")
    return options


_SCALE_SUFFIX = re.compile(r"-x\d+$")  # a whole model name ends in its scale


def _model_name(arch: str | None, scale: int | None, metadata_name: str | None, source: Path) -> str:
    if arch is not None or scale is not None:
        named_scale = arch is not None and _SCALE_SUFFIX.search(arch)
        if arch is None or (scale is None and not named_scale):
            raise ConversionError("give --arch and --scale together (or --arch with a whole model name, "
                                  "e.g. tiny-kdsconv-det-x4)")
        if named_scale and scale is not None:
            raise ConversionError(f"--arch {arch} already names a scale: give --arch {_SCALE_SUFFIX.sub('', arch)} "
                                  f"--scale {scale}, or --arch {arch} alone")
        name = arch if named_scale else f"{arch}-x{scale}"
        if metadata_name is not None and metadata_name != name:
            raise ConversionError(f"{source}: its metadata says {_short(metadata_name)}, not {name}")
    elif metadata_name is not None:
        name = metadata_name
    else:
        raise ConversionError(f"{source}: no model name in its metadata; give --arch and --scale")
    try:
        parse_model_name(name)
    except ValueError:
        raise ConversionError(f"{source}: unknown model {_short(name)!r} (python -m kaldn.convert --help; "
                              "kaldn.models.model_names() lists every name)") from None
    return name


def convert(source: str | Path, out_dir: str | Path, arch: str | None = None, scale: int | None = None,
            key: str | None = None, descriptor_norm: str | None = None) -> Path:
    """Convert ``source`` into the checkpoint folder ``out_dir``; returns it. ConversionError when it cannot."""
    source, out_dir = Path(source), Path(out_dir)
    if not source.is_file():
        raise ConversionError(f"{source}: no such file")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConversionError(f"{out_dir}: exists and is not a folder; name a checkpoint folder to write")
    metadata: dict[str, str] = {}
    if source.suffix == ".safetensors":
        try:
            with safe_open(str(source), framework="pt") as f:
                metadata = f.metadata() or {}
            state = load_file(str(source))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ConversionError(f"{source}: not a valid safetensors file ({exc})") from None
    else:
        state = read_torch_state(source, key)
    name = _model_name(arch, scale, metadata.get("model"), source)
    spec = parse_model_name(name)
    third_party = spec.backbone is None and source.suffix != ".safetensors"  # a peer, from a published file
    peer = published_architectures().get(spec.arch)
    if third_party and peer is None:
        raise ConversionError(f"no published layout is known for {spec.arch}")
    rename = peer.published.key if third_party else _identity
    if third_party:  # what the release's layout says (SCNet-T: which upsampler), else the defaults
        try:
            options = peer.published.options(state.keys()) if peer.published.options else {}
        except ValueError as exc:
            raise ConversionError(f"{source}: {exc}") from None
    else:
        options = _recorded_options(name, metadata, source)
    if descriptor_norm is not None:
        if descriptor_norm not in DESCRIPTOR_NORMS:
            raise ConversionError(f"descriptor_norm must be one of {DESCRIPTOR_NORMS}, got {descriptor_norm!r}")
        asked = options_taken(name, {"descriptor_norm": descriptor_norm})
        if options.get("descriptor_norm", descriptor_norm) != descriptor_norm:
            raise ConversionError(f"{source}: it records descriptor_norm {options['descriptor_norm']}, not "
                                  f"{descriptor_norm}: the weights were trained with it")
        options = {**options, **asked}
    where = (f" (read as {', '.join(f'{k} {v}' for k, v in options.items())}, from its tensor names)"
             if third_party and options else "")
    model = _build(name, options, str(source))
    if third_party and set(state) == set(model.state_dict()):
        raise ConversionError(f"{source}: its tensors already carry kaldn's names for {name}, so it is not the "
                              f"authors' release ({peer.published.url}); kaldn's own weights are converted from "
                              ".safetensors only")
    mapped = map_state(state, name, str(source) + where, rename, options)
    model.load_state_dict(mapped, strict=True)
    digest = sha256(source)
    command = ("python -m kaldn.convert" + (f" --arch {arch}" if arch else "") + (f" --scale {scale}" if scale else "")
               + f" {source.name} OUT_DIR")
    recorded = _recorded_weights(metadata, source)
    if third_party:
        weights = {"origin": "third-party", "architecture": peer.label, "paper": peer.published.paper,
                   "published_at": peer.published.url,
                   "source_file": source.name, "source_sha256": digest, "converted_by": command,
                   "note": THIRD_PARTY_NOTE}
    elif recorded.get("origin") == "third-party":
        # A file cut from a converted folder stays marked: the weights are still the authors'.
        weights = {**recorded, "repacked_from": source.name, "repacked_sha256": digest, "repacked_by": command}
    else:
        weights = {"origin": "kaldn", "source_file": source.name, "source_sha256": digest, "converted_by": command}
    try:
        save_checkpoint(out_dir, model, {"weights": weights})
        (out_dir / "README.md").write_text(model_card(name, weights))
    except OSError as exc:
        raise ConversionError(f"{out_dir}: cannot write the checkpoint there ({exc.strerror or exc})") from None
    return out_dir


def cap_address_space(extra_bytes: int) -> int:
    """Limit this process's address space to what it maps now plus ``extra_bytes``; returns the limit.

    Counted from after the imports because what torch maps at import depends on its build (the CPU
    build ~0.7 GiB, a CUDA build several GiB) and says nothing about the file being read."""
    import resource  # Unix only, like the isolation it serves
    try:
        mapped = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):  # no /proc: the cap counts everything
        mapped = 0
    limit = mapped + int(extra_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return limit


# The child caps itself after its imports and before it opens the file (no preexec_fn: the app is threaded).
_ISOLATED = ("import sys; from kaldn.convert import cap_address_space, main; "
             "cap_address_space(int(sys.argv[1])); sys.exit(main(sys.argv[2:]))")


def convert_isolated(source: str | Path, out_dir: str | Path, arch: str | None = None, scale: int | None = None,
                     *, memory_bytes: int = 1 << 30, timeout_s: float = 120.0, display_name: str | None = None
                     ) -> Path:
    """:func:`convert` in a child process whose memory and time are capped: for files from strangers.

    A file built to allocate without bound (a legacy PyTorch file may declare any storage size) or to
    take forever then fails the child, not the caller. ``memory_bytes`` is the address space the child
    may add to what its imports mapped. Error messages name ``display_name`` instead of ``source``'s path.
    """
    source, out_dir = Path(source), Path(out_dir)
    shown = display_name or source.name
    cmd = [sys.executable, "-c", _ISOLATED, str(int(memory_bytes)), str(source), str(out_dir)]
    cmd += ["--arch", arch] if arch is not None else []
    cmd += ["--scale", str(scale)] if scale is not None else []
    package_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    limits = f"{memory_bytes / 2**20:.0f} MiB of memory (beyond the converter's own) and {timeout_s:.0f} s"
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"{shown}: could not be converted within {limits}") from None
    if done.returncode == 0 and (out_dir / WEIGHTS_NAME).is_file():
        return out_dir
    errors = [line[len("error: "):] for line in done.stderr.splitlines() if line.startswith("error: ")]
    if done.returncode == 2 and errors:
        message = errors[-1].replace(str(source), shown)
        raise ConversionError(message[:MAX_MESSAGE_CHARS] + ("..." if len(message) > MAX_MESSAGE_CHARS else ""))
    raise ConversionError(f"{shown}: could not be converted within {limits}")


def model_card(name: str, weights: dict) -> str:
    """The folder's README: where the weights come from, and whose they are."""
    if weights.get("origin") != "third-party":
        return (f"# {name}\n\nA kaldn checkpoint made by `{weights['converted_by']}` from the single file "
                f"`{weights['source_file']}` (sha256 `{weights['source_sha256']}`). "
                f"Load with `kaldn.load_model(\"<this folder>\")`.\n")
    repacked = (f"\nRepacked from the single file `{weights['repacked_from']}` by `{weights['repacked_by']}`.\n"
                if "repacked_from" in weights else "")
    return f"""---
library_name: kaldn
tags: [super-resolution, kaldn, third-party-weights]
---

# {name}: {weights.get('architecture', name)} with its authors' released weights

**These weights are not the kaldn project's.** They are the weights the authors of
{weights.get('paper', 'the original paper')} released at {weights.get('published_at', 'their repository')},
file `{weights.get('source_file')}` (sha256 `{weights.get('source_sha256')}`), converted onto kaldn's own
implementation of the architecture by `{weights.get('converted_by')}`. The source carries no licence: use
them to verify and compare, and do not redistribute, bundle or upload them (`python -m kaldn.hub push`
refuses this folder).
{repacked}
Load with `kaldn.load_model("<this folder>")`; input and output are RGB in [0, 1], like every kaldn model.
Evaluate with `python -m kaldn.evaluate --models <this folder> --datasets set5 set14 --scale {name.rsplit('-x', 1)[1]}`.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kaldn.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a published .pt/.pth state dict, or a kaldn .safetensors file")
    parser.add_argument("out_dir", help="checkpoint folder to write")
    parser.add_argument("--arch", help=f"peer ({', '.join(published_architectures())}) or kaldn architecture "
                                       "(e.g. tiny-kdsconv-det) with --scale, or a whole model name (tiny-kdsconv-det-x4)")
    parser.add_argument("--scale", type=int, choices=SCALES)
    parser.add_argument("--key", help="entry of the file holding the state dict, when it holds several")
    parser.add_argument("--descriptor-norm", choices=DESCRIPTOR_NORMS, help="KDSConv models only")
    args = parser.parse_args(argv)
    try:
        out = convert(args.source, args.out_dir, args.arch, args.scale, args.key, args.descriptor_norm)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out / WEIGHTS_NAME}, {out / CONFIG_NAME} and {out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
