"""Draw simulated scan paths on four phantom test cases: docs/figures/gaze-scanpaths.png; print read statistics.

    python scripts/gaze_figure.py [--out docs/figures/gaze-scanpaths.png] [--stats N]

--stats N also prints the figures of docs/gaze-simulator.md over test cases 0..N-1 (seed 11, 224 px).

Each panel shows the film, the lesion outlines (red), the saccades (lines) and the fixations (circles, area in
proportion to duration, colour from early to late). Uses matplotlib where installed, else PIL.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xai_core.phantom import PhantomCase, generate_case
from xai_core.phantom.gaze import DEFAULT_PARAMS, simulate_fixations

SPLIT, SEED, SIZE = "test", 11, 224
# one panel each: a normal film, a conspicuous mass, a subtle nodule beside another finding, cardiomegaly
WANTED = (
    lambda labels: not labels,
    lambda labels: labels == ["Mass"],
    lambda labels: "Nodule" in labels and len(labels) > 1,
    lambda labels: "Cardiomegaly" in labels,
)


def pick_cases() -> list[PhantomCase]:
    """The first test case (seed 11, 224 px) that fits each panel's wish."""
    chosen: list[PhantomCase] = []
    index = 0
    for wish in WANTED:
        while True:
            case = generate_case(SPLIT, index, seed=SEED, size=SIZE)
            index += 1
            if wish(case.labels):
                chosen.append(case)
                break
    return chosen


def _caption(case: PhantomCase) -> str:
    f = case.fixations
    xs, ys = np.round(f[:, 2]).astype(int), np.round(f[:, 3]).astype(int)
    hits = {name: int(mask[ys, xs].sum()) for name, mask in case.lesions.items()}
    found = ", ".join(f"{name} {n}" for name, n in hits.items()) or "none"
    labels = ", ".join(case.labels) or "No Finding"
    return f"{case.case_id}: {labels}\n{len(f)} fixations, {(f[-1, 1] - f[0, 0]) / 1000:.1f} s; on lesions: {found}"


def draw_matplotlib(cases: list[PhantomCase], out: Path) -> None:
    import matplotlib  # optional: not every environment has it (draw_pil is the fallback)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional, as above

    columns = 2
    rows = -(-len(cases) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 4.9 * rows + 0.4))
    for ax in np.ravel(axes)[len(cases):]:
        ax.set_axis_off()
    for ax, case in zip(np.ravel(axes), cases, strict=False):
        f = case.fixations
        ax.imshow(case.image, cmap="gray", vmin=0, vmax=1)
        for mask in case.lesions.values():
            ax.contour(mask.astype(float), levels=[0.5], colors="red", linewidths=0.8)
        ax.plot(f[:, 2], f[:, 3], "-", color="#ffd84d", linewidth=0.7, alpha=0.8)
        durations = f[:, 1] - f[:, 0]
        ax.scatter(f[:, 2], f[:, 3], s=durations / 6, c=np.arange(len(f)), cmap="cool", alpha=0.55,
                   edgecolors="white", linewidths=0.4)
        ax.annotate("1", (f[0, 2], f[0, 3]), color="white", fontsize=7, ha="center", va="center")
        ax.set_title(_caption(case), fontsize=7.5)
        ax.set_axis_off()
    fig.suptitle("Simulated radiologist scan paths\ncircle area ~ fixation duration; colour: early (cyan) to late "
                 "(magenta); red: lesion outlines", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def draw_pil(cases: list[PhantomCase], out: Path) -> None:
    scale = 2
    tiles = []
    for case in cases:
        f = case.fixations
        grey = cv2.resize((case.image * 255).astype(np.uint8), None, fx=scale, fy=scale)
        tile = Image.fromarray(cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB))
        draw = ImageDraw.Draw(tile, "RGBA")
        for mask in case.lesions.values():
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            for contour in contours:
                outline = [(int(x) * scale, int(y) * scale) for x, y in contour[:, 0]]
                draw.line([*outline, outline[0]], fill=(255, 40, 40), width=1)
        points = [(x * scale, y * scale) for x, y in f[:, 2:]]
        draw.line(points, fill=(255, 216, 77, 200), width=1)
        for k, ((x, y), d) in enumerate(zip(points, f[:, 1] - f[:, 0], strict=True)):
            r = np.sqrt(d) / 4
            t = k / max(1, len(points) - 1)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(int(255 * t), int(255 * (1 - t)), 255, 110),
                         outline=(255, 255, 255, 160))
        draw.text((4, 4), _caption(case), fill=(255, 230, 0))
        tiles.append(np.asarray(tile))
    Image.fromarray(np.concatenate(tiles, 1)).save(out)


