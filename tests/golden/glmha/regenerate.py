"""Regenerate tests/golden/glmha/: run `python tests/golden/glmha/regenerate.py` from the repository root.

Only for a deliberate change of GLMHA numerics; the files pin the current behaviour. `format1/` holds
exports written by glmha 0.1.0 (export format 1: the per-head calibration map, a 2x2 max-pooling window,
mixed MST values): they are never regenerated, because they pin that old files keep loading and computing
what they computed.
"""
import sys

sys.path.insert(0, "tests")
import torch
from safetensors.torch import save_file

import glmha
from glmha.archs import MST, MSTPlusPlus, Restormer

from conftest import randomise

cases = {  # name: (model, input size, conversion options)
    "restormer": (Restormer(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 2, 2, 4)), 16, {}),
    "restormer_lowrank_merge": (Restormer(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1,
                                          heads=(1, 2, 2, 4)), 16, {"calibration": "lowrank", "init": "merge"}),
    "mst_plus_plus": (MSTPlusPlus(in_channels=3, out_channels=8, n_feat=8, stage=1, stage_blocks=(1, 1)), 16, {}),
    "mst": (MST(dim=28, stage=1, num_blocks=(1, 1)), 32, {}),
}
for name, (model, size, options) in cases.items():
    randomise(model, 21)
    student, _ = glmha.convert_to_glmha(model, ratio=0.5, allow_bigger=True, input_size=(size, size), **options)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for key, p in student.named_parameters():
            if ".calibrate." in key or key.endswith("token_bias"):  # both start at zero after conversion
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    glmha.export(student, f"tests/golden/glmha/{name}.safetensors")
    reloaded = glmha.load(f"tests/golden/glmha/{name}.safetensors").double()
    shapes = [t.shape for t in reloaded.example_inputs(size, size)]
    inputs = [torch.rand(shapes[0], generator=gen, dtype=torch.float64)]
    if len(shapes) > 1:
        inputs.append((torch.rand(shapes[1], generator=gen) > 0.5).double())
    with torch.no_grad():
        out = reloaded(*inputs)
    tensors = {"input": inputs[0], "output": out.contiguous()}
    if len(inputs) > 1:
        tensors["mask"] = inputs[1]
    save_file(tensors, f"tests/golden/glmha/{name}_io.safetensors",
              metadata={"note": f"float64 output of the glmha export next to this file, made by glmha "
                                f"{glmha.__version__}"})
    print(name, out.shape, out.abs().max().item())
