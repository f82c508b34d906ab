"""glmha.deploy / glmha-export: exported programs (torch.export, ONNX), originals and converted, match the
PyTorch model at sizes they were not traced at, take a dynamic batch and sizes in the model's multiple (MST:
one size), a branch baked in by the trace is caught, and every user mistake is one line with exit code 2 and
nothing written.

Tracing is the slow part (seconds per model on a CPU): each tiny model is traced once per module and written
in both formats from that one trace, as write_export allows; models have the fewest blocks that still cover
every level of their U-Net.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import glmha
from glmha.archs import MST, MSTPlusPlus, RestorationModel, Restormer, Retinexformer
from glmha.deploy import CheckSize, load_program, onnx_session, parse_sizes, run_onnx, trace, write_export
from glmha.deploy import export as deploy_export
from glmha.deploy.cli import main
from glmha.deploy.export import RELATIVE_TOLERANCE, Traced, smallest_blocks
from glmha.errors import GlmhaError

from conftest import randomise

PROGRAM_TOLERANCE = 1e-5  # torch.export's .module() runs the same kernels as the model: measured 0 on the CPU


def tiny_restormer() -> Restormer:
    # blocks at level 1 only (encoder and decoder): every level's down/up-sampling and skip still runs
    return randomise(Restormer(dim=4, num_blocks=(1, 0, 0, 0), num_refinement_blocks=0, heads=(1, 1, 1, 1)), 0)


def tiny_mst_plus_plus() -> MSTPlusPlus:
    return randomise(MSTPlusPlus(in_channels=3, out_channels=4, n_feat=4, stage=1, stage_blocks=(1, 0)), 1)


def converted(model: RestorationModel) -> RestorationModel:
    """The level-1 layers (encoder and decoder) as GLMHA: each calibration net adds to the trace's time."""
    student, _ = glmha.convert_to_glmha(model, ratio=0.5, allow_bigger=True, levels=["1"], input_size=(16, 16))
    assert sum("GLMHA" in type(module).__name__ for module in student.modules()) == 2
    return student


MODELS: dict[str, Callable[[], RestorationModel]] = {
    "restormer": tiny_restormer,
    "mst_plus_plus": tiny_mst_plus_plus,
    "retinexformer": lambda: randomise(Retinexformer(n_feat=4, stage=1, num_blocks=(1, 0, 0)), 2),
    "glmha_restormer": lambda: converted(tiny_restormer()),
}


def small_sizes(model: RestorationModel) -> tuple[tuple[CheckSize, ...], CheckSize]:
    """Three check sizes and one more, non-square, in the export multiple; none of them the traced size
    (batch 2, k x (k + 1) multiples: deploy.export.trace)."""
    m, k = model.export_sizes.multiple, smallest_blocks(model)
    checks = CheckSize(1, m * k, m * (k + 2)), CheckSize(2, m * (k + 2), m * k), CheckSize(1, m * (k + 1), m * k)
    return checks, CheckSize(3, m * (k + 3), m * (k + 4))


@pytest.fixture(scope="module")
def traced() -> Callable[[str], Traced]:
    """Each model traced once for the whole module (tracing is the slow part), written in both formats."""
    cache: dict[str, Traced] = {}

    def get(name: str) -> Traced:
        if name not in cache:
            model = MODELS[name]()
            cache[name] = trace(model, small_sizes(model)[0])
        return cache[name]

    return get


def random_inputs(model: RestorationModel, size: CheckSize) -> tuple[torch.Tensor, ...]:
    return deploy_export.random_inputs(model, size, seed=99)


def reference(model: RestorationModel, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs)


def no_temporaries(folder: Path) -> bool:
    return not list(folder.glob(".*.tmp"))


