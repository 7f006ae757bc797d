"""Inference speed and memory of every conv variant, on the path the app uses (fused, channels_last).

    python -m benchmarks.speed [--threads 2] [--repeats 7] [--paper-repeats 1] [--peer-repeats 3]

Prints, at x4 for the tiny and paper backbones and the seed papers' peers
(LESRCNN, FDIWN, SCNet-T, in the same run): parameters, multiply-adds and
CPU milliseconds for a 256x256 input (median of repeated runs), and peak memory
(each model measured in its own process, so peak RSS is its own); the ratio
fused-KDSConv / LinearDSConv time measured side by side; peak RSS of tiled x4
upscaling of a 1920x1080 input; and library time / ONNX Runtime time for the
same tiny x4 model (targets: <= 1.02, < 2 GiB, <= 1.25). On CUDA, if present,
the GPU time and the largest difference from the CPU output.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from kaldn.inference import prepare_model, upscale
from kaldn.models import count_parameters, create_model, multiply_adds
from kaldn.registry import architectures, conv_entries

CONVS = [c.name for c in conv_entries()]  # every registered conv variant, in display order
# Every registered single network (the seed papers' peers) at x4; random weights: speed does not depend on them.
PEERS = [f"{a.name}-x4" for a in architectures() if not a.family]
SIZE = 256


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# Wall clock by default; --cpu-time switches to this process's CPU seconds, which a busy shared machine
# inflates far less (meaningful with --threads 1, where CPU time is the work itself).
CLOCK = time.perf_counter


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = CLOCK()
        fn()
        times.append(CLOCK() - start)
    return 1000 * statistics.median(times)


def child_model(name: str, repeats: int, warmup: int) -> dict:
    """One model in a fresh process: params, MACs, median ms, peak RSS of a 256x256 forward pass."""
    model = create_model(name)
    fast = prepare_model(model, device="cpu")
    x = torch.rand(1, 3, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    rss_before = _peak_rss_mib()
    with torch.inference_mode():
        for _ in range(warmup):
            fast(x)
        ms = _time(lambda: fast(x), repeats)
    # Conv MACs scale exactly with the output area: count on a 64x64 input (cheap for `paper`) and scale.
    macs = multiply_adds(fast, 64, 64) * (SIZE // 64) ** 2
    return {"model": name, "params": count_parameters(model), "macs": macs,
            "ms": ms, "peak_rss_mib": _peak_rss_mib(), "forward_rss_mib": _peak_rss_mib() - rss_before}


def child_tiled(tile: int) -> dict:
    """Peak RSS of tiled x4 upscaling of a 1920x1080 image (the app's path)."""
    fast = prepare_model(create_model("tiny-kdsconv-det-x4"), device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    start = CLOCK()
    out = upscale(image, fast, tile=tile)
    return {"seconds": CLOCK() - start, "peak_rss_mib": _peak_rss_mib(), "shape": list(out.shape)}


def side_by_side(repeats: int) -> dict:
    """Fused KDSConv vs LinearDSConv (interleaved) and ONNX Runtime, in one process."""
    torch.manual_seed(0)
    kds = prepare_model(create_model("tiny-kdsconv-det-x4"), device="cpu")
    # The same weights in a LinearDSConv model: the two differ in nothing but where they came from.
    linear = create_model("tiny-ldsconv-x4")
    linear.load_state_dict(kds.state_dict())
    lds = prepare_model(linear, device="cpu")
    x = torch.rand(1, 3, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    result = {}
    session = None
    try:
        import onnxruntime as ort
        buffer = io.BytesIO()
        torch.onnx.export(kds, (torch.rand(1, 3, SIZE, SIZE),), buffer, dynamo=False, input_names=["lr"],
                          output_names=["sr"], opset_version=17)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        x_numpy = x.contiguous().numpy()
    except ImportError:
        result["onnxruntime"] = "not installed (pip install onnxruntime onnx)"
    t_kds, t_lds, t_ort = [], [], []
    with torch.inference_mode():
        kds(x), lds(x)
        if session:
            session.run(None, {"lr": x_numpy})
            ort_out = session.run(None, {"lr": x_numpy})[0]
            result["ort_max_abs_diff"] = float(np.abs(ort_out - kds(x).numpy()).max())
        for i in range(repeats):  # alternate which goes first
            for times, model in ((t_kds, kds), (t_lds, lds))[::1 if i % 2 else -1]:
                times.append(_time(lambda: model(x), 1))
        # ONNX Runtime in its own block: its worker threads spin for a while after each run
        # and would slow whichever PyTorch model ran next.
        if session:
            t_ort = [_time(lambda: session.run(None, {"lr": x_numpy}), 1) for _ in range(repeats)]
    result["kdsconv_fused_ms"] = statistics.median(t_kds)
    result["ldsconv_ms"] = statistics.median(t_lds)
    if t_ort:
        result["onnxruntime_ms"] = statistics.median(t_ort)
    return result


def cuda_check() -> dict | None:
    if not torch.cuda.is_available():
        return None
    torch.manual_seed(0)
    model = create_model("tiny-kdsconv-det-x4")
    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    cpu_out = upscale(image, prepare_model(model, "cpu"))
    gpu = prepare_model(model, "cuda")
    x = torch.rand(1, 3, SIZE, SIZE, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        gpu(x)
        torch.cuda.synchronize()

        def run():
            gpu(x)
            torch.cuda.synchronize()
        ms = _time(run, 20)
    gpu_out = upscale(image, gpu)
    return {"device": torch.cuda.get_device_name(), "ms": ms,
            "max_diff_8bit": int(np.abs(cpu_out.astype(int) - gpu_out.astype(int)).max())}


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.speed", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--paper-repeats", type=int, default=1, help="the paper backbone takes seconds a pass")
    parser.add_argument("--skip-paper", action="store_true")
    parser.add_argument("--peer-repeats", type=int, default=3, help="the peers take seconds a pass on a CPU")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--child-model")
    parser.add_argument("--child-tiled", action="store_true")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cpu-time", action="store_true", help="time CPU seconds of the process, not wall time")
    args = parser.parse_args()
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    torch.set_num_threads(args.threads)
    common = ["--threads", str(args.threads), *(["--cpu-time"] if args.cpu_time else [])]
    if args.child_model:
        print(json.dumps(child_model(args.child_model, args.repeats, args.warmup)))
        return
    if args.child_tiled:
        print(json.dumps(child_tiled(args.tile)))
        return

    print(f"x4, {SIZE}x{SIZE} input, {args.threads} threads, fused + channels_last, torch {torch.__version__}"
          f"{', CPU time of the process' if args.cpu_time else ''}")
    print(f"{'model':<24}{'params':>12}{'MACs':>10}{'CPU ms':>10}{'peak RSS':>11}{'fwd RSS':>10}")
    backbones = ["tiny"] + ([] if args.skip_paper else ["paper"])
    for backbone in backbones:
        repeats, warmup = (args.repeats, args.warmup) if backbone == "tiny" else (args.paper_repeats, 0)
        for conv in CONVS:
            r = _child(["--child-model", f"{backbone}-{conv}-x4", "--repeats", str(repeats),
                        "--warmup", str(warmup), *common])
            print(f"{r['model']:<24}{r['params']:>12,}{r['macs'] / 1e9:>9.1f}G{r['ms']:>10.0f}"
                  f"{r['peak_rss_mib']:>8.0f}MiB{r['forward_rss_mib']:>7.0f}MiB", flush=True)
    for name in [] if args.skip_peers else PEERS:
        # Params as built (FDIWN: weight norm's g and v both counted); timed fused, weight norm folded.
        r = _child(["--child-model", name, "--repeats", str(args.peer_repeats), "--warmup", "1", *common])
        print(f"{r['model']:<24}{r['params']:>12,}{r['macs'] / 1e9:>9.1f}G{r['ms']:>10.0f}"
              f"{r['peak_rss_mib']:>8.0f}MiB{r['forward_rss_mib']:>7.0f}MiB", flush=True)

    s = side_by_side(max(args.repeats, 9))
    print()
    print(f"side by side (medians of {max(args.repeats, 9)} runs in one process, tiny x4, {SIZE}x{SIZE}):")
    print(f"  fused KDSConv {s['kdsconv_fused_ms']:.1f} ms / LinearDSConv {s['ldsconv_ms']:.1f} ms"
          f" = {s['kdsconv_fused_ms'] / s['ldsconv_ms']:.3f}  (target <= 1.02)")
    if "onnxruntime_ms" in s:
        print(f"  library (fused KDSConv) {s['kdsconv_fused_ms']:.1f} ms / ONNX Runtime {s['onnxruntime_ms']:.1f} ms"
              f" = {s['kdsconv_fused_ms'] / s['onnxruntime_ms']:.3f}  (target <= 1.25;"
              f" outputs differ by at most {s['ort_max_abs_diff']:.1e})")
    else:
        print(f"  ONNX Runtime: {s['onnxruntime']}")
    t = _child(["--child-tiled", "--tile", str(args.tile), *common])
    print(f"tiled x4 upscale of 1920x1080 (tile {args.tile}): {t['seconds']:.1f} s, "
          f"peak RSS {t['peak_rss_mib']:.0f} MiB (target < 2048 MiB), output {t['shape'][1]}x{t['shape'][0]}")
    c = cuda_check()
    print(f"CUDA: {c['device']}: {c['ms']:.1f} ms, max difference from CPU output {c['max_diff_8bit']}/255" if c
          else "CUDA: not available on this machine, not checked")


if __name__ == "__main__":
    main()
