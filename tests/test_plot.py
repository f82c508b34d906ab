"""Energy plots: one valid PNG per level, written atomically, with one-line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from PIL import Image

from glmha.convert import api
from glmha.convert.plan import ConversionPlan
from glmha.convert.plot import level_sort_key, plot_file_name, plot_spectra
from glmha.convert.spectrum import LayerSpectrum
from glmha.errors import GlmhaError

from conftest import tiny_model

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def spectra_and_plan() -> tuple[list[LayerSpectrum], ConversionPlan]:
    model = tiny_model("restormer", 6)  # quick to analyse; some layers convert, some stay CSA
    spectra = api.analyse(model)
    plan = api.plan(model, spectra, energy=0.9, allow_bigger=True, input_size=(16, 16))
    assert {layer.convert for layer in plan.layers} == {True, False}
    return spectra, plan


def test_one_png_per_level(spectra_and_plan, tmp_path: Path) -> None:
    spectra, plan = spectra_and_plan
    out_dir = tmp_path / "nested" / "plots"  # parents are created too
    written = plot_spectra(spectra, plan, out_dir)

    levels = sorted({layer.level for layer in plan.layers}, key=level_sort_key)
    assert levels[-1] == "bottleneck" and len(levels) > 1
    assert written == [out_dir / f"energy_level_{level}.png" for level in levels]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(p.name for p in written)  # no temporaries
    for path in written:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            assert image.format == "PNG"
            width, height = image.size
        assert 400 <= width <= 3000 and 250 <= height <= 2000


def test_rewrites_existing_plots(spectra_and_plan, tmp_path: Path) -> None:
    spectra, plan = spectra_and_plan
    bottleneck = dataclasses.replace(plan, layers=[lp for lp in plan.layers if lp.level == "bottleneck"])
    target = tmp_path / "energy_level_bottleneck.png"
    target.write_bytes(b"stale")
    assert plot_spectra(spectra, bottleneck, tmp_path) == [target]
    assert target.read_bytes()[:8] == PNG_SIGNATURE
    assert list(tmp_path.iterdir()) == [target]


def test_out_dir_is_a_file(spectra_and_plan, tmp_path: Path) -> None:
    spectra, plan = spectra_and_plan
    target = tmp_path / "plots"
    target.write_text("not a folder")
    with pytest.raises(GlmhaError, match="not a folder") as info:
        plot_spectra(spectra, plan, target)
    assert "\n" not in str(info.value)
    with pytest.raises(GlmhaError, match="cannot be created"):
        plot_spectra(spectra, plan, target / "below")


def test_missing_spectrum(spectra_and_plan, tmp_path: Path) -> None:
    spectra, plan = spectra_and_plan
    with pytest.raises(GlmhaError, match=plan.layers[0].name):
        plot_spectra(spectra[1:], plan, tmp_path)


def test_level_order_and_names() -> None:
    assert sorted(["bottleneck", "10", "2", "1"], key=level_sort_key) == ["1", "2", "10", "bottleneck"]
    assert plot_file_name("bottleneck") == "energy_level_bottleneck.png"
    assert plot_file_name("a/b c") == "energy_level_a_b_c.png"