@pytest.mark.parametrize("name", ["restormer", "mst_plus_plus", "retinexformer", "glmha_restormer"])
def test_torch_export_round_trip_is_exact_at_untraced_sizes(name: str, traced, tmp_path: Path) -> None:
    """write_export runs the written file, loaded back, at the check sizes: none of them the traced size."""
    program = traced(name)
    model = program.model
    m, k = model.export_sizes.multiple, smallest_blocks(model)
    checks = small_sizes(model)[0]
    assert CheckSize(2, m * k, m * (k + 1)) not in checks  # the traced size (deploy.export.trace)
    out = tmp_path / "model.pt2"
    report = write_export(program, out, "torch-export")
    assert [c.size for c in report.checks] == list(checks)
    assert all(c.max_abs_diff < PROGRAM_TOLERANCE for c in report.checks)
    assert report.ranges == ("batch >= 1", f"h_blocks >= {k}", f"w_blocks >= {k}")
    assert report.input_shapes[0].endswith(f"(batch, 3, {m}*h_blocks, {m}*w_blocks)")
    assert out.stat().st_size == report.file_bytes and no_temporaries(tmp_path)
    off_multiple = random_inputs(model, CheckSize(1, m * 3, m * 3))[0][..., : m * 3 - 1]  # width not a multiple
    with pytest.raises(Exception):  # noqa: B017 - the program's own guard: the error class is torch's business
        program.program.module()(off_multiple)


