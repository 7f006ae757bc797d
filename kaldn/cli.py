"""The ``kaldn`` command: upscale images, and the project's other tools as sub-commands.

    kaldn photo.png [more.png ...] --model tiny-kdsconv-det-x4 --out out/   # upscale (also: kaldn upscale ...)
    kaldn train --model tiny-kdsconv-det-x4 --data DIR --out runs/mine      # python -m kaldn.train
    kaldn evaluate --models tiny-ldsconv-x4 --datasets set5 --scale 4       # python -m kaldn.evaluate
    kaldn hub pull | push --repo-id USER/NAME                                # python -m kaldn.hub
    kaldn cards checkpoints                                                  # python -m kaldn.cards

A first argument that names a sub-command is that sub-command (an image file called ``train`` is
upscaled with ``kaldn upscale train``). A sub-command whose module an installation lacks is refused with a
message, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from pathlib import Path

from .checkpoint import CheckpointError
from .hub import ModelNotFoundError, add_source_option, load_model
from .images import ImageError, load_image, save_png
from .inference import TILE_SIZE, prepare_model, upscale

# sub-command -> module with a ``main(argv) -> int``; imported only when used (training pulls in more).
SUBCOMMANDS = {"train": "kaldn.train", "evaluate": "kaldn.evaluate", "convert": "kaldn.convert",
               "hub": "kaldn.hub", "cards": "kaldn.cards"}


def _tile_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of LR pixels, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (whole image) or a positive number of LR pixels, got {value}")
    return value


def _file_identity(path: Path) -> object:
    """The file on disk (device, inode) when it exists, else its resolved path: links and ``..`` name one file."""
    try:
        stat = path.stat()
        return (stat.st_dev, stat.st_ino)
    except OSError:
        return str(path.resolve())


def _output_key(path: Path) -> str:
    """Case-folded, as macOS and Windows folders ignore case: A_x4.png and a_x4.png would be one file there."""
    return str(path.resolve()).casefold()


def available_subcommands() -> dict[str, str]:
    return {name: module for name, module in SUBCOMMANDS.items() if importlib.util.find_spec(module) is not None}


def upscale_main(argv: list[str] | None = None, prog: str = "kaldn") -> int:
    """Upscale image files; 0 when all were written, 1 when some were skipped, 2 when the model cannot load."""
    parser = argparse.ArgumentParser(prog=prog, description="Upscale images with a kaldn model. Sub-commands: "
                                     + ", ".join(available_subcommands()) + " (kaldn SUB-COMMAND --help).")
    parser.add_argument("inputs", nargs="+", help="image files")
    parser.add_argument("--model", default="tiny-kdsconv-det-x4",
                        help="model name, checkpoint folder, .safetensors file or hf-hub:ORG/REPO[/SUBFOLDER][@REV]")
    add_source_option(parser)
    parser.add_argument("--out", default=".", help="output folder (files are written as NAME_xS.png)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"], help="fp16/bf16: CUDA only")
    parser.add_argument("--tile", type=_tile_size, default=TILE_SIZE, help="LR tile side (0: whole image)")
    args = parser.parse_args(argv)
    try:
        model = prepare_model(load_model(args.model, args.source), args.device, args.precision)
    except (ModelNotFoundError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    scale, failures = model.config["scale"], 0
    out_dir = Path(args.out)
    unique: dict[object, str] = {}
    for path in args.inputs:  # the same file named twice (or through a link) is upscaled once
        unique.setdefault(_file_identity(Path(path)), path)
    inputs = list(unique.values())
    targets = [out_dir / f"{Path(path).stem}_x{scale}.png" for path in inputs]
    keys = [_output_key(t) for t in targets]
    clashes = sorted({str(t) for t, k in zip(targets, keys) if keys.count(k) > 1})
    if clashes:  # refused before any work: a second image must not silently overwrite the first one's result
        print(f"error: several inputs would be written to {', '.join(clashes)}; upscale them in separate runs "
              "or --out folders", file=sys.stderr)
        return 2
    overwritten = [str(t) for t in targets if _file_identity(t) in unique]
    if overwritten:  # e.g. a.png and a_x4.png in one run: a's result would replace a_x4.png before it is read
        print(f"error: {', '.join(overwritten)} is both an input and an output; use another --out folder",
              file=sys.stderr)
        return 2
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot make the output folder {out_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if args.tile and getattr(model, "global_context", False):
        print(f"note: {model.config['model']} pools statistics over its whole input: an image over "
              f"{args.tile} pixels a side is tiled, which moves its output by a few grey levels; --tile 0 runs "
              "whole images (more memory)", file=sys.stderr)
    for path, target in zip(inputs, targets):
        try:
            image = load_image(path)
        except ImageError as exc:
            print(f"skipping {path}: {exc}", file=sys.stderr)
            failures += 1
            continue
        start = time.perf_counter()
        result = upscale(image, model, tile=args.tile or None)
        save_png(result, target)
        print(f"{path} -> {target} ({result.shape[1]}x{result.shape[0]}, {time.perf_counter() - start:.2f} s)")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """``kaldn [upscale] FILES ...`` or ``kaldn SUB-COMMAND ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "upscale":
        return upscale_main(argv[1:], prog="kaldn upscale")
    if argv and argv[0] in SUBCOMMANDS:
        modules = available_subcommands()
        if argv[0] not in modules:
            print(f"error: the {argv[0]} sub-command is not part of this installation", file=sys.stderr)
            return 2
        return importlib.import_module(modules[argv[0]]).main(argv[1:]) or 0
    return upscale_main(argv)


if __name__ == "__main__":
    sys.exit(main())
