"""glmha-convert under bad options and bad output locations (issue 12 items 3, 6, 7).

Every case asserts the exit code, exactly one stderr line naming the culprit, no traceback, no file left
behind (hidden temporaries included) and the input checkpoint unchanged. Options with a recipe twin are
checked through both doors: the recipe's error is the command line's error with flags reworded as keys.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import glmha
from glmha.archs import Restormer
from glmha.cli import convert as cli
from glmha.convert.plan import in_recipe_terms
from glmha.distill import RecipeError, engine, load_recipe
from glmha.errors import GlmhaError
from glmha.io_utils import PendingFile, create_folder, remove_empty_folders, remove_stale_temporaries
from glmha.layers import GLMHALayer

from conftest import randomise
from distill_helpers import TINY_TEACHER, recipe_dict, write_teacher

PREFIX = "glmha-convert: error: "


# ----------------------------------------------------------------------------------------------- helpers

def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder` (hidden ones too), files by SHA-256."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_dir() or not path.is_file():
            found[key] = "folder" if path.is_dir() else "special"  # never read a pipe
        else:
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def run(argv: list[str], capsys) -> tuple[int, list[str]]:
    """glmha-convert in this process: exit code and stderr lines."""
    code = cli.main(argv)
    return code, capsys.readouterr().err.splitlines()


def assert_one_line(lines: list[str], expected: str) -> None:
    assert lines == [PREFIX + expected], lines


def no_loading(monkeypatch) -> None:
    """Make loading the checkpoint fail the test: the case must be refused before any work."""
    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded")

    monkeypatch.setattr(cli, "load", refuse)


def write_yaml(folder: Path, raw: dict) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def student_recipe(folder: Path, student: dict) -> dict:
    raw = recipe_dict(folder)
    raw["student"] = {**raw["student"], **copy.deepcopy(student)}
    return raw


# ------------------------------------------------------------------------ options agree with recipes

NAN, INF = float("nan"), float("inf")

# (case, command-line options, recipe `student:` changes, the command line's message)
PARSE_TIME = [
    ("energy-above-one", ["--energy", "1.5"], {"ratio": None, "energy": 1.5},
     "--energy must be in (0, 1], got 1.5"),
    ("energy-zero", ["--energy", "0"], {"ratio": None, "energy": 0.0}, "--energy must be in (0, 1], got 0.0"),
    ("energy-nan", ["--energy", "nan"], {"ratio": None, "energy": NAN}, "--energy must be in (0, 1], got nan"),
    ("ratio-one", ["--ratio", "1"], {"ratio": 1.0}, "--ratio must be in [0, 1), got 1.0"),
    ("ratio-negative", ["--ratio", "-0.1"], {"ratio": -0.1}, "--ratio must be in [0, 1), got -0.1"),
    ("ratio-nan", ["--ratio", "nan"], {"ratio": NAN}, "--ratio must be in [0, 1), got nan"),
    ("target-macs-inf", ["--target-macs", "inf"], {"ratio": None, "target_macs": INF},
     "--target-macs must be a fraction in (0, 1], e.g. 0.88; got inf"),
    ("target-params-zero", ["--target-params", "0"], {"ratio": None, "target_params": 0.0},
     "--target-params must be a fraction in (0, 1], e.g. 0.88; got 0.0"),
    ("min-fidelity-negative", ["--min-fidelity", "-3"], {"ratio": None, "min_fidelity": -3.0},
     "--min-fidelity must be a positive number of dB, got -3.0"),
    ("min-fidelity-nan", ["--min-fidelity", "nan"], {"ratio": None, "min_fidelity": NAN},
     "--min-fidelity must be a positive number of dB, got nan"),
    ("energy-and-ratio", ["--energy", "0.9", "--ratio", "0.5"], {"energy": 0.9, "ratio": 0.5},
     "--energy, --ratio and a budget (--target-macs, --target-params, --min-fidelity) exclude each other; "
     "got energy and ratio"),
    ("levels-empty-name", ["--levels", "1,,2"], {"levels": ["1", "", "2"]},
     "--levels: level names must be non-empty, like 1,2 or 3,bottleneck; got ['1', '', '2']"),
    ("rank-pattern-no-width", ["--rank-pattern", "latent"], {"rank_patterns": ["latent"]},
     "--rank-pattern 'latent': expected REGEX=C' with C' a positive integer"),
    ("rank-pattern-zero", ["--rank-pattern", "latent=0"], {"rank_patterns": ["latent=0"]},
     "--rank-pattern 'latent=0': expected REGEX=C' with C' a positive integer"),
    ("rank-pattern-superscript", ["--rank-pattern", "latent=\u00b2"], {"rank_patterns": ["latent=\u00b2"]},
     "--rank-pattern 'latent=\u00b2': expected REGEX=C' with C' a positive integer"),
    ("rank-pattern-bad-regex", ["--rank-pattern", "(=4"], {"rank_patterns": ["(=4"]},
     "--rank-pattern '(=4': bad regular expression (missing ), unterminated subpattern at position 0)"),
    ("init-unknown", ["--init", "orthogonal"], {"init": "orthogonal"},
     "--init: expected one of select, merge, refit, svd, random, got 'orthogonal'"),
    ("alpha-negative", ["--alpha", "-1"], {"alpha": -1.0}, "--alpha must be a finite number >= 0, got -1.0"),
    ("alpha-nan", ["--alpha", "nan"], {"alpha": NAN}, "--alpha must be a finite number >= 0, got nan"),
    ("alpha-inf", ["--alpha", "inf"], {"alpha": INF}, "--alpha must be a finite number >= 0, got inf"),
    ("calibration-unknown", ["--calibration", "diagonal"], {"calibration": "diagonal"},
     "--calibration must be one of channel, lowrank, full, none, got 'diagonal'"),
    ("spectrum-unknown", ["--spectrum", "svd"], {"spectrum": "svd"},
     "--spectrum: expected one of operator, pointwise, got 'svd'"),
    ("seed-negative", ["--seed", "-1"], {"seed": -1}, "--seed must be an integer from 0 to 4294967295, got -1"),
    ("seed-too-big", ["--seed", str(2**64)], {"seed": 2**64},
     f"--seed must be an integer from 0 to 4294967295, got {2**64}"),
]


@pytest.mark.parametrize(("options", "student", "message"), [c[1:] for c in PARSE_TIME],
                         ids=[c[0] for c in PARSE_TIME])
def test_bad_option_and_recipe_key_share_one_rule(options, student, message, tmp_path, capsys, monkeypatch):
    teacher = write_teacher(tmp_path)
    recipe = write_yaml(tmp_path, student_recipe(tmp_path, student))
    before = snapshot(tmp_path)
    no_loading(monkeypatch)
    assert run([str(teacher), *options, "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "p")],
               capsys) == (1, [PREFIX + message])
    with pytest.raises(RecipeError) as refused:
        load_recipe(recipe)
    assert str(refused.value) == "student." + in_recipe_terms(message, section=None)
    assert "--" not in str(refused.value)  # recipes are told in keys, never in flags
    assert snapshot(tmp_path) == before


# (case, command-line options, recipe `student:` changes, the command line's message): errors the planner
# raises once it knows the model; recipes meet them when the student is built
PLAN_TIME = [
    ("levels-unknown", ["--levels", "9"], {"levels": [9]},
     "--levels: unknown level(s) 9; this model has 1, 2, 3, bottleneck"),
    ("rank-pattern-matches-nothing", ["--rank-pattern", "nothing=4"], {"rank_patterns": ["nothing=4"]},
     "--rank-pattern 'nothing=4' matches no CSA layer (names look like encoder_level1.0.attn, "
     "encoder_level2.0.attn, encoder_level3.0.attn, ...)"),
    ("rank-pattern-not-a-multiple", ["--rank-pattern", "latent=3"], {"rank_patterns": ["latent=3"]},
     "--rank-pattern 'latent=3' gives C'=3 for latent.0.attn, which needs a multiple of its 4 heads "
     "between 4 and 64"),
]


@pytest.mark.parametrize(("options", "student", "message"), [c[1:] for c in PLAN_TIME],
                         ids=[c[0] for c in PLAN_TIME])
def test_planner_errors_speak_in_recipe_keys(options, student, message, tmp_path, capsys):
    teacher = write_teacher(tmp_path)
    before = snapshot(tmp_path)
    assert run([str(teacher), "--ratio", "0.5", *options, "--json", str(tmp_path / "r.json")],
               capsys) == (1, [PREFIX + message])
    assert snapshot(tmp_path) == before
    recipe = load_recipe(write_yaml(tmp_path, student_recipe(tmp_path, student)))
    with pytest.raises(RecipeError) as refused:
        engine.build_student(recipe, engine.load_teacher(recipe), say=lambda line: None)
    assert str(refused.value) == in_recipe_terms(message)
    assert str(refused.value).startswith(("student.levels: ", "student.rank_patterns "))


# (case, command-line options, what the one usage line says, recipe `student:` changes, the recipe's message):
# values of the wrong kind, refused by each door's parser before any rule
WRONG_KIND = [
    ("alpha-text", ["--alpha", "abc"], "argument --alpha: invalid float value: 'abc'", {"alpha": "abc"},
     "student.alpha: expected a number, got 'abc'"),
    ("seed-fraction", ["--seed", "1.5"], "argument --seed: invalid int value: '1.5'", {"seed": 1.5},
     "student.seed: expected an integer, got 1.5"),
    ("allow-bigger-value", ["--allow-bigger=yes"], "argument --allow-bigger: ignored explicit argument 'yes'",
     {"allow_bigger": "yes"}, "student.allow_bigger: expected true or false, got 'yes'"),
]


@pytest.mark.parametrize(("options", "usage", "student", "recipe_message"), [c[1:] for c in WRONG_KIND],
                         ids=[c[0] for c in WRONG_KIND])
def test_values_of_the_wrong_kind(options, usage, student, recipe_message, tmp_path, capsys, monkeypatch):
    teacher = write_teacher(tmp_path)
    recipe = write_yaml(tmp_path, student_recipe(tmp_path, student))
    before = snapshot(tmp_path)
    no_loading(monkeypatch)
    with pytest.raises(SystemExit) as usage_error:
        cli.main([str(teacher), *options])
    assert usage_error.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"{PREFIX}{usage} (see glmha-convert --help)"]
    with pytest.raises(RecipeError) as refused:
        load_recipe(recipe)
    assert str(refused.value) == recipe_message
    assert snapshot(tmp_path) == before


def test_recipe_levels_may_be_numbers_like_the_flag(tmp_path) -> None:
    """`levels: [1, 3]` (YAML integers) names the same levels as `--levels 1,3`."""
    recipe = load_recipe(write_yaml(tmp_path, student_recipe(tmp_path, {"levels": [1, 3]})))
    settings, _ = cli._settings(cli.build_parser().parse_args(["x", "--ratio", "0.5", "--levels", "1,3"]))
    assert recipe.student.plan_settings().levels == settings.levels == ("1", "3")


# ------------------------------------------------------------------------------------ output locations

def _fifo(folder: Path) -> Path:
    path = folder / "pipe.json"
    os.mkfifo(path)
    return path


# (case, options with {tmp} for the test folder, the message): each refused before the checkpoint is read
LOCATIONS = [
    ("output-folder-missing", ["-o", "{tmp}/missing/out.safetensors"],
     "--output {tmp}/missing/out.safetensors: folder {tmp}/missing does not exist"),
    ("output-parent-is-a-file", ["-o", "{tmp}/afile/out.safetensors"],
     "--output {tmp}/afile/out.safetensors: {tmp}/afile is a file, not a folder"),
    ("output-under-proc", ["-o", "/proc/glmha.safetensors"],  # root gets ENOENT, other users EACCES
     ("--output /proc/glmha.safetensors: folder /proc takes no new files",
      "--output /proc/glmha.safetensors: folder /proc is not writable")),
    ("output-under-sys", ["-o", "/sys/glmha.safetensors"],
     "--output /sys/glmha.safetensors: folder /sys is not writable"),
    ("output-name-too-long", ["-o", "{tmp}/" + "x" * 300 + ".safetensors"],
     "--output {tmp}/" + "x" * 300 + ".safetensors: the file name is too long for the file system"),
    ("output-temporary-too-long", ["-o", "{tmp}/" + "y" * 240 + ".safetensors"],
     "--output {tmp}/" + "y" * 240 + ".safetensors: the file name is too long for the file system "
     "(the temporary file written first adds 14 characters to it)"),
    ("output-is-a-folder", ["-o", "{tmp}/folder.safetensors", "--force"],
     "--output {tmp}/folder.safetensors: is a directory"),
    ("output-is-the-input", ["-o", "{tmp}/teacher.safetensors", "--force"],
     "--output {tmp}/teacher.safetensors: is the input checkpoint; glmha never overwrites its input"),
    ("json-folder-missing", ["--json", "{tmp}/missing/r.json"],
     "--json {tmp}/missing/r.json: folder {tmp}/missing does not exist"),
    ("json-is-the-input", ["--json", "{tmp}/teacher.safetensors"],
     "--json {tmp}/teacher.safetensors: is the input checkpoint; glmha never overwrites its input"),
    ("json-is-the-output", ["-o", "{tmp}/same.safetensors", "--json", "{tmp}/same.safetensors"],
     "--json {tmp}/same.safetensors: is also the --output file; give them different names"),
    ("json-is-a-pipe", ["--json", "{tmp}/pipe.json"], "--json {tmp}/pipe.json: is not a regular file"),
    ("plot-is-a-file", ["--plot", "{tmp}/afile"], "--plot {tmp}/afile: exists and is not a folder"),
    ("plot-under-a-file", ["--plot", "{tmp}/afile/plots"],
     "--plot {tmp}/afile/plots: cannot be created (Not a directory)"),
]


@pytest.mark.parametrize(("options", "messages"), [c[1:] for c in LOCATIONS], ids=[c[0] for c in LOCATIONS])
def test_unwritable_outputs_fail_before_any_work(options, messages, tmp_path, capsys, monkeypatch):
    teacher = tmp_path / "teacher.safetensors"
    teacher.write_bytes(b"never read")  # the refusal comes before loading, so any bytes do
    (tmp_path / "afile").write_text("a file")
    (tmp_path / "folder.safetensors").mkdir()
    _fifo(tmp_path)
    before = snapshot(tmp_path)
    no_loading(monkeypatch)
    options = [o.format(tmp=tmp_path) for o in options]
    extra = [] if "--plot" in options else ["--plot", str(tmp_path / "plots" / "deeper")]
    extra += [] if "--json" in options else ["--json", str(tmp_path / "r.json")]
    code, lines = run([str(teacher), "--ratio", "0.5", *options, *extra], capsys)
    accepted = [messages] if isinstance(messages, str) else messages
    assert code == 1 and lines in [[PREFIX + m.format(tmp=tmp_path)] for m in accepted], lines
    assert snapshot(tmp_path) == before  # no export, temporary file, report or plot folder


def test_read_only_folder(tmp_path: Path) -> None:
    """A read-only folder, also for root: run without the capability that overrides permissions."""
    teacher = write_teacher(tmp_path / "in")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    before = snapshot(tmp_path)
    argv = [sys.executable, "-m", "glmha.cli.convert", str(teacher), "--ratio", "0.5", "-o",
            str(locked / "out.safetensors"), "--plot", str(locked / "plots"), "--json", str(tmp_path / "r.json")]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root without setpriv: cannot drop CAP_DAC_OVERRIDE")
        argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *argv]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{PREFIX}--output {locked}/out.safetensors: folder {locked} is not writable"]
    assert result.stdout == ""  # refused before the checkpoint was even read
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------- failures after the reservation

def _garbage_checkpoint(folder: Path, monkeypatch) -> Path:
    path = folder / "teacher.pth"
    path.write_bytes(b"\x80")
    return path


def _interrupted_load(folder: Path, monkeypatch) -> Path:
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load", interrupt)
    return write_teacher(folder)


@pytest.mark.parametrize(("make", "code", "line"), [
    (_garbage_checkpoint, 1, "{tmp}/teacher.pth: "),
    (_interrupted_load, 130, "glmha-convert: interrupted"),
], ids=["unreadable-checkpoint", "ctrl-c"])
def test_a_failed_run_leaves_no_temporary_and_no_plot_folder(make, code, line, tmp_path, capsys, monkeypatch):
    source = make(tmp_path, monkeypatch)
    before = snapshot(tmp_path)
    result, lines = run([str(source), "--ratio", "0.5", "--plot", str(tmp_path / "plots" / "deeper"),
                         "--json", str(tmp_path / "r.json")], capsys)
    assert result == code and len(lines) == 1 and "Traceback" not in lines[0]
    assert (lines[0] if code == 130 else lines[0].removeprefix(PREFIX)).startswith(line.format(tmp=tmp_path))
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------- non-finite outputs

def _huge_teacher(folder: Path) -> Path:
    """Finite weights, but an output convolution of 1e38 scale: float32 overflows to Inf."""
    model = randomise(Restormer(**TINY_TEACHER), 0)
    with torch.no_grad():
        model.output.weight.mul_(1e38)
    path = folder / "huge.pth"
    torch.save({"params": model.state_dict()}, path)
    return path


def _nan_after_conversion(monkeypatch) -> None:
    """A conversion that leaves a NaN in a new weight (the teacher itself is fine)."""
    real = cli.apply_plan

    def poisoned(*args, **kwargs):
        student = real(*args, **kwargs)
        layer = next(module for module in student.modules() if isinstance(module, GLMHALayer))
        with torch.no_grad():
            next(layer.parameters()).fill_(float("nan"))
        return student

    monkeypatch.setattr(cli, "apply_plan", poisoned)


@pytest.mark.parametrize(("huge", "poison", "plots", "message"), [
    (True, False, False, "{src}: the converted model produces non-finite outputs on 1 offline sample photograph "
                         "at 128x128; nothing written"),
    (True, False, True, "{src}: the model produces non-finite outputs on the calibration inputs, so its "
                        "conversion cannot be measured; nothing written"),
    (False, True, True, "{src}: the converted model produces non-finite outputs on the calibration inputs; "
                        "nothing written"),
], ids=["overflow-after-conversion", "overflow-in-the-teacher", "nan-after-conversion"])
def test_non_finite_outputs_are_never_exported(huge, poison, plots, message, tmp_path, capsys, monkeypatch):
    source = _huge_teacher(tmp_path) if huge else write_teacher(tmp_path)
    if poison:
        _nan_after_conversion(monkeypatch)
    before = snapshot(tmp_path)
    extra = ["--plot", str(tmp_path / "plots"), "--calib-limit", "1", "--calib-size", "32"] if plots else []
    code, lines = run([str(source), "--ratio", "0.5", "--json", str(tmp_path / "r.json"), *extra], capsys)
    assert (code, lines) == (1, [PREFIX + message.format(src=source)])
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- temporaries and locks

@pytest.mark.parametrize(("name", "kind", "removed"), [
    (".out.safetensors.abcd_123.tmp", "dead", True),
    (".out.safetensors.abcd_123.tmp", "live", False),
    (".out.safetensors.abc.tmp", "dead", False),  # not mkstemp's eight random characters
    (".other.safetensors.abcd_123.tmp", "dead", False),  # another output's
    ("out.safetensors.abcd_123.tmp", "dead", False),  # not hidden
    (".out.safetensors.abcd_123.tmp", "symlink", False),
    (".out.safetensors.abcd_123.tmp", "folder", False),
], ids=["dead-writer", "live-writer", "short-random-part", "other-output", "not-hidden", "symlink", "folder"])
def test_stale_temporaries_of_the_same_output_only(name, kind, removed, tmp_path) -> None:
    output = tmp_path / "out.safetensors"
    candidate = tmp_path / name
    keep = tmp_path / "kept.bin"
    keep.write_bytes(b"keep")
    holder = None
    if kind == "folder":
        candidate.mkdir()
    elif kind == "symlink":
        candidate.symlink_to(keep)
    elif kind == "live":  # a writer of this process holds the lock: flock sees separate opens as separate
        holder = PendingFile(output)
        candidate = holder.tmp
    else:
        candidate.write_bytes(b"half an export")
    try:
        assert remove_stale_temporaries(output) == ([candidate] if removed else [])
        assert candidate.exists() != removed and keep.read_bytes() == b"keep"
    finally:
        if holder is not None:
            holder.discard()
    assert not holder or not candidate.exists()


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError(28, "No space left on device")],
                         ids=["interrupt", "disk-full"])
def test_a_failed_write_leaves_nothing(failure, tmp_path) -> None:
    def write(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise failure

    with pytest.raises(KeyboardInterrupt if failure is KeyboardInterrupt else GlmhaError) as info:
        glmha.io_utils.atomic_write(tmp_path / "out.bin", write)
    if failure is not KeyboardInterrupt:
        assert str(info.value) == f"cannot write {tmp_path / 'out.bin'}: No space left on device"
    assert list(tmp_path.iterdir()) == []


def test_created_folders_are_removed_only_while_empty(tmp_path) -> None:
    created = create_folder(tmp_path / "a" / "b", what="--plot")
    assert created == [tmp_path / "a", tmp_path / "a" / "b"] and list((tmp_path / "a" / "b").iterdir()) == []
    remove_empty_folders(created)
    assert list(tmp_path.iterdir()) == []
    created = create_folder(tmp_path / "a" / "b", what="--plot")
    (tmp_path / "a" / "b" / "plot.png").write_bytes(b"png")
    remove_empty_folders(created)
    assert (tmp_path / "a" / "b" / "plot.png").read_bytes() == b"png"


# -------------------------------------------------------------------- killed mid-export, then rerun

DRIVER = """
import os, runpy, sys, time
from pathlib import Path
signal_file = Path(sys.argv[1])
real_replace = os.replace

