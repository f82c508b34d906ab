"""CSA -> GLMHA conversion: exactness, planning rules, export round trip, training, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import glmha
from glmha.archs import MST, Restormer
from glmha.archs.drsformer import topk_counts
from glmha.cli.convert import main as convert_main
from glmha.convert.api import analyse, convert, convert_to_glmha, plan
from glmha.convert.plan import smallest_width
from glmha.io_utils import sha256_file
from glmha.layers import GLMHALayer
from glmha.report import describe

from conftest import example_batch, randomise, tiny_model

SIZES = {"restormer": 16, "mst_plus_plus": 16, "mst": 64, "promptir": 16, "drsformer": 16, "retinexformer": 16,
         "adair": 16, "xrestormer": 64}


def _full_width_patterns(model) -> list[str]:
    return [f"^{name.replace('.', '[.]')}$={layer.channels}" for name, layer in model.csa_layers()]


def _max_diff(a, b, inputs) -> float:
    with torch.no_grad():
        return (a(*inputs) - b(*inputs)).abs().max().item()


@pytest.mark.parametrize("layernorm", ["WithBias", "BiasFree"])
def test_energy_one_leaves_restormer_unchanged(layernorm: str) -> None:
    model = randomise(Restormer(dim=8, num_blocks=(1, 2, 1, 1), num_refinement_blocks=1, heads=(1, 2, 2, 4),
                                layernorm_type=layernorm), 3)
    student, conversion = convert_to_glmha(model, energy=1.0, input_size=(16, 16))
    inputs = example_batch(model, 16)
    assert _max_diff(student, model, inputs) <= 1e-5
    assert all(layer.energy == pytest.approx(1.0) for layer in conversion.layers)


def test_energy_one_and_full_width_select_are_exact(family: str) -> None:
    """At C' = C the `select` initialisation reproduces the teacher to float32 round-off."""
    model = tiny_model(family, 4)
    inputs = example_batch(model, SIZES[family])
    student, _ = convert_to_glmha(model, energy=1.0, input_size=(SIZES[family],) * 2)
    assert _max_diff(student, model, inputs) <= 1e-5
    spectra = analyse(model)
    forced = plan(model, spectra, rank_patterns=_full_width_patterns(model), allow_bigger=True,
                  input_size=(SIZES[family],) * 2)
    converted = convert(model, forced, spectra)
    assert all(isinstance(layer, GLMHALayer) for _, layer in converted.csa_layers())
    with torch.no_grad():
        expected = model(*inputs)
        scale = expected.abs().max().item()
        assert (converted(*inputs) - expected).abs().max().item() <= 1e-5 * max(scale, 1.0)
    svd = convert(model, plan(model, spectra, rank_patterns=_full_width_patterns(model), init="svd",
                              allow_bigger=True, input_size=(SIZES[family],) * 2), spectra)
    assert _max_diff(svd, model, inputs) > 1e-4  # a rotation of the tokens is not exact under softmax


def test_reduced_width_shrinks_with_energy_and_divides_heads(family: str) -> None:
    model = tiny_model(family, 5)
    spectra = analyse(model)
    previous = None
    layers = dict(model.csa_layers())
    for energy in (1.0, 0.999, 0.99, 0.95, 0.9, 0.8, 0.6, 0.3, 0.05, 1e-9):
        widths = {s.name: max(s.width_for(energy) * s.num_heads, smallest_width(layers[s.name])) for s in spectra}
        conversion = plan(model, spectra, energy=energy, input_size=(SIZES[family],) * 2)
        for layer in conversion.layers:
            assert layer.reduced_channels % layer.heads == 0
            assert layer.reduced_channels <= layer.channels
            if layer.convert:
                assert layer.reduced_channels == widths[layer.name]
        if previous is not None:
            assert all(widths[name] <= previous[name] for name in widths)
        previous = widths
    # d' = 1, or the smallest width the layer kind computes with (2 for top-k attention)
    assert all(width == smallest_width(layers[name]) for name, width in previous.items())


def test_plan_macs_equal_a_fresh_count(family: str) -> None:
    model = tiny_model(family, 6)
    size = SIZES[family]
    student, conversion = convert_to_glmha(model, ratio=0.5, allow_bigger=True, input_size=(size, size))
    assert any(layer.convert for layer in conversion.layers)
    fresh = describe(student, size, size)
    assert fresh.params == conversion.after["params"]
    assert fresh.macs_linear == conversion.after["macs_linear"]
    assert fresh.macs_total == conversion.after["macs_total"]
    assert conversion.after["macs_total"] < conversion.before["macs_total"]
    by_name = {row.name: row for row in fresh.layers}
    for layer in conversion.layers:
        assert by_name[layer.name].macs_total == layer.macs_total_after
        assert by_name[layer.name].params == layer.params_after
    assert sum(p.numel() for p in model.parameters()) == conversion.before["params"]


