"""The settings classes are the one declaration of every stage option: the schema, config.yaml,
config/README.md, the commands' flags and the stages' dataclasses agree with them."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import shlex
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from span.cli import build_parser
from span.settings.options import Declared, cli_options, declared
from span.settings.stages import (
    AUTO_WORKERS_MIN_PATCHES,
    SECTIONS,
    DemoSettings,
    EncoderSettings,
    ExclusionSettings,
    ExtractSettings,
    ImportSettings,
    JobSettings,
    PatchSettings,
    PredictSettings,
    SplitSettings,
    TrainSettings,
    tile_workers,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())["properties"]
CONFIG = yaml.safe_load((REPO / "config/config.yaml").read_text())
JSON_TYPES = {
    int: "integer",
    float: "number",
    bool: "boolean",
    str: "string",
    list: "array",
    type(None): "null",
}
BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}

# Each command with the settings classes whose flags it takes (predict: only the training
# section's device and cache; evaluate: only the split protocol), and the arguments it requires.
ONLY = {
    ("predict", TrainSettings): {"device", "cache_mb"},
    ("evaluate", SplitSettings): {"protocol"},
}
BATCH = "--slide-ids s --store d --manifest m"
COMMANDS = {
    "demo-slide": ([DemoSettings], "--slide-id s --label tumor --out o"),
    "demo-batch": ([DemoSettings], f"{BATCH} --labels tumor"),
    "patch": ([PatchSettings], "--slide s --slide-id s --out o --qc q"),
    "patch-batch": ([PatchSettings, JobSettings], f"{BATCH} --slides s"),
    "extract": ([EncoderSettings, ExtractSettings], "--slide s --patches p --out o"),
    "extract-batch": (
        [EncoderSettings, ExtractSettings, JobSettings],
        f"{BATCH} --slides s --patches p",
    ),
    "import-features": ([ImportSettings], "--features f --slide-id s --out o"),
    "import-batch": ([ImportSettings, JobSettings], f"{BATCH} --features f"),
    "qc-summary": ([ExclusionSettings], "--out o"),
    "split": ([SplitSettings, ExclusionSettings], "--samples s --classes a b --out o"),
    "train": ([TrainSettings], "--splits s --features-dir f --classes a b --model m --out o"),
    "predict": (
        [PredictSettings, TrainSettings],
        "--samples s --classes a b --features-dir f --model m --runs r --out o",
    ),
    "evaluate": ([SplitSettings], "--run v d --experiment e --classes a b --out o"),
}


def _schema_view(prop: dict) -> dict:
    """A schema property as {types, consts, bounds, pattern, ...}; oneOf alternatives merged."""
    view: dict = {"types": set(), "consts": set(), "default": prop.get("default")}
    for part in [prop, *prop.get("oneOf", [])]:
        types = part.get("type", [])
        view["types"] |= {types} if isinstance(types, str) else set(types)
        view["consts"] |= {*part.get("enum", []), *([part["const"]] if "const" in part else [])}
        for key in (*BOUNDS.values(), "pattern", "minLength"):
            if key in part:
                view[key] = part[key]
    if "items" in prop:
        view["items"] = prop["items"]["type"]
    return view


def _settings_view(cls: type, d: Declared) -> dict:
    """The same view of a declared option."""
    view = {
        "types": {JSON_TYPES[k] for k in d.kinds},
        "consts": set(d.consts),
        "default": d.default,
    }
    view |= {BOUNDS[b]: getattr(d.option, b) for b in BOUNDS if getattr(d.option, b) is not None}
    view |= {"pattern": d.option.pattern} if d.option.pattern else {}
    view |= {"minLength": d.option.min_length} if d.option.min_length else {}
    if list in d.kinds:
        (item,) = typing.get_args(typing.get_type_hints(cls)[d.name])
        view["items"] = JSON_TYPES[item]
    return view


def _options(section: str) -> dict[str, tuple[type, Declared]]:
    return {d.name: (cls, d) for cls in SECTIONS[section] for d in declared(cls)}


def _taken(command: str) -> list[tuple[type, str, Declared]]:
    """(settings class, config section, option) of every flag a command takes."""
    section = {cls: name for name, group in SECTIONS.items() for cls in group}
    return [
        (cls, section[cls], d)
        for cls in COMMANDS[command][0]
        for d in declared(cls)
        if d.flag and d.name in ONLY.get((command, cls), {d.name})
    ]


def _option(cls: type, name: str) -> Declared:
    return next(d for d in declared(cls) if d.name == name)


@pytest.mark.parametrize("section", SECTIONS)
def test_schema_declares_what_the_settings_declare(section):
    props = SCHEMA[section]["properties"]
    options = _options(section)
    assert list(props) == list(options)
    for key, (cls, d) in options.items():
        assert _schema_view(props[key]) == _settings_view(cls, d), f"{section}.{key}"
        if "description" in props[key]:
            assert props[key]["description"] == d.option.help, f"{section}.{key}"


@pytest.mark.parametrize("section", SECTIONS)
def test_config_yaml_sets_every_option(section):
    assert list(CONFIG[section]) == list(_options(section))


def _cell_values(cell: str) -> list:
    """A README default cell ("32, auto, 256", "1e-4", "false (demo: true)") as values."""
    cell = re.sub(r"\s*\([^)]*\)", "", cell)
    values = yaml.safe_load(f"[{cell}]")
    return [_number(v) if isinstance(v, str) else v for v in values]


def _number(text: str):
    """README numbers YAML leaves as text: 1e-4, 1/3."""
    try:
        num, _, den = text.partition("/")
        return float(num) / float(den or 1)
    except ValueError:
        return text


def _same(readme, expected) -> bool:
    if isinstance(expected, float) and isinstance(readme, int | float):
        return math.isclose(readme, expected, rel_tol=1e-9)
    return readme == expected


def _readme_rows():
    """(section.key, default cell values, CLAM preset cell) of config/README.md's option tables;
    a bare key takes the section of the key before it, else the heading's single section."""
    lines = (REPO / "config/README.md").read_text().splitlines()
    heading, header = [], []
    for line, after in zip(lines, [*lines[1:], ""], strict=True):
        heading = re.findall(r"`([a-z_]+)`", line) if line.startswith("## ") else heading
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if after.startswith("|---"):
            header = cells
        if not line.startswith("| `") or "default" not in header:
            continue
        section, keys = heading[0] if len(heading) == 1 else "", []
        for name in re.findall(r"`([a-z_.0-9]+)`", cells[0]):
            section, _, key = name.rpartition(".") if "." in name else (section, "", name)
            keys.append(f"{section}.{key}" if section else key)
        defaults = _cell_values(cells[header.index("default")])
        assert len(defaults) == len(keys), line
        clam = cells[header.index("CLAM preset")] if "CLAM preset" in header else ""
        yield from ((key, default, clam) for key, default in zip(keys, defaults, strict=True))