@pytest.mark.parametrize("name", ["mst_plus_plus", "glmha_restormer"])
def test_onnx_matches_onnx_runtime(name: str, traced, tmp_path: Path) -> None:
    import onnx

    program = traced(name)
    model = program.model
    out = tmp_path / "model.onnx"
    report = write_export(program, out, "onnx")
    assert report.checked_with.startswith("run by ONNX Runtime") and len(report.checks) == 3
    assert all(c.passed and c.max_abs_diff < 2e-5 for c in report.checks)  # measured up to 1e-5 at a peak of 6
    proto = onnx.load(str(out))
    dims = [[d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            for value in (*proto.graph.input, *proto.graph.output)]
    assert [value.name for value in proto.graph.input] == list(program.input_names)
    m = model.export_sizes.multiple  # 8; converted: x 8 more, so that each level is a multiple of the GLMHA grid
    assert m == (64 if name.startswith("glmha") else 8)
    sides = [f"{m}*h_blocks", f"{m}*w_blocks"]
    assert dims == [["batch", model.input_channels, *sides], ["batch", model.output_channels, *sides]]
    unseen = small_sizes(model)[1]
    inputs = random_inputs(model, unseen)
    expected = reference(model, inputs)
    diff = (run_onnx(onnx_session(out), inputs) - expected).abs().max()
    assert diff < RELATIVE_TOLERANCE * max(1.0, float(expected.abs().max()))


def test_failed_check_writes_nothing(traced, tmp_path: Path, monkeypatch) -> None:
    program = traced("retinexformer")

    def off_by_a_little(path: Path) -> Callable[..., torch.Tensor]:
        return lambda *inputs: program.model(*inputs) + 1e-2

    monkeypatch.setattr(deploy_export, "load_program", off_by_a_little)
    out = tmp_path / "model.pt2"
    out.write_bytes(b"an earlier export")
    with pytest.raises(GlmhaError, match=r"differs from the PyTorch model at batch \d, \d+x\d+: "
                                         r"max \|diff\| 1.0e-02 > tolerance .*; nothing written"):
        write_export(program, out, "torch-export")
    assert out.read_bytes() == b"an earlier export" and no_temporaries(tmp_path)


def test_cli_exports_mst_at_its_static_size_with_a_dynamic_batch(tmp_path: Path, capsys) -> None:
    model = randomise(MST(dim=4, stage=1, num_blocks=(1, 1), bands=4), 3)
    model_file = tmp_path / "mst.pth"
    torch.save(model.state_dict(), model_file)
    out = tmp_path / "mst.pt2"
    assert main([str(model_file), "--format", "torch-export", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    checks = [line.split(":")[0] for line in printed.splitlines() if line.startswith("check ")]
    assert checks == [f"check  batch {b}, 256x256" for b in (1, 2, 3)]  # the default: 256x256, traced at batch 2
    assert f"input    x (batch, 4, 256, 256)\ninput    mask (batch, 4, 256, {model.mask_width(256)})" in printed
    assert "dynamic  batch >= 1\n" in printed and "max |diff| 0.0e+00" in printed and no_temporaries(tmp_path)
    loaded = load_program(out)  # the file as written: another batch runs, another size is refused
    inputs = random_inputs(model, CheckSize(4, 256, 256))
    with torch.no_grad():
        assert (loaded(*inputs) - reference(model, inputs)).abs().max() < PROGRAM_TOLERANCE
    with pytest.raises(Exception):  # noqa: B017 - the program's own guard: the error class is torch's business
        loaded(*random_inputs(model, CheckSize(1, 128, 128)))
    err = run_failing([str(model_file), "--format", "onnx", "-o", str(out), "--sizes", "256x256,128x128"], capsys)
    assert "--sizes: an exported MST takes one height and width (only the batch is dynamic)" in err


class Branchy(RestorationModel):
    """A conv whose forward branches on its width as a grid pooling's fast-path test does."""

    family = "branchy"
    title = "Branchy"
    downsamplings = 3

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    @property
    def input_channels(self) -> int:
        return 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cells = min(4, x.shape[-1] // 8)
        if x.shape[-1] // 8 % cells:
            return self.conv(x)
        return self.conv(x) * cells


def test_a_branch_baked_in_by_the_trace_is_an_error() -> None:
    """torch.export keeps such a branch as a guard of the program instead of failing; trace finds it."""
    expected = r"Branchy: the traced program refuses batch \d, \d+x\d+, a size it should take \(Guard failed: "
    with pytest.raises(GlmhaError, match=expected + r".*\): a size-dependent branch was baked in"):
        trace(Branchy().eval())


@pytest.fixture(scope="module")
def restormer_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "restormer.pth"
    torch.save({"params": tiny_restormer().state_dict()}, path)
    return path


def run_failing(argv: list[str], capsys, expected: int = 1) -> str:
    """main(argv) must fail with exit code 1 (2: a usage error) and one line on stderr; that line."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # usage errors: argparse exits
        code = exit_.code
    err = capsys.readouterr().err
    assert code == expected, err
    assert err.count("\n") == 1 and err.startswith("glmha-export: error: "), err
    return err


@pytest.mark.parametrize(("case", "message"), [
    ("missing model", "no such file"),
    ("unreadable model", "not a PyTorch"),
    ("unknown format", "invalid choice: 'tflite'"),
    ("output is the model", "is the input model; glmha never overwrites its input"),
    ("output folder missing", "does not exist"),
    ("output folder is a file", "is a file, not a folder"),
    ("sizes off the multiple", "--sizes 20x20: an exported Restormer takes heights and widths in multiples of 8"),
    ("sizes malformed", "expected HxW or BxHxW sizes"),
    ("opset without onnx", "--opset is for --format onnx only"),
    ("opset too old", "--opset 17: torch.onnx's exporter writes opset 18 or later"),
    ("device unknown", "--device must be auto, cpu, cuda or cuda:N; got 'tpu'"),
])
def test_cli_errors_are_one_line(case: str, message: str, restormer_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.pt2"
    argv = {
        "missing model": [str(tmp_path / "absent.pth"), "--format", "torch-export", "-o", str(out)],
        "unreadable model": [str(tmp_path / "junk.pth"), "--format", "torch-export", "-o", str(out)],
        "unknown format": [str(restormer_file), "--format", "tflite", "-o", str(out)],
        "output is the model": [str(restormer_file), "--format", "torch-export", "-o", str(restormer_file)],
        "output folder missing": [str(restormer_file), "--format", "onnx", "-o", str(tmp_path / "no" / "m.onnx")],
        "output folder is a file": [str(restormer_file), "--format", "onnx", "-o", str(restormer_file / "m.onnx")],
        "sizes off the multiple": [str(restormer_file), "--format", "torch-export", "-o", str(out), "--sizes",
                                   "16x16,20x20"],
        "sizes malformed": [str(restormer_file), "--format", "torch-export", "-o", str(out), "--sizes", "64"],
        "opset without onnx": [str(restormer_file), "--format", "torch-export", "-o", str(out), "--opset", "18"],
        "opset too old": [str(restormer_file), "--format", "onnx", "-o", str(out), "--opset", "17"],
        "device unknown": [str(restormer_file), "--format", "torch-export", "-o", str(out), "--device", "tpu"],
    }[case]
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    before = restormer_file.read_bytes()
    assert message in run_failing(argv, capsys, 2 if case == "unknown format" else 1)
    assert not out.exists() and no_temporaries(tmp_path) and restormer_file.read_bytes() == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_cli_unwritable_folder(restormer_file: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    assert "is not writable" in run_failing([str(restormer_file), "--format", "torch-export", "-o",
                                             str(folder / "m.pt2")], capsys)


def test_cli_without_onnx_packages(restormer_file: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails as if not installed
    err = run_failing([str(restormer_file), "--format", "onnx", "-o", str(tmp_path / "m.onnx")], capsys)
    assert "pip install 'glmha[onnx]'" in err


def test_cli_export_failure_is_the_exporters_first_line(restormer_file: Path, tmp_path: Path, capsys,
                                                        monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise RuntimeError("Could not guard on data-dependent expression u0 > 1\n\nmore lines\nand a traceback")

    monkeypatch.setattr(torch.export, "export", fail)
    out = tmp_path / "m.pt2"
    err = run_failing([str(restormer_file), "--format", "torch-export", "-o", str(out)], capsys)
    assert "Restormer: torch.export failed: Could not guard on data-dependent expression u0 > 1" in err
    assert not out.exists() and no_temporaries(tmp_path)


def test_onnx_export_failure_names_the_root_cause(traced, tmp_path: Path, monkeypatch) -> None:
    """The ONNX exporter's own first line only names the failed step (in colour); its root cause follows."""
    def fail(*args, **kwargs):
        try:
            raise TypeError("Unsupported attribute type: 'SymbolicTensor'\nmore")
        except TypeError as cause:
            raise RuntimeError("\x1b[96mFailed to convert\x1b[0m the program. Next steps:\n...") from cause

    monkeypatch.setattr(torch.onnx, "export", fail)
    out = tmp_path / "m.onnx"
    expected = "MST++: ONNX export failed: Failed to convert the program. Next steps: (TypeError: Unsupported " \
               "attribute type: 'SymbolicTensor')"
    with pytest.raises(GlmhaError) as error:
        write_export(traced("mst_plus_plus"), out, "onnx")
    assert str(error.value) == expected and not out.exists() and no_temporaries(tmp_path)


def test_without_onnx_runtime_onnx_files_are_unchecked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(GlmhaError, match=r"onnxruntime is not installed \(pip install 'glmha\[onnx\]'\)"):
        onnx_session(tmp_path / "m.onnx")
    run, words = deploy_export._runner("onnx", tmp_path / "m.onnx", tmp_path / "m.onnx")
    assert run is None and words.startswith("not checked with ONNX Runtime: onnxruntime is not installed")


def test_sizes_parse_with_positional_batches() -> None:
    assert parse_sizes("64x64, 96x64 ,2x64x128,8x8") == (CheckSize(1, 64, 64), CheckSize(2, 96, 64),
                                                        CheckSize(2, 64, 128), CheckSize(1, 8, 8))
    for bad in ("", "64", "0x64", "ax64", "1x2x3x4"):
        with pytest.raises(GlmhaError, match="--sizes"):
            parse_sizes(bad)
