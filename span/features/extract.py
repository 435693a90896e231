"""The feature stage: encode every patch of a slide into an HDF5 file, resumably.

Rows are written in order into a hidden partial file, flushed every `flush_every` patches
(a multiple of the batch size, so a resumed run sees the same batches as an uninterrupted
one). A killed run resumes from the last flush; the final name appears only when the slide
is complete (atomic rename). Memory stays bounded by one flush buffer whatever the slide. A
write that fails (a full disk: one line) deletes the partial file, so a re-run starts the slide
over rather than trust a file that HDF5 may have left inconsistent; the free space is checked
before each write, since HDF5 crashes on a full disk (`span.atomic.require_space`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import span
from span.atomic import reporting_disk_full, require_space
from span.device import resolve_device
from span.errors import SpanError
from span.features.encoders import Encoder
from span.features.feature_file import FEATURE_DTYPES
from span.features.registry import ENCODERS, field_fix, field_problem
from span.features.tiles import CohortTiles, SlideTiles, worker_init
from span.h5io import create_checked, write_attrs
from span.settings.options import check_values
from span.settings.stages import ExtractSettings, tile_workers
from span.slides.patch_file import PatchSet, read_patch_file
from span.slides.reader import open_slide

log = logging.getLogger(__name__)
_DEFAULT = ExtractSettings()


@dataclass(frozen=True)
class ExtractOptions:
    """Throughput and storage settings (none of them changes the features beyond rounding)."""

    batch_size: int = _DEFAULT.batch_size
    num_workers: int | str = _DEFAULT.num_workers  # a count or "auto" (`tile_workers`)
    dtype: str = _DEFAULT.dtype
    device: str = _DEFAULT.device
    amp: bool = _DEFAULT.amp  # CUDA only
    flush_every: int = _DEFAULT.flush_every

    def __post_init__(self) -> None:
        check_values(self, ExtractSettings)


def partial_path(out: Path) -> Path:
    """Where an unfinished extraction lives (hidden; never mistaken for a finished file)."""
    return out.with_name(f".{out.stem}.partial.h5")


def extraction_key(slide: Path, patches: PatchSet, encoder: Encoder, dtype: str) -> str:
    """Everything the stored rows depend on: resuming is only allowed when it matches."""
    stat = slide.stat()
    return json.dumps(
        {
            "slide": [str(slide.resolve()), stat.st_size, stat.st_mtime_ns],
            "coords": hashlib.sha1(np.ascontiguousarray(patches.coords).tobytes()).hexdigest(),
            "read": [patches.attrs.get("patch_level"), patches.attrs.get("patch_size")],
            "encoder": [
                encoder.name,
                encoder.layer,
                encoder.weights,
                encoder.resize_to,
                encoder.input_size,
                encoder.interpolation,
            ],
            "dtype": dtype,
        },
        sort_keys=True,
    )


class PartialFeatures:
    """The hidden, resumable partial file: `features` and `ok` rows, `done` counter."""

    def __init__(self, path: Path, n: int, dim: int, dtype: str, fingerprint: str) -> None:
        self.path = path
        with reporting_disk_full(path):  # a half-made file: _resume starts it over
            self.file = self._resume(path, n, dim, fingerprint) or self._create(
                path, n, dim, dtype, fingerprint
            )

    @staticmethod
    def _create(path: Path, n: int, dim: int, dtype: str, fingerprint: str) -> h5py.File:
        f = h5py.File(path, "w")
        chunk = (min(n, 256), dim) if n else None  # a slide without tissue: 0 rows
        create_checked(f, "features", shape=(n, dim), dtype=FEATURE_DTYPES[dtype], chunks=chunk)
        f.create_dataset("ok", (n,), bool)
        f.attrs["fingerprint"] = fingerprint
        f.attrs["done"] = 0
        f.flush()
        return f

    @staticmethod
    def _resume(path: Path, n: int, dim: int, fingerprint: str) -> h5py.File | None:
        if not path.exists():
            return None
        try:
            f = h5py.File(path, "r+")
            same = f.attrs.get("fingerprint") == fingerprint and f["features"].shape == (n, dim)
            if same and 0 <= int(f.attrs["done"]) <= n:
                log.info("%s: resuming after %d of %d patches", path, int(f.attrs["done"]), n)
                return f
            f.close()
            log.warning("%s: left by a run with other inputs or settings; starting over", path)
        except (OSError, KeyError) as exc:
            log.warning("%s: damaged partial file (%s); starting over", path, exc)
        path.unlink()
        return None

    @property
    def done(self) -> int:
        return int(self.file.attrs["done"])

    @property
    def _slim(self) -> Path:
        """The partial file's rewrite without the unreadable rows (`_drop_rows`)."""
        return self.path.with_name(f"{self.path.stem}.slim.h5")

    @contextlib.contextmanager
    def _deleted_on_failure(self) -> Iterator[None]:
        """Delete the partial file if the writes inside fail (a full disk: one line)."""
        try:
            with reporting_disk_full(self.path):
                yield
        except Exception:
            with contextlib.suppress(OSError, RuntimeError):  # closing flushes: may fail again
                self.close()
            self.path.unlink(missing_ok=True)
            self._slim.unlink(missing_ok=True)
            raise

    def write(self, start: int, features: np.ndarray, ok: np.ndarray) -> None:
        """Store rows start..start+len and advance `done` only after the data is flushed (a
        disk without room for them: one line, the file kept to resume from)."""
        stop = start + len(features)
        require_space(self.path, features.nbytes + ok.nbytes)
        with self._deleted_on_failure():
            self.file["features"][start:stop] = features
            self.file["ok"][start:stop] = ok
            self.file.flush()
            self.file.attrs["done"] = stop
            self.file.flush()

    def finalize(self, out: Path, patches: PatchSet, attrs: dict) -> np.ndarray:
        """Keep the readable rows, add coords, grid, bad_tiles and attributes, then rename into
        place. Returns the level-0 coords of the unreadable tiles (left out of the bag)."""
        ok = self.file["ok"][:]
        features = self.file["features"]
        kept = 0 if ok.all() else int(ok.sum()) * features.nbytes // max(len(ok), 1)
        require_space(self.path, kept + 40 * len(ok))  # the rewrite, coords, grid, bad tiles
        with self._deleted_on_failure():
            return self._finalize(ok, out, patches, attrs)

    def _finalize(self, ok: np.ndarray, out: Path, patches: PatchSet, attrs: dict) -> np.ndarray:
        del self.file["ok"]
        if not ok.all():
            self._drop_rows(ok)
        f = self.file
        coords = np.asarray(patches.coords, np.int64).reshape(-1, 2)
        create_checked(f, "coords", data=coords[ok])
        create_checked(f, "grid", data=np.asarray(patches.grid, np.int32).reshape(-1, 2)[ok])
        create_checked(f, "bad_tiles", data=coords[~ok])
        for key in ("fingerprint", "done"):
            del f.attrs[key]
        share = float(np.count_nonzero(~ok) / len(ok)) if len(ok) else 0.0
        write_attrs(f, {**attrs, "tiles_total": len(ok), "bad_tile_share": share})
        f.close()
        os.replace(self.path, out)
        return coords[~ok]

    def _drop_rows(self, ok: np.ndarray, block: int = 4096) -> None:
        """Rewrite the partial file with only the `ok` feature rows, block by block (a rewrite,
        not an in-place delete, so the file keeps no dead space)."""
        src = self.file["features"]
        kept = int(ok.sum())
        slim = self._slim
        with h5py.File(slim, "w") as g:
            chunk = (min(kept, 256), src.shape[1]) if kept else None
            dst = create_checked(
                g, "features", shape=(kept, src.shape[1]), dtype=src.dtype, chunks=chunk
            )
            at = 0
            for start in range(0, len(ok), block):
                rows = src[start : start + block][ok[start : start + block]]
                dst[at : at + len(rows)] = rows
                at += len(rows)
            for key, value in self.file.attrs.items():
                g.attrs[key] = value
        self.file.close()
        os.replace(slim, self.path)
        self.file = h5py.File(self.path, "r+")

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()