README_ROWS = {key: (default, clam) for key, default, clam in _readme_rows()}


def test_readme_tables_document_every_option():
    documented = {f"{section}.{name}" for section in SECTIONS for name in _options(section)}
    assert documented <= set(README_ROWS)
    assert {"cohort", "seeds", "training_env", "run_experiments"} <= set(README_ROWS)


@pytest.mark.parametrize("key", README_ROWS)
def test_readme_default_is_the_schema_default(key):
    """The default column: the schema's default ("required" where there is none); for the
    segmentation keys, whose default is the preset's, both presets' values."""
    from span.slides.segmentation import PRESETS, SegmentationParams

    (default, clam), (section, _, name) = README_ROWS[key], key.rpartition(".")
    prop = SCHEMA[section]["properties"][name] if section else SCHEMA[name]
    if section == "patching" and name in {f.name for f in dataclasses.fields(SegmentationParams)}:
        assert _same(default, getattr(PRESETS["default"], name))
        assert _same(_cell_values(clam)[0], getattr(PRESETS["clam"], name))
    elif "default" in prop:
        assert _same(default, prop["default"])
    else:
        assert default == "required"


def test_stage_dataclasses_take_their_defaults_from_the_settings():
    from span.data.splits import make_splits
    from span.device import DEVICE_PATTERN
    from span.features.extract import ExtractOptions
    from span.features.feature_file import FEATURE_DTYPES
    from span.slides.patching import PatchingParams
    from span.slides.segmentation import SegmentationParams
    from span.training.augment import Augmentation
    from span.training.trainer import TrainConfig

    for stage, settings in [
        (PatchingParams(), PatchSettings()),
        (ExtractOptions(), ExtractSettings()),
        (TrainConfig(), TrainSettings()),
        (Augmentation(), TrainSettings()),
    ]:
        for f in dataclasses.fields(stage):
            if hasattr(settings, f.name):
                assert getattr(stage, f.name) == getattr(settings, f.name), f.name
    split = inspect.signature(make_splits).parameters
    for name, value in dataclasses.asdict(SplitSettings()).items():
        assert _same(split[name].default, value), name
    assert {f.name for f in dataclasses.fields(SegmentationParams)} <= set(vars(PatchSettings()))
    assert set(_option(ExtractSettings, "dtype").consts) == set(FEATURE_DTYPES)
    for cls in (ExtractSettings, TrainSettings):
        assert _option(cls, "device").option.pattern == DEVICE_PATTERN


def _parse(command: str, words: str):
    required = COMMANDS[command][1]
    return build_parser().parse_args([command, *shlex.split(required), *shlex.split(words)])