def replace_after_a_pause(source, target, *args, **kwargs):
    if str(target).endswith(".glmha.safetensors"):  # the export is written and locked, not yet renamed
        signal_file.write_text(str(source))
        time.sleep(600)
    return real_replace(source, target, *args, **kwargs)

os.replace = replace_after_a_pause
sys.argv = ["glmha-convert", *sys.argv[2:]]
runpy.run_module("glmha.cli.convert", run_name="__main__")
"""


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 240.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        assert process.poll() is None, "the conversion ended before it wrote its export"
        time.sleep(0.05)
    raise AssertionError("the conversion did not reach its export in time")


def test_killed_mid_export_then_rerun(tmp_path, capsys) -> None:
    """A writer killed with SIGKILL leaves its temporary file; a run while it is alive leaves it alone
    (its lock is held), the next run after its death removes it and writes a complete export."""
    work, side = tmp_path / "work", tmp_path / "side"
    side.mkdir()
    teacher = write_teacher(work)
    output = work / "teacher.glmha.safetensors"
    argv = [str(teacher), "--ratio", "0.5", "--input-size", "32"]
    process = subprocess.Popen([sys.executable, "-c", DRIVER, str(side / "ready"), *argv],
                               stdout=(side / "out.log").open("w"), stderr=(side / "err.log").open("w"),
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        written = Path(_wait_for(side / "ready", process))
        assert written.parent == work and written.name.startswith(".teacher.glmha.safetensors.")
        assert written.stat().st_size > 0 and not output.exists()
        dead = work / ".teacher.glmha.safetensors.deadbeef.tmp"  # a leftover of an earlier killed run
        dead.write_bytes(b"half")
        assert cli.main(argv) == 0  # while the first writer lives
        assert written.exists() and not dead.exists()
        first = output.read_bytes()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    assert written.exists()  # what SIGKILL leaves behind
    assert cli.main([*argv, "--force"]) == 0
    assert not written.exists()
    assert sorted(p.name for p in work.iterdir()) == ["teacher.glmha.safetensors", "teacher.pth"]
    assert output.read_bytes() == first
    assert glmha.load(output).record.converted
    capsys.readouterr()


def test_the_export_mode_is_ordinary(tmp_path) -> None:
    """The locked temporary file is mkstemp's 0600; the export gets the usual mode after the rename."""
    umask = os.umask(0o022)
    try:
        with PendingFile(tmp_path / "x.bin") as pending:
            assert stat.S_IMODE(pending.tmp.stat().st_mode) == 0o600
            pending.commit(lambda tmp: tmp.write_bytes(b"x"))
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "x.bin").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]
