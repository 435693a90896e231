"""Patching as the user measures it: whole processes, span side by side with CLAM and LazySlide.

One run prints, per workload, each tool's wall seconds as a whole process (interpreter start,
imports, work, writing; median and range over --repeats fresh processes after one untimed
warm-up run each), its peak RSS (largest process of its tree, as `/usr/bin/time -v` reports
it: `wait4`'s rusage) and its number of patches; then the ratios span/CLAM and span/LazySlide
and, for the large slide, the goal of issue 13: >= 3x faster than CLAM, <= 1 GB.

Workloads: a 40960 x 40960 synthetic 40x slide (0.25 um/px, ~35% tissue; written once into
--workdir) and the real CMU-1-Small-Region.svs (20x, 0.499 um/px). Every tool patches at
the same physical size: span's default 224 px at 0.5 um/px, i.e. span's `patch_size_level0`
(from its output's attributes: 448 px on the 40x slide, 224 on CMU-1) for CLAM, and
224 px at mpp 0.5 for LazySlide.

- span: `python -m span patch` with its defaults (this interpreter: the project's venv), and
  again segmenting as coarsely as CLAM does (`--seg-mpp 16 --qc-max-side 640`; not the default).
- CLAM: `create_patches_fp.py --seg --patch --stitch --patch_size P --step_size P` at commit
  CLAM_COMMIT, run by this interpreter (the project's venv has everything CLAM's patching
  imports). --clam-dir is a CLAM checkout or a git repository holding that commit (e.g. a
  bare mirror); without it the script fetches the commit from GitHub. No CLAM: row skipped.
- LazySlide: `find_tissues` + `tile_tissues` + `wsi.write()` (its results on disk, as span
  and CLAM write theirs) in a driver script, run by --lazyslide-python. Without it the script
  uses, or first creates, the venv LAZYSLIDE_VENV (`python -m venv` + `pip install
  lazyslide==LAZYSLIDE_VERSION`: about 7 GB, PyTorch included, a few minutes once).

After the table, one instrumented span run on the large slide shows where its time goes.

    .venv/bin/python benchmarks/bench_patching.py [--repeats 3] [--workdir /tmp/span-bench]
        [--clam-dir DIR] [--lazyslide-python PY] [--tools span span-coarse clam lazyslide]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CMU1 = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
CLAM_URL = "https://github.com/mahmoodlab/CLAM.git"
CLAM_COMMIT = "53e2409d4a8189c682c173382964a85f114f923c"  # master, 2025-04-14
CLAM_PATHS = ("create_patches_fp.py", "wsi_core", "utils")  # all its patching imports
LAZYSLIDE_VERSION = "0.13.0"
LAZYSLIDE_VENV = Path("/tmp/lazyslide-venv")
GOAL_SPEEDUP = 3.0
GOAL_PEAK_MB = 1024.0

LAZYSLIDE_DRIVER = """\
import json, sys
import lazyslide as zs
from wsidata import open_wsi

slide, store, result = sys.argv[1:4]
wsi = open_wsi(slide, store=store)
zs.pp.find_tissues(wsi)
zs.pp.tile_tissues(wsi, 224, mpp=0.5)
wsi.write()
with open(result, "w") as f:
    json.dump({"patches": len(wsi["tiles"])}, f)
"""


class ToolFailed(RuntimeError):
    """A tool's process exited with an error; the message ends with its log's tail."""


@dataclass(frozen=True)
class Run:
    """One whole-process run of a tool."""

    seconds: float
    peak_mb: float
    patches: int


@dataclass(frozen=True)
class Tool:
    """A peer's command line for (slide, output folder, level-0 patch side), and its patches."""

    name: str
    command: Callable[[Path, Path, int], list[str]]
    count: Callable[[Path, Path], int]  # (slide, output folder) -> patches written
    cwd: Path = REPO


def timed_process(argv: list[str], cwd: Path, log: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB, largest process of the tree) of one fresh process."""
    with log.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise ToolFailed(f"exit code {proc.returncode}: " + " | ".join(tail))
    return seconds, usage.ru_maxrss / 1024


def run_tool(tool: Tool, slide: Path, ps0: int, out: Path) -> Run:
    """Run `tool` once on `slide` into the empty folder `out` and count its patches."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    seconds, peak = timed_process(tool.command(slide, out, ps0), tool.cwd, out / "log.txt")
    return Run(seconds, peak, tool.count(slide, out))


def h5_rows(path: Path) -> int:
    """Rows of `coords` in a patch HDF5 (span's or CLAM's)."""
    import h5py

    with h5py.File(path, "r") as f:
        return len(f["coords"])