def _values(section: str, flip: bool) -> dict:
    """config.yaml's section, with every boolean option flipped when `flip`."""
    values = dict(CONFIG[section])
    for name, (_, d) in _options(section).items():
        if flip and bool in d.kinds:
            values[name] = not values[name]
    return values


@pytest.mark.parametrize("command", COMMANDS)
def test_a_command_without_its_options_takes_the_declared_defaults(command):
    args = _parse(command, "")
    for _, _, d in _taken(command):
        assert getattr(args, d.name) == d.default, d.name


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("command", COMMANDS)
def test_config_values_reach_the_command_as_flags_it_parses(command, flip):
    """cli_options (the workflow's config -> flags) and the generated flags agree both ways."""
    taken = _taken(command)
    words = [cli_options({d.name: _values(s, flip)[d.name]}, cls) for cls, s, d in taken]
    args = _parse(command, " ".join(words))
    for _, section, d in taken:
        value = _values(section, flip)[d.name]
        assert _same(getattr(args, d.name), d.default if value is None else value), d.name


@pytest.mark.parametrize(
    ("command", "words", "message"),
    [
        ("qc-summary", "--max-bad-tile-share 1.5", "1.5 is not <= 1"),
        ("patch", "--patch-size 8", "8 is not >= 16"),
        ("patch", "--saturation-threshold high", "expected 'otsu' or float"),
        ("extract", "--num-workers many", "expected 'auto' or int"),
        ("train", "--device gpu", "'gpu' is not valid; use auto (CUDA when present)"),
        ("split", "--test-fraction 1", "1.0 is not < 1"),
        ("split", "--protocol random", "invalid choice"),
        ("extract", "--dtype float64", "invalid choice"),
    ],
)
def test_values_the_schema_refuses_the_flags_refuse(command, words, message, capsys):
    with pytest.raises(SystemExit):
        _parse(command, words)
    assert message in capsys.readouterr().err


def test_special_values_parse_as_declared():
    args = _parse("patch", "--saturation-threshold otsu --median-blur 5 --no-exclude-pen")
    assert (args.saturation_threshold, args.median_blur, args.exclude_pen) == ("otsu", 5, False)
    assert _parse("patch", "--saturation-threshold 12").saturation_threshold == 12.0
    assert _parse("extract", "--num-workers 3").num_workers == 3
    assert _parse("extract", "").num_workers == "auto"


def _dry_run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    snakefile = workdir / "Snakefile" if (workdir / "Snakefile").exists() else REPO / "Snakefile"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir), "-n"]
    return subprocess.run(
        [*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300
    )


#: The commands the workflow's rules run (the one-slide ones are for use by hand).
WORKFLOW_COMMANDS = [
    c for c in COMMANDS if c not in ("demo-slide", "patch", "extract", "import-features")
]


def test_every_option_reaches_its_command_in_the_workflow(tmp_path):
    """In the demo's planned jobs, each command line carries every option of its settings
    classes that the config sets (import-batch has no job in the demo)."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    res = _dry_run(tmp_path, "-p", "--forceall")
    assert res.returncode == 0, res.stdout[-3000:]
    lines = [line for line in res.stdout.splitlines() if "python -m span" in line]
    for command in WORKFLOW_COMMANDS:
        found = [line + " " for line in lines if re.search(rf"\.log {command} ", line)]
        assert len(found) > 0 or command == "import-batch", command
        for _, section, d in _taken(command) if found else []:
            value = CONFIG[section][d.name]
            flag = f"--no-{d.flag[2:]}" if value is False else d.flag
            assert value is None or f"{flag} " in found[0], (command, flag)


def test_a_schema_key_no_settings_class_declares_fails_at_start_up(tmp_path):
    for name in ("Snakefile", "workflow", "config"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, tmp_path / name)
    schema_file = tmp_path / "workflow/schemas/config.schema.yaml"
    schema = yaml.safe_load(schema_file.read_text())
    schema["properties"]["patching"]["properties"]["tile_overlap"] = {"type": "integer"}
    schema_file.write_text(yaml.safe_dump(schema))
    res = _dry_run(tmp_path)
    assert res.returncode != 0
    assert "config schema key patching.tile_overlap is not declared in span/settings" in res.stdout


def test_auto_tile_workers_follow_the_slide_size() -> None:
    """auto reads a small slide's tiles in the encoding process (a spawned reader costs more
    than it saves there) and a large one's in workers; a count is kept as given."""
    assert tile_workers("auto", AUTO_WORKERS_MIN_PATCHES - 1) == 0
    assert tile_workers("auto", AUTO_WORKERS_MIN_PATCHES) >= 1
    assert tile_workers("auto") >= 1
    assert tile_workers(3, 10) == 3
    assert tile_workers("0", 10**6) == 0