def read_statistics(n: int) -> None:
    """Fixations per read, dwell, read time, share of fixations on lesions, lesions fixated by size tercile and by
    finding, satisfaction of search, and the simulator's time per case, over test cases 0..n-1."""
    ppd = SIZE / DEFAULT_PARAMS.film_width_deg
    cases = [generate_case(SPLIT, i, seed=SEED, size=SIZE) for i in range(n)]
    counts, reads, search, lesion, amplitudes, rows = [], [], [], [], [], []
    for case in cases:
        f = case.fixations
        xs, ys = np.round(f[:, 2]).astype(int), np.round(f[:, 3]).astype(int)
        durations = f[:, 1] - f[:, 0]
        on = np.zeros(len(f), bool)
        for name, mask in case.lesions.items():
            hit = mask[ys, xs]
            on |= hit
            rows.append((name, int(mask.sum()), int(hit.sum())))
        counts.append(len(f))
        reads.append((f[-1, 1] - f[0, 0]) / 1000)
        search.extend(durations[~on])
        lesion.extend(durations[on])
        amplitudes.extend(np.hypot(*np.diff(f[:, 2:], axis=0).T) / ppd)
    counts, reads, search, lesion = map(np.asarray, (counts, reads, search, lesion))
    every = np.concatenate([search, lesion])
    print(f"{n} cases ({SPLIT}, seed {SEED}, {SIZE} px), {len(rows)} lesions")
    print(f"fixations per read: mean {counts.mean():.1f}, median {np.median(counts):.0f}, range {counts.min()}-"
          f"{counts.max()}")
    print(f"read time: mean {reads.mean():.1f} s, median {np.median(reads):.1f}, 5-95% {np.percentile(reads, 5):.1f}-"
          f"{np.percentile(reads, 95):.1f}, range {reads.min():.1f}-{reads.max():.1f}")
    print(f"dwell: mean {every.mean():.0f} ms (median {np.median(every):.0f}); off lesions mean {search.mean():.0f}, "
          f"median {np.median(search):.0f}, {np.mean((search >= 200) & (search <= 400)):.0%} in 200-400 ms, "
          f"{np.mean(search > 500):.1%} over 500 ms; on lesions mean {lesion.mean():.0f}, median "
          f"{np.median(lesion):.0f}")
    print(f"saccade amplitude: median {np.median(amplitudes):.1f} deg, mean {np.mean(amplitudes):.1f}, 90% "
          f"{np.percentile(amplitudes, 90):.1f}")
    print(f"share of fixations on a lesion: {len(lesion) / len(every):.1%}")
    names = np.array([r[0] for r in rows])
    area = np.array([r[1] for r in rows])
    hits = np.array([r[2] for r in rows])
    edges = np.percentile(area, [100 / 3, 200 / 3])
    tercile = np.searchsorted(edges, area, side="right")
    for k, label in enumerate(("small", "middle", "large")):
        sel = tercile == k
        print(f"  {label} tercile ({area[sel].min()}-{area[sel].max()} px, n {sel.sum()}): fixated at least once "
              f"{np.mean(hits[sel] > 0):.0%}, fixations per lesion {hits[sel].mean():.1f}")
    for name in sorted(set(names)):
        sel = names == name
        print(f"  {name} (n {sel.sum()}): fixated {np.mean(hits[sel] > 0):.0%}, fixations per lesion "
              f"{hits[sel].mean():.1f}")
    for findings in (["Nodule"], ["Mass", "Nodule"], ["Effusion", "Nodule"]):
        found = []
        for i in range(n):
            case = generate_case(SPLIT, i, seed=SEED, size=SIZE, findings=findings)
            f = case.fixations
            found.append(case.lesions["Nodule"][np.round(f[:, 3]).astype(int), np.round(f[:, 2]).astype(int)].any())
        print(f"  nodule fixated when the findings are {'+'.join(findings)}: {np.mean(found):.0%}")
    best = np.inf
    for _ in range(3):
        start = time.perf_counter()
        for i, case in enumerate(cases):
            simulate_fixations(np.random.default_rng(i), case.image, case.anatomy, case.lesions, SIZE)
        best = min(best, (time.perf_counter() - start) / n)
    print(f"simulate_fixations: {best * 1000:.2f} ms per case (mean over the {n} cases, best of 3 runs)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/figures/gaze-scanpaths.png")
    parser.add_argument("--stats", type=int, default=0, metavar="N", help="also print read statistics over N cases")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cases = pick_cases()
    try:
        draw_matplotlib(cases, out)
    except ImportError:
        draw_pil(cases, out)
    print(out)
    if args.stats:
        read_statistics(args.stats)


if __name__ == "__main__":
    main()
