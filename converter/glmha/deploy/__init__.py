"""Deployment: export a model glmha loads (original or converted) with torch.export or to ONNX, with dynamic
batch and sizes, checked against PyTorch before the file appears (`glmha-export`, glmha.deploy.export)."""

from glmha.deploy.export import (
    FORMATS,
    CheckSize,
    ExportReport,
    SizeCheck,
    Traced,
    export_model,
    export_onnx,
    export_program,
    load_program,
    onnx_session,
    parse_sizes,
    run_onnx,
    trace,
    write_export,
)

__all__ = [
    "FORMATS", "CheckSize", "ExportReport", "SizeCheck", "Traced", "export_model", "export_onnx", "export_program",
    "load_program", "onnx_session", "parse_sizes", "run_onnx", "trace", "write_export",
]