def test_layer_that_would_not_save_stays_csa() -> None:
    model = tiny_model("restormer", 7)
    conversion = plan(model, analyse(model), ratio=0.0, input_size=(16, 16))
    assert not any(layer.convert for layer in conversion.layers)
    assert all("stays CSA" in layer.reason for layer in conversion.layers)


def test_levels_select_depths() -> None:
    model = Restormer(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1)
    conversion = plan(model, analyse(model), ratio=0.5, levels=("3", "bottleneck"), input_size=(16, 16))
    converted = {layer.name for layer in conversion.layers if layer.convert}
    assert converted == {"encoder_level3.0.attn", "latent.0.attn", "decoder_level3.0.attn"}
    with pytest.raises(glmha.GlmhaError, match="unknown level"):
        plan(model, analyse(model), ratio=0.5, levels=("5",), input_size=(16, 16))


def test_export_then_load_gives_identical_outputs(family: str, tmp_path: Path) -> None:
    model = tiny_model(family, 8)
    source = tmp_path / "teacher.pth"
    torch.save({"params": model.state_dict()}, source)
    assert convert_main([str(source), "--ratio", "0.5", "--allow-bigger", "--input-size", str(SIZES[family])]) == 0
    output = tmp_path / "teacher.glmha.safetensors"
    assert output.exists() and not list(tmp_path.glob(".*.tmp"))
    student = glmha.load(output)
    reference, conversion = convert_to_glmha(model, ratio=0.5, allow_bigger=True, input_size=(SIZES[family],) * 2)
    inputs = example_batch(model, SIZES[family])
    with torch.no_grad():
        assert torch.equal(student(*inputs), reference(*inputs))
    assert student.family == family and not student.training
    if conversion.after["params"] < conversion.before["params"]:
        assert output.stat().st_size < source.stat().st_size
    with safe_open(str(output), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["family"] == family and metadata["format_version"] == "2"
    assert metadata["source_sha256"] == sha256_file(source)
    assert json.loads(metadata["glmha"])["alpha"] == 0.6
    assert json.loads(metadata["layers"]) == student.record.conversion.reduced
    other = "mst" if family != "mst" else "restormer"
    with pytest.raises(glmha.GlmhaError, match=f"a converted {family} model, not {other}"):
        glmha.load(output, family=other)


def test_mst_mask_still_guides_after_conversion() -> None:
    model = randomise(MST(dim=28, stage=1, num_blocks=(1, 1)), 9)
    student, _ = convert_to_glmha(model, ratio=0.5, allow_bigger=True, input_size=(64, 64))
    x = torch.rand(1, 28, 64, 64)
    mask = (torch.rand(1, 28, 64, model.mask_width(64), generator=torch.Generator().manual_seed(1)) > 0.5).float()
    with torch.no_grad():
        assert not torch.allclose(student(x, mask), student(x, torch.zeros_like(mask)))
        assert torch.equal(student(x), student(x, torch.zeros_like(mask)))


def test_converted_model_trains(family: str) -> None:
    model = tiny_model(family, 10)
    student, _ = convert_to_glmha(model, ratio=0.5, allow_bigger=True, input_size=(SIZES[family],) * 2)
    student.train()
    inputs = example_batch(model, SIZES[family])
    with torch.no_grad():
        target = model(*inputs)
    loss = (student(*inputs) - target).abs().mean()
    loss.backward()
    layers = [layer for _, layer in student.csa_layers() if isinstance(layer, GLMHALayer)]
    assert layers
    for layer in layers:
        assert layer.calibrate.weight.grad.abs().sum() > 0  # zero-initialised, yet it learns
        # a top-k branch that keeps a single key is a hard choice: logits (bias, keys) get no gradient through it
        dense = not hasattr(layer, "attn1") or max(topk_counts(layer.reduced_head_dim)) > 1
        assert (layer.token_bias.grad.abs().sum() > 0) == dense
        generator = layer.kv if hasattr(layer, "kv") else layer.to_q
        assert generator.weight.grad.abs().sum() > 0
        if hasattr(layer, "v_reduce"):
            assert layer.v_reduce.weight.grad.abs().sum() > 0
    optimizer = torch.optim.SGD(student.parameters(), lr=1e-4)  # a small step along -grad lowers the loss
    optimizer.step()
    with torch.no_grad():
        assert (student(*inputs) - target).abs().mean() < loss


def _teacher(tmp_path: Path) -> Path:
    path = tmp_path / "teacher.pth"
    torch.save({"params": tiny_model("restormer", 11).state_dict()}, path)
    return path


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        (["--energy", "0"], "--energy must be in (0, 1]"),
        (["--energy", "1.5"], "--energy must be in (0, 1]"),
        (["--ratio", "1"], "--ratio must be in [0, 1)"),
        (["--ratio", "-0.1"], "--ratio must be in [0, 1)"),
        (["--energy", "0.9", "--ratio", "0.5"], "exclude each other; got energy and ratio"),
        (["--rank-pattern", "nothing_like_this=4"], "matches no CSA layer"),
        (["--rank-pattern", "latent=3"], "multiple of its"),
        (["--rank-pattern", "latent"], "expected REGEX=C'"),
        (["--alpha", "nan"], "--alpha must be a finite number"),
        (["--levels", "9"], "unknown level"),
        (["-o", "{tmp}/missing/out.safetensors"], "does not exist"),
        (["-o", "{tmp}/out.pth"], "name it *.safetensors"),
        (["-o", "{tmp}/existing.safetensors"], "pass --force"),
    ],
)
def test_cli_conversion_errors(extra: list[str], phrase: str, tmp_path: Path, capsys) -> None:
    source = _teacher(tmp_path)
    (tmp_path / "existing.safetensors").write_bytes(b"keep me")
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    argv = [str(source), *[a.format(tmp=tmp_path) for a in extra], "--json", str(tmp_path / "r.json")]
    assert convert_main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and phrase in err[0], err
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    assert (tmp_path / "existing.safetensors").read_bytes() == b"keep me"


