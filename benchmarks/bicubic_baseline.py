"""Bicubic baseline on Set5/Set14 and how far PIL's / torch's bicubic are from MATLAB's.

Why: every SR number is relative to the LR images it was fed. This checks that
our MATLAB-compatible ``imresize`` reproduces the published bicubic baseline and
quantifies the error one makes by using PIL's or torch's bicubic instead.

    .venv/bin/python benchmarks/bicubic_baseline.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from kaldn.images import image_to_tensor, load_image, tensor_to_image  # noqa: E402
from kaldn.metrics import psnr_y, ssim_y  # noqa: E402
from kaldn.registry import SCALES  # noqa: E402
from kaldn.resize import imresize, make_lr  # noqa: E402

BENCHES = ("set5", "set14")
# Published bicubic baselines (PSNR, SSIM) quoted in DESIGN.md; None where not given.
PUBLISHED: dict[tuple[str, int], tuple[float | None, float | None]] = {
    ("set5", 2): (33.66, None),
    ("set5", 3): (30.39, None),
    ("set5", 4): (28.42, 0.8104),
    ("set14", 4): (26.00, 0.7027),
}


def _fmt(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def pil_resize(img: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize(size_wh, Image.Resampling.BICUBIC))


def torch_resize(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    t = image_to_tensor(img).double()
    antialias = size_hw[0] < img.shape[0]
    out = F.interpolate(t, size=size_hw, mode="bicubic", align_corners=False, antialias=antialias)
    return tensor_to_image(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO_ROOT / ".." / "shared" / "data")
    args = ap.parse_args()
    if not (args.data / "bench").is_dir():
        sys.exit(f"benchmark images not found under {args.data / 'bench'}")

    rows = {}
    for bench in BENCHES:
        files = sorted((args.data / "bench" / bench).glob("*.png"))
        hrs = [load_image(f)[:, :, :3] for f in files]
        for s in SCALES:
            acc: dict[str, list[float]] = {k: [] for k in
                ("p", "s", "pil_p", "pil_s", "pil_mean", "pil_max", "t_p", "t_s", "t_mean", "t_max")}
            diffs_pil, diffs_t = [], []
            for hr0 in hrs:
                hr, lr = make_lr(hr0, s)
                h, w = hr.shape[:2]
                sr = imresize(lr, scale=s)
                acc["p"].append(psnr_y(sr, hr, s))
                acc["s"].append(ssim_y(sr, hr, s))

                lr_pil = pil_resize(hr, (w // s, h // s))
                sr_pil = pil_resize(lr_pil, (w, h))
                acc["pil_p"].append(psnr_y(sr_pil, hr, s))
                acc["pil_s"].append(ssim_y(sr_pil, hr, s))
                diffs_pil.append(np.abs(lr_pil.astype(np.int16) - lr).ravel())

                lr_t = torch_resize(hr, (h // s, w // s))
                sr_t = torch_resize(lr_t, (h, w))
                acc["t_p"].append(psnr_y(sr_t, hr, s))
                acc["t_s"].append(ssim_y(sr_t, hr, s))
                diffs_t.append(np.abs(lr_t.astype(np.int16) - lr).ravel())
            dp, dt = np.concatenate(diffs_pil), np.concatenate(diffs_t)
            rows[(bench, s)] = {k: float(np.mean(v)) for k, v in acc.items() if v} | {
                "pil_mean": float(dp.mean()), "pil_max": int(dp.max()),
                "pil_ne": float((dp > 0).mean() * 100),
                "t_mean": float(dt.mean()), "t_max": int(dt.max()), "t_ne": float((dt > 0).mean() * 100),
            }

    print("Bicubic baseline: LR = imresize(HR, 1/s), SR = imresize(LR, s); Y channel, border s")
    print(f"{'set':<6} {'scale':>5} {'PSNR':>8} {'SSIM':>7} | {'pub PSNR':>8} {'pub SSIM':>8} | {'dPSNR':>6}")
    for (bench, s), r in rows.items():
        pub_p, pub_s = PUBLISHED.get((bench, s), (None, None))
        d = None if pub_p is None else r["p"] - pub_p
        print(f"{bench:<6} {'x' + str(s):>5} {r['p']:8.2f} {r['s']:7.4f} | {_fmt(pub_p, 2):>8} "
              f"{_fmt(pub_s, 4):>8} | {('-' if d is None else f'{d:+.2f}'):>6}")

    for tag, label in (("pil", "PIL Image.resize(BICUBIC)"), ("t", "torch interpolate(bicubic, antialias on down)")):
        print()
        print(f"{label} for both down and up, vs imresize")
        print(f"{'set':<6} {'scale':>5} {'PSNR':>8} {'SSIM':>7} | {'dPSNR':>6} {'dSSIM':>7} | "
              f"{'LR |diff| mean':>14} {'max':>4} {'% px differ':>11}")
        for (bench, s), r in rows.items():
            print(f"{bench:<6} {'x' + str(s):>5} {r[tag + '_p']:8.2f} {r[tag + '_s']:7.4f} | "
                  f"{r[tag + '_p'] - r['p']:+6.2f} {r[tag + '_s'] - r['s']:+7.4f} | "
                  f"{r[tag + '_mean']:14.3f} {r[tag + '_max']:4d} {r[tag + '_ne']:11.1f}")


if __name__ == "__main__":
    main()
