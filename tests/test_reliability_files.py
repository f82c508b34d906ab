"""Reading files (issue 12, items 3-5): every unusable checkpoint or export, read through `glmha.load` or
`glmha-convert`, ends in one GlmhaError line that names the file and what is wrong (the field or tensor
where there is one); never a traceback, never a raw torch/OS/JSON exception, nothing left behind and the
input untouched.

Bad files are made from the project's own tiny models; damaged exports are real tiny exports whose
metadata or tensors are rewritten with `save_safetensors`.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import glmha
from glmha.archs import MST, Restormer
from glmha.cli.convert import main as convert_main
from glmha.errors import CheckpointError, GlmhaError
from glmha.io_utils import save_safetensors

from conftest import randomise

SMALL_RESTORMER = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=0)
NON_FINITE_TAIL = "; glmha refuses non-finite weights"
NOBODY = 65534
PR_CAPBSET_DROP = 24  # prctl: drop a capability from the bounding set (kept out of the exec'd child)
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


# -- shared checks ------------------------------------------------------------------------------------


def _api_error(path: Path) -> str:
    """glmha.load(path) must raise a GlmhaError of one line; its message."""
    with pytest.raises(GlmhaError) as info:
        glmha.load(path)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def _cli_error(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """glmha-convert on path must exit 1 with exactly one stderr line; that line."""
    code = convert_main([str(path), "--dry-run"])
    captured = capsys.readouterr()
    assert code == 1
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("glmha-convert: error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


def _error(via: str, path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The one line of either entry point; a warning would be a second stderr line, so none may escape."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        message = _api_error(path) if via == "api" else _cli_error(path, capsys)
    assert [str(w.message) for w in caught] == []
    return message


def _refusal(via: str, path: Path, folder: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """`_error`, checking that nothing under `folder` (the input included) was written or changed."""
    before = _snapshot(folder)
    message = _error(via, path, capsys)
    assert _snapshot(folder) == before
    return message


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry under folder: content hash of files, link targets, kinds; never opens a FIFO."""
    found = {}
    for entry in sorted(folder.rglob("*")):
        mode = entry.lstat().st_mode
        name = str(entry.relative_to(folder))
        if stat.S_ISLNK(mode):
            found[name] = "link to " + os.readlink(entry)
        elif stat.S_ISREG(mode):
            found[name] = hashlib.sha256(entry.read_bytes()).hexdigest()
        else:
            found[name] = "dir" if stat.S_ISDIR(mode) else "special"
    return found


def _teacher_state(seed: int = 0) -> dict[str, torch.Tensor]:
    return randomise(Restormer(**SMALL_RESTORMER), seed).state_dict()


def _teacher_file(folder: Path, name: str = "teacher.pth", **save_kwargs: object) -> Path:
    path = folder / name
    torch.save({"params": _teacher_state()}, path, **save_kwargs)
    return path


# -- degenerate, truncated and unreachable files ------------------------------------------------------


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def _saved(obj: object) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / "object.pth"
        torch.save(obj, path)
        return path
    return make


def _cut(source: Callable[[Path], Path], keep: Callable[[int], int]) -> Callable[[Path], Path]:
    """A copy of source's file cut to keep(size) bytes."""
    def make(folder: Path) -> Path:
        data = source(folder).read_bytes()
        return _write(folder, "cut.pth", data[: keep(len(data))])
    return make


def _legacy(folder: Path) -> Path:
    return _teacher_file(folder, "legacy.pth", _use_new_zipfile_serialization=False)


def _zip(folder: Path) -> Path:
    return _teacher_file(folder, "zipped.pth")


def _cut_inside_class_name(folder: Path) -> Path:
    """A pre-zip pickle cut in the middle of 'collections OrderedDict': torch reports an unsupported
    global 'collections.Orde', which must read as truncation, not as a pickle that needs code."""
    data = _legacy(folder).read_bytes()
    start = data.index(b"collections\nOrderedDict")
    return _write(folder, "cut.pth", data[: start + len(b"collections\nOrde")])


def _empty_zip(folder: Path) -> Path:
    path = folder / "empty.pth"
    zipfile.ZipFile(path, "w").close()
    return path