SPAN = "span patch"
#: span segmenting as coarsely as CLAM does (16 um/px) with a smaller QC image: not the default.
SPAN_COARSE = "span patch --seg-mpp 16"
COARSE_OPTIONS = ("--seg-mpp", "16", "--qc-max-side", "640")


def span_tool(name: str = SPAN, options: tuple[str, ...] = ()) -> Tool:
    """`python -m span patch` with its defaults, or with `options`."""

    def command(slide: Path, out: Path, ps0: int) -> list[str]:
        return [
            *(sys.executable, "-m", "span", "patch", "--slide", str(slide)),
            *("--slide-id", slide.stem, "--out", str(out / "span.h5")),
            *("--qc", str(out / "span.png"), *options),
        ]

    return Tool(name, command, lambda slide, out: h5_rows(out / "span.h5"))


def span_patch_side(slide: Path, out: Path) -> int:
    """span's level-0 patch side on `slide` (attribute `patch_size_level0` of its output)."""
    import h5py

    run_tool(span_tool(), slide, 0, out)
    with h5py.File(out / "span.h5", "r") as f:
        return int(f.attrs["patch_size_level0"])


def clam_tool(clam_dir: Path) -> Tool:
    """CLAM's create_patches_fp.py --seg --patch --stitch at span's level-0 patch side."""

    def command(slide: Path, out: Path, ps0: int) -> list[str]:
        source = out / "source"
        source.mkdir()
        (source / slide.name).symlink_to(slide.resolve())
        return [
            *(sys.executable, "create_patches_fp.py", "--source", str(source)),
            *("--save_dir", str(out / "clam"), "--patch_size", str(ps0)),
            *("--step_size", str(ps0), "--seg", "--patch", "--stitch"),
        ]

    def count(slide: Path, out: Path) -> int:
        h5 = out / "clam" / "patches" / f"{slide.stem}.h5"
        return h5_rows(h5) if h5.exists() else 0  # CLAM writes no file when it finds no tissue

    return Tool("CLAM create_patches_fp", command, count, cwd=clam_dir)


def lazyslide_tool(python: Path, driver: Path, version: str) -> Tool:
    """LazySlide's find_tissues + tile_tissues (224 px at 0.5 mpp) + write, via `driver`."""

    def command(slide: Path, out: Path, ps0: int) -> list[str]:
        return [str(python), str(driver), str(slide), str(out / "lz.zarr"), str(out / "n.json")]

    def count(slide: Path, out: Path) -> int:
        return json.loads((out / "n.json").read_text())["patches"]

    return Tool(f"LazySlide {version}", command, count)


def extract_clam(git_dir: Path, dest: Path) -> Path:
    """CLAM_PATHS at CLAM_COMMIT from the git repository `git_dir`, extracted into `dest`."""
    tar = subprocess.run(
        ["git", "-C", str(git_dir), "archive", "--format=tar", CLAM_COMMIT, *CLAM_PATHS],
        check=True,
        capture_output=True,
    ).stdout
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(dest, filter="data")
    return dest


def fetch_clam(tmp: Path) -> Path:
    """A bare repository holding CLAM_COMMIT, fetched from GitHub (depth 1)."""
    git_dir = tmp / "clam.git"
    subprocess.run(["git", "init", "-q", "--bare", str(git_dir)], check=True)
    subprocess.run(
        ["git", "-C", str(git_dir), "fetch", "-q", "--depth", "1", CLAM_URL, CLAM_COMMIT],
        check=True,
        capture_output=True,
        timeout=180,
    )
    return git_dir


def obtain_clam(clam_dir: Path | None, tmp: Path) -> Path | None:
    """A folder with create_patches_fp.py at CLAM_COMMIT, or None after saying why not."""
    if clam_dir and (clam_dir / "create_patches_fp.py").is_file():
        return clam_dir
    try:
        return extract_clam(clam_dir or fetch_clam(tmp), tmp / "clam")
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        print(
            f"CLAM: cannot get {CLAM_URL} at {CLAM_COMMIT} ({exc}; "
            f"{detail.decode(errors='replace').strip()[:200]}): row skipped; give --clam-dir "
            "(a CLAM checkout at that commit or a git repository holding it)"
        )
        return None