def encode_tiles(
    encoder: Encoder, tiles: torch.Tensor, device: torch.device, amp: bool
) -> torch.Tensor:
    """uint8 (B, H, W, 3) tiles -> float32 (B, D) features (autocast to the encoder's AMP
    dtype on CUDA only)."""
    mean = torch.tensor(encoder.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(encoder.std, device=device).view(1, 3, 1, 1) * 255
    x = tiles.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
    autocast = amp and device.type == "cuda" and encoder.amp_dtype != "float32"
    with torch.autocast("cuda", dtype=getattr(torch, encoder.amp_dtype), enabled=autocast):
        return encoder.model(x).float()


@dataclass
class SlideJob:
    """One slide to encode: its patches, its partial file, and what to do once it is complete
    (`finish` receives the job and returns the coords of its unreadable tiles)."""

    slide_id: str
    slide_path: Path
    patches: PatchSet
    partial: PartialFeatures
    finish: Callable[[SlideJob], np.ndarray]


def extract_slide(
    slide_path: str | Path,
    patch_file: str | Path,
    out: str | Path,
    encoder: Encoder,
    options: ExtractOptions,
) -> np.ndarray:
    """Encode every patch of one slide into `out`; returns the level-0 coords of the tiles that
    could not be read (left out of the features)."""
    slide_path, out = Path(slide_path), Path(out)
    patches = read_patch_file(patch_file)
    slide_id = patches.attrs.get("slide_id", out.stem)
    open_slide(slide_path).close()  # a missing, unreadable or damaged file: one clear line
    warn_field(encoder, patches)
    device = resolve_device(options.device)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = PartialFeatures(
        partial_path(out),
        len(patches),
        encoder.feature_dim,
        options.dtype,
        extraction_key(slide_path, patches, encoder, options.dtype),
    )
    bad: list[np.ndarray] = []

    def finish(job: SlideJob) -> np.ndarray:
        bad.append(
            job.partial.finalize(
                out, job.patches, feature_attrs(job.patches, encoder, options, device)
            )
        )
        return bad[-1]

    try:
        encode_jobs(
            [SlideJob(slide_id, slide_path, patches, partial, finish)], encoder, options, device
        )
    finally:
        partial.close()
    return bad[0]


def feature_attrs(
    patches: PatchSet, encoder: Encoder, options: ExtractOptions, device: torch.device
) -> dict:
    """The features file's attributes: the patch file's, the encoder's and how it ran."""
    return {
        **patches.attrs,
        "encoder": encoder.name,
        "layer": encoder.layer,
        "feature_dim": encoder.feature_dim,
        "weights": encoder.weights,
        "encoder_version": encoder.version,
        "dtype": options.dtype,
        "device": device.type,
        "source": "extracted",
        "software": f"span-wsi {span.__version__}",
    }


def _report_bad_tiles(slide_id: str, bad: np.ndarray, n: int) -> None:
    if len(bad):
        log.warning(
            "%s: %d of %d tiles (%.1f%%) could not be read and are left out of the bag "
            "(the QC summary excludes the slide above features.max_bad_tile_share); first "
            "at level-0 %s",
            slide_id,
            len(bad),
            n,
            100 * len(bad) / n,
            [tuple(c) for c in bad[:5].tolist()],
        )


def warn_field(encoder: Encoder, patches: PatchSet) -> None:
    """Say so when the patches are not the field (tile side and um/px) the encoder was trained
    on; the workflow's start-up check stops on it, a command run by hand only warns."""
    size, mpp = patches.attrs.get("target_patch_size"), patches.attrs.get("target_mpp")
    info = ENCODERS[encoder.name]
    problem = field_problem(info, int(size), float(mpp)) if size and mpp else None
    if problem:
        log.warning("%s (%s)", problem, field_fix(info))


def encode_jobs(
    jobs: Sequence[SlideJob], encoder: Encoder, options: ExtractOptions, device: torch.device
) -> None:
    """Encode the remaining patches of every job through one DataLoader (its workers read ahead
    across slides), flushing each slide's rows every `flush_every` patches and calling its
    `finish` once it is complete."""
    flush_every = max(1, options.flush_every // options.batch_size) * options.batch_size
    pending = []
    for job in jobs:
        if job.partial.done >= len(job.patches):  # complete already, or no patches at all
            _report_bad_tiles(job.slide_id, job.finish(job), len(job.patches))
        else:
            pending.append(job)
    if not pending:
        return
    encoder.model.to(device).to(memory_format=torch.channels_last)
    dataset = CohortTiles(
        [
            SlideTiles(
                job.slide_path,
                job.patches.coords,
                job.patches.attrs["patch_level"],
                job.patches.attrs["patch_size"],
                encoder.resize_to,
                start=job.partial.done,
                crop_size=encoder.input_size,
                interpolation=encoder.interpolation,
            )
            for job in pending
        ]
    )
    workers = tile_workers(options.num_workers, len(dataset), gpu=device.type == "cuda")
    loader = DataLoader(
        dataset,
        batch_sampler=dataset.batches(options.batch_size),
        num_workers=workers,
        worker_init_fn=worker_init if workers else None,
        # A fresh process, not a fork: OpenCV's and OpenMP's thread pools do not survive
        # fork (a forked worker can hang on its first cv2 call). Spawned, not forkserver'd: a
        # worker must be this process's child to die with it (worker_init); a forkserver's
        # child kept itself and the forkserver alive after a kill -9 of this process.
        multiprocessing_context="spawn" if workers else None,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    feats: list[np.ndarray] = []
    oks: list[np.ndarray] = []
    current = -1
    pending_from = 0
    bar = tqdm(total=len(dataset), desc="patches", unit="patch", mininterval=5, leave=False)
    with torch.inference_mode():
        for tiles, slide_no, index, ok in loader:
            j = int(slide_no[0])
            job = pending[j]
            if j != current:
                current, pending_from = j, job.partial.done
            f = encode_tiles(encoder, tiles, device, options.amp)
            finite = torch.isfinite(f).all(dim=1)
            if not finite.all():
                where = index[~finite.cpu()][:5].tolist()
                raise SpanError(
                    job.slide_path,
                    f"non-finite features for patches {where} (encoder {encoder.name}, "
                    f"weights {encoder.weights})",
                    "check the encoder checkpoint; on a GPU try features.amp: false",
                )
            feats.append(f.cpu().numpy().astype(FEATURE_DTYPES[options.dtype]))
            oks.append(ok.numpy())
            bar.update(len(index))
            n = len(job.patches)
            buffered = sum(len(x) for x in feats)
            if buffered >= flush_every or pending_from + buffered == n:
                job.partial.write(pending_from, np.concatenate(feats), np.concatenate(oks))
                pending_from += buffered
                feats, oks = [], []
                log.info("%s: flushed %d/%d patches", job.slide_id, pending_from, n)
            if pending_from == n:
                _report_bad_tiles(job.slide_id, job.finish(job), n)
    bar.close()