def test_cli_never_overwrites_its_input(tmp_path: Path, capsys) -> None:
    source = tmp_path / "teacher.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tiny_model("restormer", 12).state_dict().items()}, str(source))
    data = source.read_bytes()
    assert convert_main([str(source), "-o", str(source), "--force", "--ratio", "0.5",
                         "--input-size", "16"]) == 1
    assert "never overwrites its input" in capsys.readouterr().err
    assert source.read_bytes() == data


def test_cli_dry_run_json_extends_the_report(tmp_path: Path, capsys) -> None:
    source = _teacher(tmp_path)
    out = tmp_path / "plan.json"
    assert convert_main([str(source), "--dry-run", "--ratio", "0.5", "--input-size", "16",
                         "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "plan: ratio 0.5" in printed and "total MACs (b)" in printed
    assert not (tmp_path / "teacher.glmha.safetensors").exists()
    data = json.loads(out.read_text())
    for key in ("family", "hyperparameters", "params", "macs_linear", "macs_total", "input_shape", "layers",
                "before", "after", "plan"):
        assert key in data
    assert data["params"] == data["before"]["params"]
    assert data["after"]["macs_total"] < data["before"]["macs_total"]
    for entry in data["layers"]:
        assert entry["reduced_channels"] % entry["heads"] == 0
        assert 0 < entry["energy"] <= 1
    assert data["plan"]["settings"]["ratio"] == 0.5


def test_forced_pattern_and_last_match_wins(tmp_path: Path) -> None:
    model = Restormer(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=0, heads=(1, 2, 4, 8))
    spectra = analyse(model)
    conversion = plan(model, spectra, energy=1.0, rank_patterns=("latent=32", "latent=16"), input_size=(16, 16))
    latent = next(layer for layer in conversion.layers if layer.name == "latent.0.attn")
    assert latent.convert and latent.reduced_channels == 16
    assert sum(layer.convert for layer in conversion.layers) == 1


def _write_images(folder: Path, count: int, size: int = 24) -> None:
    from PIL import Image

    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    for index in range(count):
        pixels = (torch.rand(size, size, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"calib_{index}.png")


def test_cli_calibration_spectra_and_plots(tmp_path: Path, capsys) -> None:
    source = _teacher(tmp_path)
    _write_images(tmp_path / "calib", 3)
    out = tmp_path / "plan.json"
    argv = [str(source), "--dry-run", "--energy", "0.9", "--input-size", "16", "--calib", str(tmp_path / "calib"),
            "--plot", str(tmp_path / "plots"), "--json", str(out)]
    assert convert_main(argv) == 0
    printed = capsys.readouterr().out
    assert "spectra from activations" in printed
    data = json.loads(out.read_text())
    assert data["plan"]["spectrum_source"] == "activations"
    levels = {entry["level"] for entry in data["layers"]}
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(
        [f"energy_level_{level}.png" for level in levels] + ["fidelity.png"])
    curves = data["fidelity_curves"]
    assert [p["setting"] for p in curves["energy"]] == [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
    assert len(curves["ratio"]) == 7 and len(curves["budget"]) == 8 and len(curves["chosen"]) == 1


def test_activation_spectra_match_hand_computed_gram() -> None:
    """From activations, a head's Gram matrix is sum over images and pixels of K K^T + V V^T."""
    from glmha.convert.spectrum import key_value_activations

    model = tiny_model("restormer", 13)
    images = [torch.rand(1, model.config.inp_channels, 16, 16, generator=torch.Generator().manual_seed(i))
              for i in range(2)]
    spectra = analyse(model, [(image,) for image in images])
    name, layer = model.csa_layers()[0]
    captured = []
    handle = layer.register_forward_hook(lambda m, args, out: captured.append(key_value_activations(m, *args)))
    with torch.no_grad():
        for image in images:
            model(image)
    handle.remove()
    d = layer.head_dim
    gram = sum((k[0, :d].double() @ k[0, :d].double().T) + (v[0, :d].double() @ v[0, :d].double().T)
               for k, v in captured)
    expected = torch.linalg.eigvalsh(gram).flip(0).clamp(min=0)
    assert torch.allclose(spectra[0].heads[0].eigenvalues, expected, rtol=1e-9, atol=1e-9)
    assert spectra[0].source == "activations" and spectra[0].name == name


@pytest.mark.parametrize(("family", "phrase"), [("mst", "MST takes CASSI measurements"),
                                                 ("restormer", "no images")])
def test_cli_calibration_errors(family: str, phrase: str, tmp_path: Path, capsys) -> None:
    source = tmp_path / "teacher.pth"
    torch.save(tiny_model(family, 14).state_dict(), source)
    (tmp_path / "empty").mkdir()
    assert convert_main([str(source), "--dry-run", "--calib", str(tmp_path / "empty"),
                         "--input-size", str(SIZES[family])]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and phrase in err[0]


def test_top_level_python_api(tmp_path: Path) -> None:
    """The README's dozen lines: load, analyse, plan, convert, export, load back."""
    teacher_path = _teacher(tmp_path)
    teacher = glmha.load(teacher_path)
    spectra = glmha.analyse(teacher)
    conversion = glmha.plan_conversion(teacher, spectra, ratio=0.5, input_size=(16, 16))
    student = glmha.convert_model(teacher, conversion, spectra)
    assert all(not isinstance(layer, GLMHALayer) for _, layer in teacher.csa_layers())  # teacher untouched
    glmha.export(student, tmp_path / "student.safetensors")
    reloaded = glmha.load(tmp_path / "student.safetensors")
    inputs = example_batch(teacher, 16)
    with torch.no_grad():
        assert torch.equal(reloaded(*inputs), student(*inputs))
    with pytest.raises(glmha.GlmhaError, match="not converted"):
        glmha.export(teacher, tmp_path / "teacher.safetensors")


def test_outputs_get_ordinary_permissions(tmp_path: Path) -> None:
    import os

    from glmha.io_utils import atomic_write_text

    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.json", "{}")
        student, _ = convert_to_glmha(tiny_model("restormer", 16), ratio=0.5, input_size=(16, 16))
        glmha.export(student, tmp_path / "student.safetensors")
    finally:
        os.umask(umask)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "student.safetensors").stat().st_mode & 0o777 == 0o644


def test_python_api_exports_record_the_source_checkpoint(tmp_path):
    """glmha.load remembers the file's SHA-256, conversions carry it into the export metadata."""
    from glmha.checkpoint import read_checkpoint
    from glmha.io_utils import sha256_file

    source = tmp_path / "teacher.pth"
    torch.save({"params": tiny_model("restormer", seed=5).state_dict()}, source)
    student, _ = glmha.convert_to_glmha(glmha.load(source), ratio=0.5)
    glmha.export(student, tmp_path / "student.safetensors")
    metadata = read_checkpoint(tmp_path / "student.safetensors").metadata
    assert metadata["source_sha256"] == sha256_file(source) and metadata["source_file"] == "teacher.pth"
