"""Breast crop on scanned films: the package's crop against the plain Otsu largest-region crop.

Draws synthetic film look-alikes (`modeling_mama.data.synthetic.film`: bright film edges on 1-3 sides,
sometimes a dark scanner band, a burned-in label, scratches, dust) at several sizes, orients and
crops each with both methods, and prints per method:

* breast fraction: the share of the processed (cropped, stretched to 518x518) view that is breast,
  from the generator's breast mask (the issue saw 27-32% on real films with the plain crop);
* breast kept: the least share of the breast inside the crop;
* label inside: crops holding the label although it lies beside the breast's own box;
* chest wall left: crops whose breast mass is in the left half after orientation;
* time: seconds per `breast_bbox`-equivalent call on a full-size (3328x2560) film, best of N.

Run: `python bench/bench_film_crop.py [--films 16] [--repeats 5]`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from modeling_mama.data.synthetic.film import film_mammogram
from modeling_mama.image_utils_mama import (
    _preview_positions,
    breast_bbox,
    needs_flip,
    otsu_threshold,
    to_unit_range,
)

SIZES = [(144, 112), (192, 152), (320, 256), (1200, 960)]


def plain_orientation_and_box(pixels: np.ndarray, laterality: str) -> tuple[bool, tuple[int, int, int, int]]:
    """The digital recipe: Otsu on the preview, largest 8-connected region, flip by its mass (tag when even)."""
    rows, cols = _preview_positions(pixels.shape)
    preview = to_unit_range(pixels)[np.ix_(rows, cols)]
    foreground = preview >= otsu_threshold(preview)
    labels, count = ndimage.label(foreground, structure=np.ones((3, 3)))
    region = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1) if count else foreground
    mass = np.where(region, preview, 0).sum(axis=0)
    half = mass.size // 2
    left, right = mass[:half].sum(), mass[mass.size - half:].sum()
    flipped = right > left if abs(left - right) >= 0.1 * (left + right) else laterality == "R"
    if flipped:
        region = region[:, ::-1]
    ys, xs = np.nonzero(region)
    box = (int(cols[xs.min()]), int(rows[ys.min()]), int(cols[xs.max()]) + 1, int(rows[ys.max()]) + 1)
    return flipped, box


def package_orientation_and_box(pixels: np.ndarray, laterality: str) -> tuple[bool, tuple[int, int, int, int]]:
    flipped = needs_flip(pixels, laterality)
    return flipped, breast_bbox(pixels[:, ::-1] if flipped else pixels)


def score(film, laterality: str, method) -> tuple[float, float, bool, bool]:
    flipped, (x0, y0, x1, y1) = method(film.pixels, laterality)
    truth = film.breast[:, ::-1] if flipped else film.breast
    crop = truth[y0:y1, x0:x1]
    lx0, ly0, lx1, ly1 = film.label_box
    if flipped:
        lx0, lx1 = truth.shape[1] - lx1, truth.shape[1] - lx0
    ys, xs = np.nonzero(truth)
    beside = lx1 <= xs.min() or lx0 > xs.max() or ly1 <= ys.min() or ly0 > ys.max()
    inside = not (lx1 <= x0 or lx0 >= x1 or ly1 <= y0 or ly0 >= y1)
    left = crop[:, : crop.shape[1] // 2].sum() > crop[:, crop.shape[1] // 2:].sum()
    return float(crop.mean()), float(crop.sum() / truth.sum()), beside and inside, bool(left)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--films", type=int, default=16, help="films per size")
    parser.add_argument("--repeats", type=int, default=5, help="timing passes on the full-size film")
    args = parser.parse_args(argv)
    results = {"plain Otsu": [], "package": []}
    for height, width in SIZES:
        for seed in range(args.films):
            laterality, view = "LR"[seed % 2], ("CC", "MLO")[(seed // 2) % 2]
            film = film_mammogram(np.random.default_rng(seed), height=height, width=width, laterality=laterality,
                                  view=view, density=1 + seed % 4)
            results["plain Otsu"].append(score(film, laterality, plain_orientation_and_box))
            results["package"].append(score(film, laterality, package_orientation_and_box))
    full = film_mammogram(np.random.default_rng(0), height=3328, width=2560, laterality="L", view="MLO", density=3)
    print(f"{len(results['package'])} films, sizes {SIZES}")
    for name, method in (("plain Otsu", plain_orientation_and_box), ("package", package_orientation_and_box)):
        fractions, kept, label, left = (np.array(values) for values in zip(*results[name]))
        best = min(_timed(method, full.pixels) for _ in range(args.repeats))
        print(f"{name:>10}: breast fraction mean {fractions.mean():.2f} min {fractions.min():.2f}; breast kept "
              f"min {kept.min():.3f}; label inside {int(label.sum())}/{len(label)}; chest wall left "
              f"{int(left.sum())}/{len(left)}; {best * 1e3:.0f} ms per full-size film")


def _timed(method, pixels) -> float:
    start = time.perf_counter()
    method(pixels, "L")
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