def _random_bytes(first: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        rng = random.Random(12)
        return _write(folder, "random.pth", first + bytes(rng.randrange(256) for _ in range(63)))
    return make


def _safetensors_teacher(folder: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    path = folder / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in (state or _teacher_state()).items()}, str(path))
    return path


def _safetensors_bad_header(folder: Path) -> Path:
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 99]}}).encode()
    return _write(folder, "bad.safetensors", len(header).to_bytes(8, "little") + header + bytes(8))


def _with_tensor(key: str, value: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        state = _teacher_state()
        state[key] = value(state[key])
        path = folder / "teacher.pth"
        torch.save({"params": state}, path)
        return path
    return make


def _symlink_loop(folder: Path) -> Path:
    (folder / "a.pth").symlink_to(folder / "b.pth")
    (folder / "b.pth").symlink_to(folder / "a.pth")
    return folder / "a.pth"


def _self_loop(folder: Path) -> Path:
    (folder / "self.pth").symlink_to("self.pth")
    return folder / "self.pth"


def _dangling(folder: Path) -> Path:
    (folder / "link.pth").symlink_to(folder / "gone.pth")
    return folder / "link.pth"


def _fifo(folder: Path) -> Path:
    os.mkfifo(folder / "pipe.pth")
    return folder / "pipe.pth"


def _through_a_file(folder: Path) -> Path:
    return _teacher_file(folder) / "inner.pth"


FILE_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "one_byte_pickle": (lambda f: _write(f, "one.pth", b"\x80"), "truncated or corrupt PyTorch file"),
    "one_byte_text": (lambda f: _write(f, "one.pth", b"x"), "not a PyTorch (.pth/.pt) or safetensors checkpoint"),
    "random_bytes": (_random_bytes(b"R"), "not a PyTorch (.pth/.pt) or safetensors checkpoint"),
    "random_pickle_bytes": (_random_bytes(b"\x80"), "corrupt pickle"),
    "random_zip_bytes": (_random_bytes(b"PK\x03\x04"), "truncated or corrupt PyTorch file"),
    "pickled_int": (_saved(3), "expected a dict of tensors, found int"),
    "pickled_list": (_saved([torch.zeros(2)]), "expected a dict of tensors, found list"),
    "pickled_tensor": (_saved(torch.zeros(2, 2)), "expected a dict of tensors, found Tensor"),
    "pickled_none": (_saved(None), "expected a dict of tensors, found NoneType"),
    "pickled_params_list": (_saved({"params": [torch.zeros(1)]}), "no state dict found"),
    "pickled_empty_dict": (_saved({}), "no state dict found"),
    "zip_cut_after_magic": (_cut(_zip, lambda n: 4), "truncated or corrupt PyTorch file"),
    "zip_cut_at_100": (_cut(_zip, lambda n: 100), "truncated or corrupt PyTorch file"),
    "zip_cut_at_half": (_cut(_zip, lambda n: n // 2), "truncated or corrupt PyTorch file"),
    "zip_cut_in_directory": (_cut(_zip, lambda n: n - 22), "truncated or corrupt PyTorch file"),
    "zip_last_byte_missing": (_cut(_zip, lambda n: n - 1), "truncated or corrupt PyTorch file"),
    "legacy_cut_at_2": (_cut(_legacy, lambda n: 2), "truncated or corrupt PyTorch file"),
    "legacy_cut_at_30": (_cut(_legacy, lambda n: 30), "truncated or corrupt PyTorch file"),
    "legacy_cut_in_class_name": (_cut_inside_class_name, "truncated or corrupt PyTorch file (its pickle ends"),
    "legacy_cut_at_half": (_cut(_legacy, lambda n: n // 2), "truncated or corrupt PyTorch file"),
    "legacy_last_byte_missing": (_cut(_legacy, lambda n: n - 1), "truncated or corrupt PyTorch file"),
    "empty_zip": (_empty_zip, "an empty zip archive, not a PyTorch checkpoint"),
    "pickle_protocol_4": (lambda f: _teacher_file(f, pickle_protocol=4),
                          "written with a pickle protocol that weights-only loading cannot read"),
    "safetensors_bad_offsets": (_safetensors_bad_header, "truncated or corrupt safetensors file"),
    "meta_tensor": (_with_tensor("output.weight", lambda t: t.to("meta")),
                    "tensor 'output.weight' holds no values"),
    "sparse_tensor": (_with_tensor("output.weight", lambda t: t.to_sparse()),
                      "tensor 'output.weight' is not a dense tensor"),
    "integer_weight": (_with_tensor("output.weight", lambda t: t.long()),
                       "'output.weight' has dtype int64, the model needs floating point"),
    "rank0_temperature": (_with_tensor("encoder_level1.0.attn.temperature", lambda t: t.flatten()[0]),
                          "restormer (unexpected tensor shapes: tuple index out of range"),
    "symlink_loop": (_symlink_loop, "symbolic link loop"),
    "symlink_to_itself": (_self_loop, "symbolic link loop"),
    "dangling_symlink": (_dangling, "dangling symbolic link (it points to"),
    "fifo": (_fifo, "not a regular file"),
    "path_through_a_file": (_through_a_file, "a part of the path is a file, not a folder"),
}


@pytest.mark.parametrize("via", ["api", "cli"])
@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_unusable_file_is_one_line(case: str, via: str, tmp_path: Path, capsys) -> None:
    make, phrase = FILE_CASES[case]
    path = make(tmp_path)
    message = _refusal(via, path, tmp_path, capsys)
    assert f"{path}: " in message and phrase in message
    assert "needs code" not in message


def test_file_errors_are_checkpoint_errors(tmp_path: Path) -> None:
    """Python callers can tell a bad file from other problems by class."""
    with pytest.raises(CheckpointError, match="symbolic link loop"):
        glmha.load(_symlink_loop(tmp_path))
    with pytest.raises(CheckpointError, match="holds NaN"):
        glmha.load(_nan_teacher(tmp_path, {"output.weight": [0]}))


@pytest.mark.parametrize("case", ["symlink_loop", "dangling_symlink", "fifo", "path_through_a_file"])
def test_check_readable_says_what_load_says(case: str, tmp_path: Path) -> None:
    """The early check a CLI can run before reserving outputs gives the same line as glmha.load."""
    from glmha.checkpoint import check_readable

    path = FILE_CASES[case][0](tmp_path)
    with pytest.raises(CheckpointError) as info:
        check_readable(path)
    assert str(info.value) == _api_error(path)


def test_file_name_with_a_nul_byte(tmp_path: Path) -> None:
    """Only Python callers can pass one (argv cannot hold NUL); os.stat raises ValueError for it."""
    path = tmp_path / "a\x00b.pth"
    with pytest.raises(CheckpointError) as info:
        glmha.load(path)
    assert str(info.value) == f"{str(path)!r}: not a valid file name (embedded null byte)"


def test_the_sources_of_the_bad_files_load(tmp_path: Path) -> None:
    """Control: the files the cases above damage are good before the damage."""
    for make in (_zip, _legacy, _safetensors_teacher):
        assert isinstance(glmha.load(make(tmp_path)), Restormer)


# -- permissions, also without root's capabilities ----------------------------------------------------

PERMISSION_PROBE = r"""
import contextlib, io, json, sys
import glmha
from glmha.cli.convert import main
results = {}
for case, path in json.loads(sys.argv[1]).items():
    entry = {}
    try:
        glmha.load(path)
        entry["api"] = "loaded"
    except glmha.GlmhaError as error:
        entry["api"] = "GlmhaError: " + str(error)
    except Exception as error:
        entry["api"] = "raw " + type(error).__name__ + ": " + str(error)
    if case != "control":
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                entry["cli_code"] = main([path, "--dry-run"])
            except BaseException as error:
                entry["cli_code"] = "raw " + type(error).__name__ + ": " + str(error)
        entry["cli_err"] = err.getvalue()
    results[case] = entry
print("RESULTS " + json.dumps(results))
"""


def _as_nobody() -> None:
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _without_file_capabilities() -> None:
    """Root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH: file modes apply to it like to anyone."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _run_unprivileged(paths: dict[str, str]) -> tuple[dict, str]:
    """Run PERMISSION_PROBE without the power to ignore file modes: as is when not root; as root,
    first as nobody, else as root without its file capabilities. Skip when neither can run."""
    command = [sys.executable, "-c", PERMISSION_PROBE, json.dumps(paths)]
    ways = [("as is", None)] if os.geteuid() != 0 else [
        ("as nobody", _as_nobody), ("without CAP_DAC_OVERRIDE", _without_file_capabilities)]
    failures = []
    for name, preexec in ways:
        try:
            done = subprocess.run(command, preexec_fn=preexec, capture_output=True, text=True, timeout=120,
                                  cwd=tempfile.gettempdir())
        except (OSError, subprocess.SubprocessError) as error:
            failures.append(f"{name}: {error}")
            continue
        marker = next((line for line in done.stdout.splitlines() if line.startswith("RESULTS ")), None)
        if marker is None:
            failures.append(f"{name}: exit {done.returncode}, {done.stderr.strip()[-300:]}")
            continue
        return json.loads(marker.removeprefix("RESULTS ")), name
    pytest.skip("cannot run a check without root's file permissions: " + "; ".join(failures))


@pytest.fixture(scope="module")
def permission_results() -> dict:
    """One unprivileged run over a readable control, a mode-000 file and a file in a mode-000 folder
    (in a fresh folder anyone may enter, so that nobody can reach the control)."""
    folder = Path(tempfile.mkdtemp(prefix="glmha-permissions-"))
    try:
        folder.chmod(0o755)
        control = _teacher_file(folder, "control.pth")
        control.chmod(0o644)
        locked = _teacher_file(folder, "locked.pth")
        closed = folder / "closed"
        closed.mkdir()
        inside = _teacher_file(closed, "model.pth")
        before = _snapshot(folder)
        locked.chmod(0)
        closed.chmod(0)
        try:
            results, way = _run_unprivileged({"control": str(control), "locked": str(locked),
                                              "closed": str(inside)})
        finally:
            locked.chmod(0o644)
            closed.chmod(0o755)
        assert _snapshot(folder) == before  # nothing written, inputs unchanged
        return {"results": results, "way": way, "locked": str(locked), "closed": str(inside),
                "folder": str(closed)}
    finally:
        shutil.rmtree(folder)


def test_unprivileged_control_loads(permission_results: dict) -> None:
    """Without this, the denials below could come from anything but the file modes."""
    assert permission_results["results"]["control"]["api"] == "loaded", permission_results


@pytest.mark.parametrize(
    ("case", "phrase"),
    [("locked", "permission denied (the file cannot be read)"),
     ("closed", "permission denied (folder {folder} cannot be entered)")],
)
@pytest.mark.parametrize("via", ["api", "cli"])
def test_unreadable_file_or_folder_is_one_line(case: str, phrase: str, via: str, permission_results: dict) -> None:
    entry = permission_results["results"][case]
    expected = f"{permission_results[case]}: {phrase.format(folder=permission_results['folder'])}"
    if via == "api":
        assert entry["api"] == f"GlmhaError: {expected}", permission_results["way"]
    else:
        assert entry["cli_code"] == 1 and entry["cli_err"] == f"glmha-convert: error: {expected}\n"


# -- non-finite weights ---------------------------------------------------------------------------------


def _nan_teacher(folder: Path, positions: dict[str, list[int]], value: float = float("nan"),
                 dtype: torch.dtype = torch.float32, fmt: str = "pth") -> Path:
    """A teacher with `value` at the given flat positions of the given tensors."""
    state = {k: v.to(dtype) for k, v in _teacher_state().items()}
    for key, flat in positions.items():
        state[key].view(-1)[flat] = value
    if fmt == "safetensors":
        return _safetensors_teacher(folder, state)
    path = folder / "teacher.pth"
    torch.save({"params": state}, path)
    return path


def _mixed(folder: Path) -> Path:
    path = _nan_teacher(folder, {"output.weight": [0, 1]})
    state = torch.load(path, weights_only=True)
    state["params"]["output.weight"].view(-1)[5] = -float("inf")
    torch.save(state, path)
    return path


QKV1 = "encoder_level1.0.attn.qkv.weight"  # (24, 8, 1, 1): 192 values
QKV_LATENT = "latent.0.attn.qkv.weight"  # (192, 64, 1, 1): 12,288 values
NON_FINITE_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "nan": (lambda f: _nan_teacher(f, {QKV1: [0, 7, 100]}), f"tensor '{QKV1}' holds NaN (3 of 192 values)"),
    "plus_inf": (lambda f: _nan_teacher(f, {QKV1: [3]}, float("inf")),
                 f"tensor '{QKV1}' holds +Inf (1 of 192 values)"),
    "minus_inf": (lambda f: _nan_teacher(f, {QKV1: [3, 4]}, -float("inf")),
                  f"tensor '{QKV1}' holds -Inf (2 of 192 values)"),
    "nan_and_minus_inf": (_mixed, "tensor 'output.weight' holds NaN and -Inf (3 of 432 values)"),
    "all_nan_thousands": (lambda f: _nan_teacher(f, {QKV_LATENT: list(range(12288))}),
                          f"tensor '{QKV_LATENT}' holds NaN (12,288 of 12,288 values)"),
    "first_in_file_order": (lambda f: _nan_teacher(f, {"patch_embed.proj.weight": [1], QKV1: [2]}),
                            "tensor 'patch_embed.proj.weight' holds NaN (1 of 216 values)"),
    "float16_inf": (lambda f: _nan_teacher(f, {QKV1: [9]}, float("inf"), torch.float16),
                    f"tensor '{QKV1}' holds +Inf (1 of 192 values)"),
    "bfloat16_nan": (lambda f: _nan_teacher(f, {QKV1: [9]}, dtype=torch.bfloat16),
                     f"tensor '{QKV1}' holds NaN (1 of 192 values)"),
    "safetensors_nan": (lambda f: _nan_teacher(f, {QKV1: [0]}, fmt="safetensors"),
                        f"tensor '{QKV1}' holds NaN (1 of 192 values)"),
}


@pytest.mark.parametrize("via", ["api", "cli"])
@pytest.mark.parametrize("case", sorted(NON_FINITE_CASES))
def test_non_finite_weights_are_refused(case: str, via: str, tmp_path: Path, capsys) -> None:
    make, what = NON_FINITE_CASES[case]
    path = make(tmp_path)
    message = _refusal(via, path, tmp_path, capsys)
    expected = f"{path}: {what}{NON_FINITE_TAIL}"
    assert message == (expected if via == "api" else f"glmha-convert: error: {expected}")


# -- damaged exports ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, dict]]:
    """family -> (tensors, metadata) of a real tiny export; MST keeps gathered values (a v_index)."""
    folder = tmp_path_factory.mktemp("exports")
    found = {}
    teachers = {"restormer": (randomise(Restormer(**SMALL_RESTORMER), 1), {}),
                "mst": (randomise(MST(dim=8, stage=1, num_blocks=(1, 1), bands=8), 2), {"allow_bigger": True})}
    for family, (teacher, options) in teachers.items():
        student, _ = glmha.convert_to_glmha(teacher, ratio=0.5, input_size=(16, 16), **options)
        path = folder / f"{family}.glmha.safetensors"
        glmha.export(student, path)
        with safe_open(str(path), framework="pt") as handle:
            found[family] = ({k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata()))  # noqa: SIM118
    return found


def _set_layer(name: str, value: object) -> Callable[[dict, dict], None]:
    def mutate(tensors: dict, metadata: dict) -> None:
        layers = json.loads(metadata["layers"])
        layers[name] = value
        metadata["layers"] = json.dumps(layers)
    return mutate


def _set_json(field: str, key: str, value: object) -> Callable[[dict, dict], None]:
    def mutate(tensors: dict, metadata: dict) -> None:
        data = json.loads(metadata[field])
        data[key] = value
        metadata[field] = json.dumps(data)
    return mutate


def _set_text(field: str, text: str | None) -> Callable[[dict, dict], None]:
    def mutate(tensors: dict, metadata: dict) -> None:
        if text is None:
            del metadata[field]
        else:
            metadata[field] = text
    return mutate


def _set_tensor(key: str, value: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict, dict], None]:
    def mutate(tensors: dict, metadata: dict) -> None:
        tensors[key] = value(tensors[key])
    return mutate


def _drop_tensor(key: str) -> Callable[[dict, dict], None]:
    def mutate(tensors: dict, metadata: dict) -> None:
        del tensors[key]
    return mutate


DAMAGED = "damaged glmha metadata: field"
L1, L2, LATENT = "encoder_level1.0.attn", "encoder_level2.0.attn", "latent.0.attn"  # C 8/16/64, heads 1/2/8
KV1 = f"{L1}.kv.weight"  # (2 C', C, 1, 1) = (8, 8, 1, 1) at C' = 4
HYPER, SETTINGS = f"{DAMAGED} 'hyperparameters' is invalid: ", f"{DAMAGED} 'glmha' is invalid: "
EXPORT_CASES: dict[str, tuple[str, Callable[[dict, dict], None], str | tuple[str, ...]]] = {
    "cprime_string": ("restormer", _set_layer(L1, "4"), f"{DAMAGED} 'layers': C' of '{L1}' must be an integer, "
                      'found "4"'),
    "cprime_bool": ("restormer", _set_layer(L1, True), f"C' of '{L1}' must be an integer, found true"),
    "cprime_float": ("restormer", _set_layer(L1, 4.0), f"C' of '{L1}' must be an integer, found 4.0"),
    "cprime_null": ("restormer", _set_layer(L1, None), f"C' of '{L1}' must be an integer, found null"),
    "cprime_zero": ("restormer", _set_layer(L1, 0), f"C'=0 of '{L1}' is not a positive multiple of its 1 heads"),
    "cprime_negative": ("restormer", _set_layer(L2, -2), f"C'=-2 of '{L2}' is not a positive multiple of its 2"),
    "cprime_above_c": ("restormer", _set_layer(LATENT, 72), f"C'=72 of '{LATENT}' is larger than the layer's 64"),
    "cprime_not_head_multiple": ("restormer", _set_layer(LATENT, 12),
                                 f"C'=12 of '{LATENT}' is not a positive multiple of its 8 heads"),
    "cprime_unknown_layer": ("restormer", _set_layer("encoder_level9.0.attn", 4),
                             f"{DAMAGED} 'layers' names layer 'encoder_level9.0.attn', which this model does not"),
    "cprime_other_valid_width": ("restormer", _set_layer(L1, 8),
                                 f"tensor '{L1}.token_bias' has shape [1, 1, 4], the metadata describes "
                                 "[1, 1, 8]"),
    "layers_not_json": ("restormer", _set_text("layers", '{"a": '), f"{DAMAGED} 'layers' is not valid JSON"),
    "layers_a_list": ("restormer", _set_text("layers", "[4, 8]"),
                      f"{DAMAGED} 'layers' must be an object, found a list"),
    "layers_missing": ("restormer", _set_text("layers", None), f"{DAMAGED} 'layers' is missing"),
    "hyperparameters_not_json": ("restormer", _set_text("hyperparameters", "dim=8"),
                                 f"{DAMAGED} 'hyperparameters' is not valid JSON"),
    "hyperparameters_a_list": ("restormer", _set_text("hyperparameters", "[8]"),
                               f"{DAMAGED} 'hyperparameters' must be an object, found a list"),
    "hyperparameters_a_string": ("restormer", _set_text("hyperparameters", '"dim 8"'),
                                 f"{DAMAGED} 'hyperparameters' must be an object, found a string"),
    "hyperparameters_missing": ("restormer", _set_text("hyperparameters", None),
                                f"{DAMAGED} 'hyperparameters' is missing"),
    # settings: the field is glmha's; the reason is the StrictConfig class's own (worded where it is checked)
    "dim_negative": ("restormer", _set_json("hyperparameters", "dim", -8), (HYPER, "dim")),
    "dim_a_string": ("restormer", _set_json("hyperparameters", "dim", "8"), (HYPER, "dim", "integer")),
    "hyperparameters_unknown_key": ("restormer", _set_json("hyperparameters", "depth", 3), (HYPER, "depth")),
    "layernorm_unknown": ("restormer", _set_json("hyperparameters", "layernorm_type", "Group"),
                          (HYPER, "layernorm_type")),
    "blocks_empty": ("restormer", _set_json("hyperparameters", "num_blocks", []), (HYPER, "num_blocks")),
    "glmha_not_json": ("restormer", _set_text("glmha", "{'alpha': 0.6}"), f"{DAMAGED} 'glmha' is not valid JSON"),
    "glmha_a_list": ("restormer", _set_text("glmha", "[0.6]"),
                     f"{DAMAGED} 'glmha' must be an object, found a list"),
    "glmha_a_number": ("restormer", _set_text("glmha", "0.6"),
                       f"{DAMAGED} 'glmha' must be an object, found a number"),
    "calibration_unknown": ("restormer", _set_json("glmha", "calibration", "diagonal"),
                            (SETTINGS, "calibration", "diagonal")),
    "kernel_negative": ("restormer", _set_json("glmha", "kernel", -3), (SETTINGS, "kernel")),
    "grid_negative": ("restormer", _set_json("glmha", "grid", -1), (SETTINGS, "grid")),
    "pool_zero": ("restormer", _set_json("glmha", "pool", 0), (SETTINGS, "pool")),
    "rank_zero": ("restormer", _set_json("glmha", "rank", 0), (SETTINGS, "rank")),
    "values_unknown": ("restormer", _set_json("glmha", "values", "copy"), (SETTINGS, "values")),
    "alpha_a_string": ("restormer", _set_json("glmha", "alpha", "0.6"), (SETTINGS, "alpha", "number")),
    "alpha_negative": ("restormer", _set_json("glmha", "alpha", -0.5), (SETTINGS, "alpha", "-0.5")),
    "alpha_nan": ("restormer", _set_json("glmha", "alpha", float("nan")),
                  f"{DAMAGED} 'glmha' is not valid JSON (NaN is not a JSON number)"),
    "alpha_overflows": ("restormer", _set_text("glmha", '{"alpha": 1e999}'),
                        f"{DAMAGED} 'glmha' is not valid JSON (1e999 overflows a float)"),
    "glmha_unknown_key": ("restormer", _set_json("glmha", "heads", 2), (SETTINGS, "unknown key(s) heads")),
    "plan_not_json": ("restormer", _set_text("plan", "{"), f"{DAMAGED} 'plan' is not valid JSON"),
    "plan_a_list": ("restormer", _set_text("plan", "[]"), f"{DAMAGED} 'plan' must be an object, found a list"),
    "version_a_word": ("restormer", _set_text("format_version", "two"),
                       f"{DAMAGED} 'format_version' must be an integer, found 'two'"),
    "version_a_float": ("restormer", _set_text("format_version", "2.0"),
                        f"{DAMAGED} 'format_version' must be an integer, found '2.0'"),
    "version_empty": ("restormer", _set_text("format_version", ""),
                      f"{DAMAGED} 'format_version' must be an integer, found ''"),
    "version_missing": ("restormer", _set_text("format_version", None), f"{DAMAGED} 'format_version' is missing"),
    "version_future": ("restormer", _set_text("format_version", "3"),
                       "made by a newer glmha (field 'format_version' is 3; glmha "),
    "version_far_future": ("restormer", _set_text("format_version", "2026"), "made by a newer glmha"),
    "version_zero": ("restormer", _set_text("format_version", "0"),
                     "field 'format_version': glmha export format 0 is not supported"),
    "format_tag_changed": ("restormer", _set_text("format", "pt"),
                           f"{DAMAGED} 'format' is 'pt', expected 'glmha'"),
    "format_tag_missing": ("restormer", _set_text("format", None), f"{DAMAGED} 'format' is missing"),
    "family_unknown": ("restormer", _set_text("family", "resnet"),
                       f"{DAMAGED} 'family' names unknown family 'resnet'"),
    "family_missing": ("restormer", _set_text("family", None), f"{DAMAGED} 'family' is missing"),
    "tensor_wrong_shape": ("restormer", _set_tensor(KV1, lambda t: t[:4]),
                           f"tensor '{KV1}' has shape [4, 8, 1, 1], the metadata describes [8, 8, 1, 1]"),
    "tensor_integer": ("restormer", _set_tensor(KV1, lambda t: t.int()),
                       f"tensor '{KV1}' has dtype int32, the model needs floating point"),
    "tensor_missing": ("restormer", _drop_tensor(KV1), f"tensors do not match the metadata (missing ['{KV1}']"),
    "tensor_nan": ("restormer", _set_tensor(KV1, lambda t: t.index_fill(0, torch.tensor([1]), float("nan"))),
                   f"tensor '{KV1}' holds NaN (8 of 64 values); glmha refuses non-finite weights"),
    "value_index_out_of_range": ("mst", _set_tensor("bottleneck.blocks.0.0.v_index", lambda t: t + 100),
                                 "tensor 'bottleneck.blocks.0.0.v_index' holds channel indices outside 0..15"),
    "value_index_float": ("mst", _set_tensor("bottleneck.blocks.0.0.v_index", lambda t: t.float()),
                          "tensor 'bottleneck.blocks.0.0.v_index' has dtype float32, the model needs int64"),
}


def _damaged_export(folder: Path, exports: dict, family: str,
                    mutate: Callable[[dict, dict], None] | None) -> Path:
    tensors, metadata = exports[family]
    tensors, metadata = dict(tensors), dict(metadata)
    if mutate is not None:
        mutate(tensors, metadata)
    path = folder / "student.glmha.safetensors"
    save_safetensors(tensors, path, metadata)
    return path


@pytest.mark.parametrize("family", ["restormer", "mst"])
def test_rewritten_export_loads(family: str, exports: dict, tmp_path: Path) -> None:
    """Control: an export rewritten without damage loads, so each failure below is the damage's."""
    model = glmha.load(_damaged_export(tmp_path, exports, family, None))
    assert model.family == family and model.record.conversion.reduced == json.loads(exports[family][1]["layers"])


@pytest.mark.parametrize("via", ["api", "cli"])
@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_damaged_export_is_one_line(case: str, via: str, exports: dict, tmp_path: Path, capsys) -> None:
    family, mutate, phrases = EXPORT_CASES[case]
    path = _damaged_export(tmp_path, exports, family, mutate)
    message = _refusal(via, path, tmp_path, capsys)
    assert f"{path}: " in message
    assert all(phrase in message for phrase in ((phrases,) if isinstance(phrases, str) else phrases)), message


@pytest.mark.parametrize("kind", ["ValueError", "TypeError", "AttributeError", "KeyError", "RuntimeError"])
def test_rebuild_raises_only_glmha_errors(kind: str, exports: dict) -> None:
    """rebuild_model on metadata given in Python (not only strings from a file) still speaks GlmhaError."""
    from glmha.exports import rebuild_model

    tensors, metadata = exports["restormer"]
    broken = {"ValueError": {**metadata, "layers": json.dumps({L1: "x"})},
              "TypeError": {**metadata, "family": 3},
              "AttributeError": {**metadata, "glmha": "null"},
              "KeyError": {k: v for k, v in metadata.items() if k != "glmha"},
              "RuntimeError": {**metadata, "layers": json.dumps({**json.loads(metadata["layers"]), L1: 8})}}[kind]
    with pytest.raises(GlmhaError) as info:
        rebuild_model(tensors, broken, source="student.glmha.safetensors")
    assert str(info.value).startswith("student.glmha.safetensors: ") and "\n" not in str(info.value)


def test_cli_reports_the_damaged_export_unchanged(exports: dict, tmp_path: Path, capsys) -> None:
    """The export stays byte-identical after the refusal (the CLI never rewrites its input)."""
    path = _damaged_export(tmp_path, exports, "restormer", _set_layer(L1, 0))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    _cli_error(path, capsys)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_pickle_that_needs_code_is_still_refused_as_such(tmp_path: Path) -> None:
    """The truncation check must not hide a real refusal: a complete pickle of a module needs code."""
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), path, _use_new_zipfile_serialization=False)
    with contextlib.redirect_stderr(io.StringIO()):
        message = _api_error(path)
    assert ("refused to load: the pickle needs code to run (it references torch.nn.modules.linear.Linear)"
            in message)
