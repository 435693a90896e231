"""Features-only cohorts of spatial tasks: a features HDF5 per slide and a sample sheet.

Each patch's feature is its type's mean plus full-rank noise with a power-law spectrum (as
ResNet50 features have: a few strong directions, every direction some variance), plus a
per-slide offset drawn from the same spectrum (stain and scanner effects). How far apart the
type means lie is set by the accuracy it allows on one patch (`CohortSpec.patch_accuracy`),
so a patch's type is as uncertain as asked; `None` ("certain") keeps the first cohorts'
means, whose types a linear rule tells apart without error at the benchmark's widths (1024-d
and up). Both classes share every distribution but the arrangement (`span.synthetic.layouts`).
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.stats import norm

from span.atomic import atomic_output, write_text_atomic
from span.features.feature_file import FeatureSet, write_feature_file
from span.synthetic import check_patch_accuracy
from span.synthetic.layouts import TASKS, Layout, draw_layout

#: Level-0 pixels per grid cell written into the files (224 px at 0.5 um/px, 20x).
PATCH_SIZE_LEVEL0 = 224
#: Distance between type means, in units of sqrt(d) (about the patch noise's norm), at the
#: "certain" level: the first cohorts, whose benchmark tables docs/benchmarks.md keeps.
CERTAIN_SEPARATION = 0.5


@dataclass(frozen=True)
class CohortSpec:
    """Everything that decides a spatial cohort (the same spec writes the same files)."""

    task: str
    slides: int
    feature_dim: int = 1024
    seed: int = 0
    patch_accuracy: float | None = None  # one patch's type, told by the best rule; None: certain
    spectrum_decay: float = 1.0  # eigenvalue k of the noise covariance ~ k^-decay
    slide_effect: float = 0.3  # per-slide offset, relative to the patch noise

    def __post_init__(self) -> None:
        check_patch_accuracy(self.patch_accuracy)

    @property
    def classes(self) -> tuple[str, str]:
        return TASKS[self.task].classes


def _unit_simplex(n: int) -> np.ndarray:
    """(n, n - 1) vertices of a regular simplex with unit edges, the first at the origin: every
    vertex after it has norm 1 and dot product 1/2 with each other one."""
    gram = 0.5 * (np.ones((n - 1, n - 1)) + np.eye(n - 1))
    return np.vstack([np.zeros(n - 1), np.linalg.cholesky(gram)])


class FeatureModel:
    """Type means and the noise covariance's square root of one cohort.

    Patch accuracy is the Bayes accuracy of telling two types apart from one patch's features,
    both equally likely: Phi(Delta / 2), Delta the Mahalanobis distance between their means
    under a patch's covariance across slides (its noise and its slide's offset). Every pair of
    types lies at the same Delta. Within one slide, its offset known, the accuracy is a little
    higher (Delta grows by sqrt(1 + slide_effect^2): 1.04 at 0.3)."""

    def __init__(self, spec: CohortSpec, rng: np.random.Generator, n_types: int = 3) -> None:
        d = spec.feature_dim
        basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
        spectrum = np.arange(1, d + 1, dtype=float) ** -spec.spectrum_decay
        spectrum *= d / spectrum.sum()  # mean eigenvalue 1: a random direction has variance ~1
        self.root = (basis * np.sqrt(spectrum)).T  # noise = z @ root, z ~ N(0, I)
        self.slide_effect = spec.slide_effect
        directions, _ = np.linalg.qr(rng.standard_normal((d, n_types - 1)))
        offset = 0.5 * rng.standard_normal(d)
        steps = self._steps(directions.T, spec.patch_accuracy)
        self.means = offset + np.vstack([np.zeros(d), steps])

    @property
    def patch_root(self) -> np.ndarray:
        """Square root of one patch's covariance across slides: its noise plus its slide's."""
        return np.sqrt(1 + self.slide_effect**2) * self.root

    def _steps(self, directions: np.ndarray, accuracy: float | None) -> np.ndarray:
        """Each type's mean minus the first's, (n_types - 1, d), in the plane of the random
        orthonormal rows `directions`: the first cohorts' (CERTAIN_SEPARATION x sqrt(d) along
        each) when certain, else a regular simplex of edge Delta in whitened coordinates, so
        only the distance differs between levels (with two types, the direction is the same)."""
        if accuracy is None:
            return CERTAIN_SEPARATION * np.sqrt(len(self.root)) * directions
        plane, r = np.linalg.qr(np.linalg.solve(self.patch_root.T, directions.T))
        plane *= np.sign(np.diag(r))  # the first column along the first direction, not against
        simplex = _unit_simplex(len(directions) + 1)[1:]
        return 2 * norm.ppf(accuracy) * simplex @ plane.T @ self.patch_root

    def accuracy(self, a: int, b: int) -> float:
        """Bayes accuracy of telling type `a` from type `b` by one patch's features (equal
        priors), computed from the means and the covariance."""
        whitened = np.linalg.solve(self.patch_root.T, self.means[a] - self.means[b])
        return float(norm.cdf(np.linalg.norm(whitened) / 2))

    def features(self, types: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(N, d) float32 features of one slide whose patches have `types`."""
        noise = rng.standard_normal((len(types) + 1, len(self.root))) @ self.root
        slide = self.slide_effect * noise[0]
        return (self.means[types] + slide + noise[1:]).astype(np.float32)


def draw_cohort(spec: CohortSpec) -> list[Layout]:
    """The cohort's layouts: classes alternate, so both have spec.slides // 2 slides."""
    rng = np.random.default_rng([spec.seed, 1])
    return [draw_layout(spec.task, k % 2, rng) for k in range(spec.slides)]


def write_cohort(spec: CohortSpec, out_dir: str | Path) -> Path:
    """Write `features/<slide>.h5` (the project's layout, encoder `synthetic`) for every slide,
    `samples.tsv` (slide_id, path, label, features) and `layouts.npz` (the cell types, for
    inspection); returns the sample sheet's path."""
    out_dir = Path(out_dir)
    model = FeatureModel(spec, np.random.default_rng([spec.seed, 2]))
    rng = np.random.default_rng([spec.seed, 3])
    rows, types = [], {}
    attrs = {
        "encoder": "synthetic",
        "layer": f"{spec.task}-{spec.feature_dim}d",
        "weights": "none",
        "patch_size_level0": PATCH_SIZE_LEVEL0,
        "spec": str(asdict(spec)),
    }
    for k, layout in enumerate(draw_cohort(spec)):
        slide_id = f"{spec.task}_{k:04d}"
        path = out_dir / "features" / f"{slide_id}.h5"
        fs = FeatureSet(
            model.features(layout.types, rng),
            layout.grid * PATCH_SIZE_LEVEL0,
            layout.grid,
            np.zeros(0, np.int64),
            {**attrs, "slide_id": slide_id},
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        write_feature_file(path, fs)
        rows.append((slide_id, "", spec.classes[layout.label], str(path.resolve())))
        types[slide_id] = layout.types
    with atomic_output(out_dir / "layouts.npz") as tmp, tmp.open("wb") as f:
        np.savez_compressed(f, **types)
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(["slide_id", "path", "label", "features"])
    writer.writerows(rows)
    sheet = out_dir / "samples.tsv"
    write_text_atomic(sheet, buf.getvalue())
    return sheet
