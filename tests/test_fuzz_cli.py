"""Malformed inputs to every CLI verb end in one ``histofuse: error:`` line with exit status 2.

Each verb is first run on valid inputs (so that a case fails because of the one input it spoils),
then with one argument spoiled at a time: a missing file, a folder for a file, garbage bytes, a
truncated or empty copy, unparsable JSON, an output under a regular file. A full disk is real:
a filled tmpfs in a user namespace (skipped where unprivileged namespaces are off). Paths with
spaces reach the shell of a real Snakemake run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from histofuse.cli import main
from histofuse.encoders.model import build_trunk
from histofuse.encoders.registry import get_spec

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PREFIX = "histofuse: error:"
TASK = json.dumps({"genes": {"top_k": 5, "select_on": "all"}, "split": {"n_folds": 2}})
EMBED = json.dumps({"device": "cpu", "num_workers": 0, "batch_size": 16})
TILING = json.dumps({"patch_um": 56.0, "target_mpp": 1.0})

pytestmark = pytest.mark.fault


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Runs ``histofuse ARGV`` in this process; returns its status and stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main([str(a) for a in argv])
    return rc, err.getvalue()


def assert_one_line(rc: int, stderr: str, *expected: str) -> str:
    """Asserts status 2, exactly one error line, no traceback; returns that line."""
    lines = [line for line in stderr.splitlines() if line.startswith(PREFIX)]
    assert rc == 2, stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def valid(small_cohort, small_tiles, tmp_path_factory) -> dict[str, Path]:
    """Valid inputs of every verb, in a folder whose name has a space and a non-ASCII letter."""
    root = tmp_path_factory.mktemp("fuzz") / "inputs é"
    root.mkdir()
    samples = sorted(small_tiles)
    store = root / "tiny vit.zarr"
    rc, err = run_cli(
        [
            "embed",
            "--encoder",
            "tiny-vit",
            "--tiles",
            *(small_tiles[s] for s in samples),
            "--out",
            store,
            "--embed",
            EMBED,
        ]
    )
    assert rc == 0, err
    weights = root / "tiny vit.pth"
    torch.save(build_trunk(get_spec("tiny-vit"), device="cpu").state_dict(), weights)
    sheet = load_sheet(small_cohort)
    first = sheet.iloc[0]
    (root / "task.json").write_text(TASK)
    return {
        "root": root,
        "sheet": small_cohort,
        "slide": Path(first["slide"]),
        "expression": Path(first["expression"]),
        "sample": first.name,
        "tiles": small_tiles[samples[0]],
        "store": store,
        "weights": weights,
        "task": root / "task.json",
    }


def load_sheet(path: Path):
    from histofuse.samples import load_samples

    return load_samples(path)


def argv_of(verb: str, v: dict[str, Path], out: Path) -> dict[str, list]:
    """The valid argument list of a verb, as flag → values (outputs under ``out``)."""
    if verb == "tile":
        return {
            "--sample": [v["sample"]],
            "--slide": [v["slide"]],
            "--expression": [v["expression"]],
            "--tiling": [TILING],
            "--out": [out / "tiles é.parquet"],
        }
    if verb == "embed":
        return {
            "--encoder": ["tiny-vit"],
            "--tiles": [v["tiles"]],
            "--weights": [v["weights"]],
            "--embed": [EMBED],
            "--out": [out / "store é.zarr"],
        }
    if verb == "fit":
        return {
            "--task": ["t"],
            "--task-json": [v["task"]],
            "--samples": [v["sheet"]],
            "--stores": [v["store"]],
            "--features": ["tiny-vit"],
            "--head": ["ridge"],
            "--metrics": [out / "metrics é.parquet"],
            "--predictions": [out / "predictions é.parquet"],
        }
    return {  # report, on the metrics the fit case wrote
        "--metrics": [v["metrics"]],
        "--options": ["{}"],
        "--out": [out / "report é"],
    }


def flat(verb: str, args: dict[str, list]) -> list:
    return [verb] + [x for flag, values in args.items() for x in (flag, *values)]


@pytest.fixture(scope="module")
def baseline(valid, tmp_path_factory) -> dict[str, Path]:
    """Runs every verb once on valid inputs (a spoiled case then fails for its one input)."""
    out = tmp_path_factory.mktemp("baseline out")
    for verb in ("tile", "embed", "fit", "report"):
        rc, err = run_cli(flat(verb, argv_of(verb, valid, out)))
        assert rc == 0, (verb, err[-2000:])
        valid.setdefault("metrics", out / "metrics é.parquet")
    return valid


def spoil(kind: str, source: Path, where: Path) -> Path:
    """A spoiled copy of ``source`` under ``where``; of a store, its manifest is spoiled."""
    target = where / f"spoilt {kind} ü{source.suffix}"
    if kind == "missing":
        return target
    if kind == "folder":
        target.mkdir()
        return target
    if source.is_dir():  # a store: readers open its manifest first
        shutil.copytree(source, target)
        source, broken = manifest_of(source), manifest_of(target)
    else:
        broken = target
    data = source.read_bytes()
    rng = random.Random(kind)
    spoiled = {
        "garbage": bytes(rng.randrange(256) for _ in range(max(64, len(data) // 4))),
        "truncated": data[: len(data) // 2],
        "empty": b"",
    }[kind]
    broken.write_bytes(spoiled)
    return target


def manifest_of(store: Path) -> Path:
    return store.with_name(store.name.removesuffix(".zarr") + ".manifest.json")


FILE_ARGS = [
    ("tile", "--slide", "slide"),
    ("tile", "--expression", "expression"),
    ("embed", "--tiles", "tiles"),
    ("embed", "--weights", "weights"),
    ("fit", "--samples", "sheet"),
    ("fit", "--stores", "store"),
    ("fit", "--task-json", "task"),
    ("report", "--metrics", "metrics"),
]
KINDS = ["missing", "folder", "garbage", "truncated", "empty"]
# A folder is a valid --tiles (a shard's tiling folder); an empty settings file means defaults.
SKIP = {("--tiles", "folder"), ("--task-json", "empty")}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("verb", "flag", "key"), FILE_ARGS)
def test_a_spoiled_input_ends_in_one_line(baseline, tmp_path, verb, flag, key, kind):
    if (flag, kind) in SKIP:
        pytest.skip("a valid input")
    args = argv_of(verb, baseline, tmp_path)
    args[flag] = [spoil(kind, baseline[key], tmp_path)]
    assert_one_line(*run_cli(flat(verb, args)))


@pytest.mark.parametrize("verb", ["tile", "embed", "fit", "report"])
def test_an_output_under_a_file_ends_in_one_line(baseline, tmp_path, verb):
    args = argv_of(verb, baseline, tmp_path)
    (tmp_path / "a file").write_text("x")
    flag = "--metrics" if verb == "fit" else "--out"
    args[flag] = [tmp_path / "a file" / "out é.parquet"]
    assert_one_line(*run_cli(flat(verb, args)), "a file")


@pytest.mark.parametrize("verb", ["tile", "fit"])
def test_a_device_or_pipe_given_as_output_is_never_replaced(baseline, tmp_path, verb):
    """Outputs are renamed over their path: a pipe (as `/dev/null` or `/dev/full`) is refused."""
    import stat

    pipe = tmp_path / "pipe.parquet"
    os.mkfifo(pipe)
    args = argv_of(verb, baseline, tmp_path)
    args["--metrics" if verb == "fit" else "--out"] = [pipe]
    assert_one_line(*run_cli(flat(verb, args)), "is a device, pipe or socket")
    assert stat.S_ISFIFO(pipe.stat().st_mode)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_ends_in_one_line(baseline, tmp_path):
    folder = tmp_path / "read only"
    folder.mkdir()
    folder.chmod(0o555)
    args = argv_of("fit", baseline, folder)
    assert_one_line(*run_cli(flat("fit", args)), "Permission denied", "read only")


def test_weights_of_the_wrong_shapes_name_the_key_and_the_fix(baseline, tmp_path):
    import timm

    other = timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, img_size=112, depth=4, embed_dim=96, num_heads=3
    )
    path = tmp_path / "narrow vit.pth"
    torch.save(other.state_dict(), path)
    args = argv_of("embed", baseline, tmp_path)
    args["--weights"] = [path]
    line = assert_one_line(*run_cli(flat("embed", args)), str(path), "architecture")
    assert "(1, 1, 96)" in line and "(1, 1, 192)" in line  # cls_token in the file, in the model


def test_unreadable_weights_never_advise_unsafe_loading(baseline, tmp_path):
    path = tmp_path / "pickled.pth"
    path.write_bytes(b"\x80\x02garbage" * 10)  # torch's message would say weights_only=False
    args = argv_of("embed", baseline, tmp_path)
    args["--weights"] = [path]
    line = assert_one_line(*run_cli(flat("embed", args)), str(path))
    assert "weights_only" not in line and "False" not in line


json_flags = st.sampled_from(
    [("tile", "--tiling"), ("embed", "--embed"), ("fit", "--task-json"), ("report", "--options")]
)
junk = st.one_of(
    st.text(alphabet="{}[]:,\"'abc 1-.\n\\éx", min_size=1, max_size=20).map(lambda t: "{" + t),
    st.sampled_from(['{"batch_size": "big"}', '{"unknown": 1}', "{}{}", '{"a": NaN']),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(verb_flag=json_flags, text=junk)
def test_bad_inline_json_ends_in_one_line(baseline, tmp_path, verb_flag, text):
    verb, flag = verb_flag
    args = argv_of(verb, baseline, tmp_path)
    args[flag] = [text]
    rc, err = run_cli(flat(verb, args))
    if rc != 0:
        assert_one_line(rc, err)


@pytest.mark.parametrize(
    "argv",
    [
        ["embed", "--encoder", "not-an-encoder", "--tiles", "x", "--out", "y"],
        ["tile", "--sample", "A", "--mpp", "half"],
        ["fit", "--task", "t"],
        ["no-such-verb"],
    ],
)
def test_usage_errors_end_in_one_line(argv):
    assert_one_line(*run_cli(argv))


# --- real consoles: a full disk, and the installed command's stderr -------------------------


def in_full_tmpfs(tmp_path: Path, command: list) -> subprocess.CompletedProcess:
    """Runs a command with ``tmp_path/full`` a filled tmpfs (a user and mount namespace)."""
    full = tmp_path / "full"
    full.mkdir()
    script = (
        'mount -t tmpfs -o size=64k tmpfs "$1" && dd if=/dev/zero of="$1/fill" bs=4k '
        '2>/dev/null; shift; exec "$@"'
    )
    cmd = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", full]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(cmd + [str(c) for c in command], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def namespaces() -> None:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip("unprivileged user namespaces are off")


@pytest.mark.parametrize(
    ("verb", "flag", "name"),
    [
        ("tile", "--out", "tiles.parquet"),  # pyarrow
        ("tile", "--qc", "qc.png"),  # PIL
        ("embed", "--out", "store.zarr"),  # zarr and numcodecs
    ],
)
def test_a_full_disk_ends_in_one_line(baseline, namespaces, tmp_path, verb, flag, name):
    args = argv_of(verb, baseline, tmp_path)
    args[flag] = [tmp_path / "full" / name]
    proc = in_full_tmpfs(tmp_path, [BIN / "histofuse", *flat(verb, args)])
    line = assert_one_line(proc.returncode, proc.stderr, "no space left on device", "results/")
    assert name in line, line


def test_the_installed_command_prints_one_line(tmp_path):
    settings_file = tmp_path / "tiling é.yaml"
    settings_file.write_bytes(b"patch_um: [1,\n\xff\xfe")
    cmd = [BIN / "histofuse", "tile", "--sample", "A", "--slide", tmp_path / "a.tiff"]
    cmd += ["--out", tmp_path / "a.parquet", "--tiling", settings_file]
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    assert_one_line(proc.returncode, proc.stderr, str(settings_file), "--tiling")


# --- Snakemake: paths with spaces, and config errors -----------------------------------------


def snakemake(workdir: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [BIN / "snakemake", "-s", REPO / "Snakefile", "--directory", workdir]
    cmd += ["--configfile", config, "--cores", "2", *args]
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)


def user_config(path: Path, **changes) -> Path:
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    cfg["tasks"].pop("demo-bench")
    cfg.update(bulk={}, heads={"hest": cfg["heads"]["hest"]})
    cfg["demo"]["enabled"] = False
    cfg["peka"]["encoders"] = []
    cfg.update(changes)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_paths_with_spaces_reach_the_jobs(small_cohort, tmp_path):
    """A sheet, slides and weights under folders with spaces: planned and embedded for real."""
    data = tmp_path / "my data"
    shutil.copytree(small_cohort.parent, data)
    weights = tmp_path / "my weights" / "tiny cnn.pth"
    weights.parent.mkdir()
    torch.manual_seed(1)
    torch.save(build_trunk(get_spec("tiny-cnn")).state_dict(), weights)
    work = tmp_path / "work dir"
    work.mkdir()
    cfg = user_config(
        tmp_path / "c.yaml",
        samples=str(data / small_cohort.name),
        encoders=["tiny-cnn"],
        weights={"tiny-cnn": str(weights)},
        feature_sets={"singles": True, "concat": []},
    )
    dry = snakemake(work, cfg, "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    target = "results/features/tiny-cnn/0000.manifest.json"
    proc = snakemake(work, cfg, target)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from histofuse.cache import read_provenance
    from histofuse.encoders.model import sha256_file

    store = work / "results/features/tiny-cnn/0000.zarr"
    assert read_provenance(store)["weights_sha256"] == sha256_file(weights)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tiling": {"patch_umm": 3}}, "unknown config key(s) 'patch_umm' under `tiling`"),
        ({"peka": {"encoders": ["nope"]}}, "`peka.encoders` names ['nope']"),
    ],
)
def test_a_config_error_is_one_line_without_frames(tmp_path, changes, message):
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for section, values in changes.items():
        cfg[section].update(values)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, tmp_path / "bad.yaml", "-n")
    assert proc.returncode != 0
    line = assert_one_line(2, proc.stderr, message)
    assert 'File "' not in proc.stderr and "common.smk" not in proc.stderr, line