def obtain_lazyslide(python: Path | None) -> Path | None:
    """LazySlide's interpreter: the one given, else LAZYSLIDE_VENV's (created if missing)."""
    if python is not None:
        return python
    venv_python = LAZYSLIDE_VENV / "bin" / "python"
    if venv_python.exists():
        return venv_python
    print(f"creating {LAZYSLIDE_VENV} with lazyslide=={LAZYSLIDE_VERSION} (once: ~7 GB, minutes)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(LAZYSLIDE_VENV)], check=True)
        pip = [str(venv_python), "-m", "pip", "install", "-q", f"lazyslide=={LAZYSLIDE_VERSION}"]
        subprocess.run(pip, check=True, timeout=1800)
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"LazySlide: cannot install it into {LAZYSLIDE_VENV} ({exc}): row skipped")
        return None
    return venv_python


def measure(tools: list[Tool], slide: Path, ps0: int, repeats: int, out: Path) -> dict:
    """Runs per tool: one untimed warm-up, then `repeats` rounds interleaving the tools."""
    runs: dict[str, list[Run]] = {t.name: [] for t in tools}
    failed: dict[str, str] = {}
    for round_ in range(repeats + 1):
        for tool in tools:
            if tool.name in failed:
                continue
            try:
                run = run_tool(tool, slide, ps0, out / f"tool{tools.index(tool)}")
            except (ToolFailed, OSError, KeyError) as exc:
                failed[tool.name] = str(exc)
                continue
            if round_ > 0:
                runs[tool.name].append(run)
    return {"runs": runs, "failed": failed}


def print_table(result: dict) -> None:
    """One row per tool: wall seconds median [range], peak MB, patches."""
    print(f"  {'tool':<24} {'wall s median [min-max]':>24} {'peak MB':>8} {'patches':>8}")
    for name, runs in result["runs"].items():
        if name in result["failed"]:
            print(f"  {name:<24} failed: {result['failed'][name]}")
            continue
        s = [r.seconds for r in runs]
        wall = f"{statistics.median(s):.2f} [{min(s):.2f}-{max(s):.2f}]"
        patches = sorted({r.patches for r in runs})
        print(
            f"  {name:<24} {wall:>24} {max(r.peak_mb for r in runs):>8.0f} "
            f"{'/'.join(map(str, patches)):>8}"
        )


def summary(runs: list[Run]) -> tuple[float, float]:
    """Median wall seconds and largest peak MB of a tool's runs."""
    return statistics.median(r.seconds for r in runs), max(r.peak_mb for r in runs)


def print_ratios(result: dict, goal: bool) -> None:
    """span/peer time and memory ratios; on the large slide, whether the goal is met."""
    ok = {n: summary(r) for n, r in result["runs"].items() if n not in result["failed"]}
    peers = {n: v for n, v in ok.items() if not n.startswith("span")}
    for mine in (SPAN, SPAN_COARSE):
        if mine not in ok:
            continue
        for name, (seconds, peak) in peers.items():
            print(
                f"  {mine} / {name.split()[0]}: time {ok[mine][0] / seconds:.2f} "
                f"({seconds / ok[mine][0]:.2f}x faster), peak memory {ok[mine][1] / peak:.2f}"
            )
    span = ok.get(SPAN)
    if span is None:
        return
    clam = next((v for n, v in peers.items() if n.startswith("CLAM")), None)
    if goal:
        speedup = f"{clam[0] / span[0]:.2f}x" if clam else "n/a (no CLAM run)"
        met = clam is not None and clam[0] / span[0] >= GOAL_SPEEDUP and span[1] <= GOAL_PEAK_MB
        print(
            f"  goal: >= {GOAL_SPEEDUP:g}x faster than CLAM on the large slide, <= 1 GB: "
            f"{speedup}, {span[1]:.0f} MB -> {'MET' if met else 'NOT MET'}"
        )


def describe(slide: Path, ps0: int) -> str:
    """Size, resolution and patch side of a slide, one line."""
    import openslide

    with openslide.OpenSlide(str(slide)) as s:
        (w, h), mpp = s.dimensions, float(s.properties.get(openslide.PROPERTY_NAME_MPP_X, "nan"))
    return (
        f"{slide.name}: {w} x {h} px at {mpp:.3f} um/px, {slide.stat().st_size / 1e6:.0f} MB; "
        f"patch side {ps0} level-0 px (224 px at 0.5 um/px)"
    )


def large_slide(workdir: Path, side: int) -> Path:
    """The synthetic 40x benchmark slide, written on first use in a process of its own: a
    forked child's peak RSS (wait4) starts at this process's size, so this one stays small."""
    from span.synthetic.large_slide import write_large_synthetic_slide

    slide = workdir / f"synthetic_40x_{side}.tiff"
    if not slide.exists():
        t0 = time.perf_counter()
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            info = pool.submit(
                write_large_synthetic_slide, slide, side_px=side, mpp=0.25, seed=0
            ).result()
        print(f"wrote {slide} in {time.perf_counter() - t0:.1f} s: {info}")
    return slide


def span_phases(slide: Path, out: Path) -> None:
    """In-process run of span's patching, instrumented; prints a JSON line (child mode)."""
    import openslide

    from span.slides import patching
    from span.slides.patching import PatchingParams, run_patching

    phases: dict[str, float] = {}

    def timed(name: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0

        return wrapper

    level0_read = [0]
    original_read = openslide.OpenSlide.read_region

    def counting_read(self, location, level, size):
        level0_read[0] += size[0] * size[1] if level == 0 else 0
        return original_read(self, location, level, size)

    openslide.OpenSlide.read_region = counting_read
    for name, attr in [
        ("read low-res image", "read_downsampled"),
        ("segmentation", "segment_tissue"),
        ("grid selection", "cell_tissue_fraction"),
        ("grid selection", "select_cells"),
        ("QC image", "render_qc"),
        ("write QC PNG", "write_png"),
        ("write patch h5", "write_patch_file"),
    ]:
        setattr(patching, attr, timed(name, getattr(patching, attr)))
    t0 = time.perf_counter()
    run_patching(slide, "large", out / "large.h5", out / "large.png", PatchingParams())
    total = time.perf_counter() - t0
    with openslide.OpenSlide(str(slide)) as s:
        level0 = s.dimensions[0] * s.dimensions[1]
    print(json.dumps({"total": total, "phases": phases, "level0_read": level0_read[0] / level0}))


def print_phases(slide: Path, out: Path) -> None:
    """Where span's time goes on `slide`: one instrumented child process, timed whole."""
    out.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, __file__, "--child", str(slide), "--workdir", str(out)]
    seconds, _ = timed_process(argv, REPO, out / "log.txt")
    child = json.loads((out / "log.txt").read_text().strip().splitlines()[-1])
    print(f"  where span's time goes on {slide.name} (one instrumented run, {seconds:.2f} s):")
    print(f"    {'start, imports, exit':<22} {seconds - child['total']:.3f} s")
    for name, phase_seconds in child["phases"].items():
        print(f"    {name:<22} {phase_seconds:.3f} s")
    print(f"    level-0 pixels read: {100 * child['level0_read']:.2f}% of level 0")


def build_tools(args: argparse.Namespace, tmp: Path) -> list[Tool]:
    """The tools asked for that can run here (span always first)."""
    tools = [span_tool()] if "span" in args.tools else []
    if "span-coarse" in args.tools:
        tools.append(span_tool(SPAN_COARSE, COARSE_OPTIONS))
    if "clam" in args.tools and (clam := obtain_clam(args.clam_dir, tmp)):
        tools.append(clam_tool(clam))
    if "lazyslide" in args.tools and (python := obtain_lazyslide(args.lazyslide_python)):
        version = lazyslide_version(python)
        if version:
            driver = tmp / "lazyslide_driver.py"
            driver.write_text(LAZYSLIDE_DRIVER)
            tools.append(lazyslide_tool(python, driver, version))
    return tools


def lazyslide_version(python: Path) -> str | None:
    """The lazyslide version installed for `python`, or None after saying it is missing."""
    argv = [str(python), "-c", "import importlib.metadata as m; print(m.version('lazyslide'))"]
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"LazySlide: no lazyslide for {python} ({exc}): row skipped")
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=40960, help="synthetic slide side, px")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/span-bench"))
    parser.add_argument("--cmu", type=Path, default=CMU1, help="CMU-1-Small-Region.svs")
    parser.add_argument("--clam-dir", type=Path, help="CLAM checkout or git repository")
    parser.add_argument("--lazyslide-python", type=Path, help="python with lazyslide")
    parser.add_argument(
        "--tools",
        nargs="+",
        choices=["span", "span-coarse", "clam", "lazyslide"],
        default=["span", "span-coarse", "clam", "lazyslide"],
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        span_phases(args.child, args.workdir)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-", dir=args.workdir))
    try:
        tools = build_tools(args, tmp)
        workloads = [large_slide(args.workdir, args.side)]
        workloads += [args.cmu] if args.cmu.is_file() else []
        if not args.cmu.is_file():
            print(f"{args.cmu} not found: CMU-1 workload skipped")
        print(f"{args.repeats} runs per tool after one warm-up; interpreter {sys.executable}")
        for i, slide in enumerate(workloads):
            ps0 = span_patch_side(slide, tmp / "side")
            print(f"\n{describe(slide, ps0)}")
            result = measure(tools, slide, ps0, args.repeats, tmp / "runs")
            print_table(result)
            print_ratios(result, goal=i == 0)
        print()
        print_phases(workloads[0], tmp / "phases")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
