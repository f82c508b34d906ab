"""Export a model glmha loads to a torch.export program (.pt2) or ONNX, checked against PyTorch on the spot.

    report = export_model(model, "restormer.pt2", "torch-export")   # trace, write, check, rename into place
    traced = trace(model)                                            # or one trace ...
    write_export(traced, "restormer.pt2", "torch-export")            # ... for both formats
    write_export(traced, "restormer.onnx", "onnx")

The batch is dynamic in every export; height and width are dynamic in the multiples the model's plugin
names (`RestorationModel.export_sizes`; converted models: times the grid their calibration nets pool to),
or fixed at one size where the forward pass computes with the size as plain numbers. ONNX is translated
from the same ExportedProgram, so both formats take the same sizes.

torch.export keeps a branch of the forward pass on a size as a guard of the program instead of failing, so
a program can silently refuse sizes it claims to take (and an ONNX file, which has no guards, compute the
wrong branch there): trace runs the program on meta tensors over a sweep of sizes and refuses such an
export. A file appears under its name only after the written file itself (loaded back with torch.export,
or run by ONNX Runtime) matched the PyTorch model at every check size.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glmha.archs.base import RestorationModel
from glmha.errors import GlmhaError, InputShapeError
from glmha.io_utils import PendingFile, check_writable_target

FORMATS = ("torch-export", "onnx")
OUTPUT_NAME = "output"
TRACE_BATCH = 2  # 0 and 1 are specialised by the tracer: a batch of 2 keeps the batch symbolic
# At one multiple the deepest U-Net level is 1 pixel wide; the tracer specialises size-1 axes (broadcasting
# rules differ there), which would make the program refuse that size at run time.
MIN_BLOCKS = 2
DEFAULT_SIDE = 64  # default check sizes: about 64x64, 96x64 and 64x128 (batch 1, 2, 1)
CHECK_SEED = 1234  # check size i gets seeded random inputs from CHECK_SEED + i
# float32 tolerance, relative to the reference output's peak (at least 1). ONNX Runtime runs other kernels
# (its convolutions, matmuls and reductions; the exporter's decomposed layer norms and softmaxes) whose sums
# round differently: a few ulps (eps = 1.2e-7) per op, grown through tens of layers and reductions over up to
# 64k tokens. Measured: at most 2e-6 of the peak (shipped teachers and tiny test models); torch.export's
# .module() runs torch's own kernels and differs by 0 on the CPU. 1e-4 leaves a margin of 50x, and stays far
# below what a real fault gives (a wrong padding, a size baked in, a layer lost: the output's own order).
RELATIVE_TOLERANCE = 1e-4
MIN_OPSET = 18  # torch.onnx's dynamo exporter (its function library is written for 18)
Runner = Callable[[tuple[torch.Tensor, ...]], torch.Tensor]  # an exported program: forward inputs -> output
ONNX_MISSING = "ONNX export needs the onnx and onnxscript packages: pip install 'glmha[onnx]'"
ORT_MISSING = "onnxruntime is not installed (pip install 'glmha[onnx]')"


class OnnxRuntimeMissing(GlmhaError):
    """onnxruntime is not installed: ONNX files are written unchecked, sessions cannot be made."""


@dataclass(frozen=True)
class CheckSize:
    """One size the exported program is run at: batch x height x width."""

    batch: int
    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.batch}x{self.height}x{self.width}"


@dataclass(frozen=True)
class SizeCheck:
    """The exported program's output against the PyTorch model's, at one size."""

    size: CheckSize
    max_abs_diff: float  # nan: the outputs have different shapes, or a non-finite value
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance  # False for nan

    def line(self) -> str:
        return (f"check  batch {self.size.batch}, {self.size.height}x{self.size.width}: "
                f"max |diff| {self.max_abs_diff:.1e} (tolerance {self.tolerance:.1e})"
                + ("" if self.passed else "  FAILED"))


@dataclass
class Traced:
    """A model traced by torch.export with its dynamic dimensions, ready to be written in either format."""

    model: RestorationModel
    program: torch.export.ExportedProgram
    sizes: tuple[CheckSize, ...]  # what write_export checks at
    input_names: tuple[str, ...]  # the forward pass's parameter names (ONNX's input names)
    input_shapes: tuple[str, ...]  # e.g. "inp_img (batch, 3, 8*h_blocks, 8*w_blocks)"
    output_shape: str
    ranges: tuple[str, ...]  # e.g. "batch >= 1", "h_blocks >= 2"
    symbols: dict[str, str]  # torch's symbol names -> ours ("s38" -> "h_blocks"): ONNX's axis names
    seconds: float  # torch.export and the sweep of its guards


@dataclass(frozen=True)
class ExportReport:
    """What write_export wrote and how it was checked."""

    format: str
    path: Path
    input_shapes: tuple[str, ...]
    output_shape: str
    ranges: tuple[str, ...]
    checks: tuple[SizeCheck, ...]  # empty: not checked (see checked_with)
    checked_with: str  # what ran the written file, or why nothing did
    file_bytes: int
    seconds: float  # tracing plus writing
    check_seconds: float  # loading or opening the written file and the checks
    opset: int | None = None

    def summary(self) -> list[str]:
        kind = self.format if self.opset is None else f"{self.format} (opset {self.opset})"
        return [
            f"format   {kind}",
            *(f"input    {shape}" for shape in self.input_shapes),
            f"output   {self.output_shape}",
            f"dynamic  {', '.join(self.ranges)}",
            f"checked  {self.checked_with}",
            f"written  {self.path} ({self.file_bytes / 2**20:.1f} MiB): export {self.seconds:.1f} s, checks "
            f"{self.check_seconds:.1f} s",
        ]


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise GlmhaError(f"unknown export format '{fmt}'; known: {', '.join(FORMATS)}")


def require_onnx() -> None:
    """GlmhaError when the ONNX exporter's packages are missing (checked before any work)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise GlmhaError(ONNX_MISSING) from None


def check_opset(opset: int | None) -> None:
    if opset is not None and opset < MIN_OPSET:
        raise GlmhaError(f"--opset {opset}: torch.onnx's exporter writes opset {MIN_OPSET} or later")


def parse_sizes(text: str, *, what: str = "--sizes") -> tuple[CheckSize, ...]:
    """`64x64,96x64,2x64x128`: HxW or BxHxW, comma-separated; a size without a batch gets 1, 2, 3, 1, ...
    by its position."""
    sizes = []
    for position, item in enumerate(text.split(",")):
        numbers = item.strip().lower().split("x")
        if len(numbers) not in (2, 3) or not all(n.strip().isdigit() for n in numbers):
            raise GlmhaError(f"{what} '{text}': expected HxW or BxHxW sizes separated by commas, "
                             f"e.g. 64x64,96x64,2x64x128")
        values = [int(n) for n in numbers]
        batch = values[0] if len(values) == 3 else position % 3 + 1
        size = CheckSize(batch, values[-2], values[-1])
        if min(size.batch, size.height, size.width) < 1:
            raise GlmhaError(f"{what} '{item.strip()}': batch, height and width must be at least 1")
        sizes.append(size)
    return tuple(sizes)


def smallest_blocks(model: RestorationModel) -> int:
    """The fewest multiples per side an exported program of a dynamic-size model takes (MIN_BLOCKS or more)."""
    multiple = model.export_sizes.multiple
    for blocks in range(MIN_BLOCKS, 65):
        try:
            model.check_input_size(multiple * blocks, multiple * blocks)
            return blocks
        except InputShapeError:
            continue
    raise GlmhaError(f"{model.title}: no input size in multiples of {multiple} to export at")


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def default_sizes(model: RestorationModel) -> tuple[CheckSize, ...]:
    """Three check sizes: batch 1, 2, 1 at non-square sides of about 64-128 in the model's multiple, none of
    them the traced size; a fixed-size model: its size at batch 1, 2, 3."""
    rule = model.export_sizes
    if rule.static is not None:
        height, width = rule.static
        return tuple(CheckSize(batch, height, width) for batch in (1, 2, 3))
    multiple = rule.multiple
    base = max(_round_up(DEFAULT_SIDE, multiple), multiple * smallest_blocks(model))
    step = _round_up(DEFAULT_SIDE // 2, multiple)
    return CheckSize(1, base, base), CheckSize(2, base + step, base), CheckSize(1, base, 2 * base)


def resolve_sizes(model: RestorationModel, sizes: Sequence[CheckSize] | None, *,
                  what: str = "--sizes") -> tuple[CheckSize, ...]:
    """The check sizes (default_sizes when none), each one the exported program can take."""
    if not sizes:
        return default_sizes(model)
    rule = model.export_sizes
    if rule.static is not None:
        shared = sorted({(s.height, s.width) for s in sizes})
        if len(shared) > 1:
            raise GlmhaError(f"{what}: an exported {model.title} takes one height and width (only the batch is "
                             f"dynamic); got {', '.join(f'{h}x{w}' for h, w in shared)}")
    else:
        low = rule.multiple * smallest_blocks(model)
        for size in sizes:
            if size.height % rule.multiple or size.width % rule.multiple or min(size.height, size.width) < low:
                raise GlmhaError(f"{what} {size.height}x{size.width}: an exported {model.title} takes heights and "
                                 f"widths in multiples of {rule.multiple}, at least {low}")
    for size in sizes:
        try:
            model.check_input_size(size.height, size.width)
        except InputShapeError as error:
            raise GlmhaError(f"{what} {size.height}x{size.width}: {error}") from None
    return tuple(sizes)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' progress prints, warnings and log lines are no messages for the user."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)  # e.g. a failed opset conversion logs a traceback, then goes on
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _first_line(error: BaseException) -> str:
    """The first line of an exporter's message, and of its root cause where it wraps one (the ONNX exporter's
    own first line only says which step failed)."""
    def line(exception: BaseException) -> str:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exception))  # colour codes
        lines = [part.strip() for part in text.splitlines() if part.strip()]
        return lines[0] if lines else type(exception).__name__

    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    return line(error) if root is error else f"{line(error)} ({type(root).__name__}: {line(root)})"


def _device_of(model: RestorationModel) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _input_names(model: RestorationModel, count: int) -> tuple[str, ...]:
    """The forward pass's parameter names (Restormer: inp_img; MST: x, mask): the ONNX input names."""
    parameters = list(inspect.signature(model.forward).parameters)
    return tuple(parameters[:count]) if len(parameters) >= count else tuple(f"input{i}" for i in range(count))


def _axis_roles(model: RestorationModel, height: int, width: int, dynamic_sides: bool) -> list[dict[int, str]]:
    """Per input, the axes that follow the batch, the height or the width ("batch", "height", "width"), found by
    asking the plugin for example inputs at sizes that differ in one of them."""
    base = [t.shape for t in model.example_inputs(height, width, batch=TRACE_BATCH, device="meta")]
    probes = {"batch": ((TRACE_BATCH + 1, height, width), TRACE_BATCH)}
    if dynamic_sides:
        step = model.export_sizes.multiple
        probes["height"] = ((TRACE_BATCH, height + step, width), height)
        probes["width"] = ((TRACE_BATCH, height, width + step), width)
    roles: list[dict[int, str]] = [{} for _ in base]
    for role, ((batch, h, w), value) in probes.items():
        shapes = [t.shape for t in model.example_inputs(h, w, batch=batch, device="meta")]
        moved = {"batch": batch, "height": h, "width": w}[role]
        for index, (before, after) in enumerate(zip(base, shapes, strict=True)):
            for axis, (a, b) in enumerate(zip(before, after, strict=True)):
                if a == b:
                    continue
                if (a, b) != (value, moved) or axis in roles[index]:
                    raise GlmhaError(f"{model.title}: axis {axis} of input {index} grows with the {role} other "
                                     f"than as the {role} itself ({a} -> {b}); it cannot be made dynamic")
                roles[index][axis] = role
    return roles


def trace(model: RestorationModel, sizes: Sequence[CheckSize] | None = None) -> Traced:
    """torch.export of the model (in eval mode, on its device) with a dynamic batch and, where the plugin
    allows, dynamic height and width; `sizes` are the later check sizes (for a fixed-size model, they give
    the size)."""
    if model.training:
        raise GlmhaError(f"{model.title}: export a model in eval mode (glmha.load returns one)")
    sizes = resolve_sizes(model, sizes)
    rule = model.export_sizes
    multiple = rule.multiple
    if rule.static is not None:
        height, width = sizes[0].height, sizes[0].width
        blocks = 0
    else:
        blocks = smallest_blocks(model)
        height, width = multiple * blocks, multiple * (blocks + 1)  # distinct: the tracer keeps them apart
    device = _device_of(model)
    example = model.example_inputs(height, width, batch=TRACE_BATCH, device=device)
    names = _input_names(model, len(example))
    roles = _axis_roles(model, height, width, rule.static is None)
    dims = {"batch": torch.export.Dim("batch", min=1)}
    if rule.static is None:
        for side in ("height", "width"):
            if multiple == 1:
                dims[side] = torch.export.Dim(side, min=blocks)
            else:
                dims[side] = multiple * torch.export.Dim(f"{side[0]}_blocks", min=blocks)
    dynamic_shapes = tuple({axis: dims[role] for axis, role in axes.items()} for axes in roles)
    start = time.perf_counter()
    try:
        with _quiet():
            program = torch.export.export(model, example, dynamic_shapes=dynamic_shapes)
    except Exception as error:  # the exporters raise many kinds; the user needs the first line
        raise GlmhaError(f"{model.title}: torch.export failed: {_first_line(error)}") from None
    refused = _refused_size(model, program, _sweep_sizes(model, blocks, sizes[0]))
    if refused is not None:
        size, reason = refused
        raise GlmhaError(f"{model.title}: the traced program refuses batch {size.batch}, {size.height}x"
                         f"{size.width}, a size it should take ({reason}): a size-dependent branch was baked in")
    seconds = time.perf_counter() - start
    # torch keeps these in set order, which follows the hash seed: sorted, the same model saves to the same bytes
    constraints = sorted(program.range_constraints.items(), key=lambda item: str(item[0]))
    program.range_constraints.clear()
    program.range_constraints.update(constraints)
    return _describe(model, program, sizes, names, roles, seconds)


def _sweep_sizes(model: RestorationModel, blocks: int, first: CheckSize) -> list[CheckSize]:
    """The traced size, then sizes from the smallest to 16k pixels a side (batches 1 to 8), square and not,
    to try the program's guards with."""
    rule = model.export_sizes
    if rule.static is not None:
        return [CheckSize(batch, first.height, first.width) for batch in (TRACE_BATCH, 1, 3, 5, 8)]
    sides = [rule.multiple * (blocks + step) for step in (0, 1, 3, 13, 61, 253)]
    pairs = [*zip(sides, reversed(sides), strict=True), *zip(sides[1::3], sides[1::3], strict=True)]
    traced = CheckSize(TRACE_BATCH, rule.multiple * blocks, rule.multiple * (blocks + 1))
    return [traced, *(CheckSize((1, 3, 2, 5, 8)[i % 5], h, w) for i, (h, w) in enumerate(pairs))]


def _refused_size(model: RestorationModel, program: torch.export.ExportedProgram,
                  sizes: Sequence[CheckSize]) -> tuple[CheckSize, str] | None:
    """The first size the program's guards (torch.export records size-dependent branches as guards instead of
    failing) refuse, and why. Runs on meta tensors: shapes only, no memory, no arithmetic. None also where
    the program cannot run on meta tensors at all (nothing to learn then; the checks still run)."""
    module = program.module().to("meta")
    for index, size in enumerate(sizes):
        try:
            shapes = [t.shape for t in model.example_inputs(size.height, size.width, batch=size.batch,
                                                             device="meta")]
        except InputShapeError:
            continue
        try:
            with torch.no_grad(), _quiet():
                module(*(torch.empty(shape, device="meta") for shape in shapes))
        except Exception as error:
            return None if index == 0 else (size, _first_line(error))
    return None


def _describe(model: RestorationModel, program: torch.export.ExportedProgram, sizes: tuple[CheckSize, ...],
              names: tuple[str, ...], roles: list[dict[int, str]], seconds: float) -> Traced:
    """Shapes and ranges as the traced program holds them, with our names for torch's symbols."""
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    user_inputs = program.graph_signature.user_inputs
    symbols: dict[str, str] = {}
    for axes, user_input in zip(roles, user_inputs, strict=True):
        shape = placeholders[user_input].meta["val"].shape
        for axis, role in axes.items():
            expr = _expr(shape[axis])
            if expr is None:
                raise GlmhaError(f"{model.title}: torch.export fixed the {role} of input {user_input} at "
                                 f"{shape[axis]}; it cannot be exported with a dynamic {role}")
            blocks = "" if role == "batch" or model.export_sizes.multiple == 1 else f"{role[0]}_blocks"
            for symbol in expr.free_symbols:
                symbols[str(symbol)] = blocks or role
    outputs = program.graph_signature.user_outputs
    if len(outputs) != 1:
        raise GlmhaError(f"{model.title}: the forward pass returns {len(outputs)} values; export takes one tensor")
    output_node = next(node for node in program.graph.nodes if node.op == "output")
    output_value = output_node.args[0][0].meta["val"]
    input_shapes = tuple(f"{name} {_shape_text(placeholders[user_input].meta['val'].shape, symbols)}"
                         for name, user_input in zip(names, user_inputs, strict=True))
    ranges = []
    for symbol, bounds in program.range_constraints.items():
        if str(symbol) in symbols:
            upper = "" if not math.isfinite(float(bounds.upper)) else f" <= {int(bounds.upper)}"
            ranges.append(f"{symbols[str(symbol)]} >= {int(bounds.lower)}{upper}")
    order = {"batch": 0}
    ranges.sort(key=lambda text: (order.get(text.split(" ")[0], 1), text))
    return Traced(model=model, program=program, sizes=sizes, input_names=names, input_shapes=input_shapes,
                  output_shape=f"{OUTPUT_NAME} {_shape_text(output_value.shape, symbols)}", ranges=tuple(ranges),
                  symbols=symbols, seconds=seconds)


def _expr(size: Any) -> Any:
    """The sympy expression of a symbolic size, None for a plain number."""
    return size.node.expr if isinstance(size, torch.SymInt) else None


def _shape_text(shape: Sequence[Any], symbols: dict[str, str]) -> str:
    parts = []
    for size in shape:
        expr = _expr(size)
        text = str(size) if expr is None else str(expr)
        parts.append(re.sub(r"\b[a-z]\d+\b", lambda m: symbols.get(m.group(0), m.group(0)), text))
    return "(" + ", ".join(parts) + ")"


def random_inputs(model: RestorationModel, size: CheckSize, seed: int) -> tuple[torch.Tensor, ...]:
    """Seeded uniform [0, 1) inputs of the forward pass's shapes, on the model's device."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [t.shape for t in model.example_inputs(size.height, size.width, batch=size.batch, device="meta")]
    device = _device_of(model)
    return tuple(torch.rand(shape, generator=generator).to(device) for shape in shapes)


@contextlib.contextmanager
def _ieee_float32(device: torch.device) -> Iterator[None]:
    """No TF32 on CUDA while checking: ONNX Runtime on the CPU computes in full float32."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def compare_outputs(model: RestorationModel, run: Runner, sizes: Sequence[CheckSize], *,
                    log: Callable[[str], None] | None = None) -> list[SizeCheck]:
    """Run `run` (an exported program) and the model on the same seeded inputs at each size."""
    checks = []
    device = _device_of(model)
    for index, size in enumerate(sizes):
        inputs = random_inputs(model, size, CHECK_SEED + index)
        with torch.no_grad(), _ieee_float32(device):
            reference = model(*inputs).float().cpu()
            try:
                output = run(inputs).float().cpu()
            except Exception as error:  # ONNX Runtime's and torch's own errors, e.g. a shape baked into the file
                raise GlmhaError(f"the exported program fails at batch {size.batch}, {size.height}x{size.width}: "
                                 f"{_first_line(error)}") from None
        peak = float(reference.abs().max()) if reference.numel() else 0.0
        tolerance = RELATIVE_TOLERANCE * max(1.0, peak)
        if output.shape != reference.shape or not torch.isfinite(output).all():
            diff = math.nan
        else:
            diff = float((output - reference).abs().max()) if reference.numel() else 0.0
        check = SizeCheck(size, diff, tolerance)
        checks.append(check)
        if log is not None:
            log(check.line())
    return checks


def save_program(program: torch.export.ExportedProgram, path: Path) -> None:
    """torch.export.save, through memory: a file's name would go into the archive (and draw a warning when it
    does not end in .pt2), so the temporary file's random name would make the bytes differ run to run."""
    buffer = io.BytesIO()
    examples = program.example_inputs
    program.example_inputs = None  # zeros of the traced size (megabytes for MST's 256x256), needed by no one
    try:
        with _quiet():
            torch.export.save(program, buffer)
    except Exception as error:
        raise GlmhaError(f"torch.export.save failed: {_first_line(error)}") from None
    finally:
        program.example_inputs = examples
    path.write_bytes(buffer.getvalue())


def load_program(path: str | Path) -> torch.nn.Module:
    """A saved torch.export program as a callable module."""
    try:
        with Path(path).open("rb") as handle, _quiet():
            return torch.export.load(handle).module()
    except OSError as error:
        raise GlmhaError(f"{path}: cannot be read ({error.strerror or error})") from None
    except Exception as error:
        raise GlmhaError(f"{path}: not a torch.export program ({_first_line(error)})") from None


def save_onnx(traced: Traced, path: Path, opset: int | None = None) -> int:
    """Translate the traced program to ONNX (one file, weights inside) with our axis names; the opset used."""
    require_onnx()
    check_opset(opset)
    try:
        with _quiet():
            onnx_program = torch.onnx.export(
                traced.program, (), None, dynamo=True, input_names=list(traced.input_names),
                output_names=[OUTPUT_NAME], opset_version=opset, external_data=False, verbose=False)
            onnx_program.rename_axes(traced.symbols)
            onnx_program.save(path, external_data=False)
    except Exception as error:
        raise GlmhaError(f"{traced.model.title}: ONNX export failed: {_first_line(error)}") from None
    written = int(onnx_program.model.opset_imports.get("", 0))
    if opset is not None and written != opset:  # the exporter logs a failed conversion and writes its own
        raise GlmhaError(f"--opset {opset}: the ONNX exporter could not convert the model to it (it wrote opset "
                         f"{written})")
    return written


def onnx_session(path: str | Path, *, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for an exported file (`threads`: intra-op threads, default ORT's)."""
    try:
        import onnxruntime
    except ImportError:
        raise OnnxRuntimeMissing(ORT_MISSING) from None
    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise GlmhaError(f"{path}: ONNX Runtime cannot load it ({_first_line(error)})") from None


def run_onnx(session: Any, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """One forward pass of an ONNX Runtime session on torch tensors (moved to the CPU as float32)."""
    arguments = zip(session.get_inputs(), inputs, strict=True)
    feed = {argument.name: tensor.detach().float().cpu().numpy() for argument, tensor in arguments}
    return torch.from_numpy(session.run(None, feed)[0])


def write_export(traced: Traced, path: str | Path, fmt: str, *, opset: int | None = None,
                 log: Callable[[str], None] | None = None) -> ExportReport:
    """Write the traced program as `fmt` to a temporary file next to `path`, run that file at the check sizes
    against the model, and rename it to `path` only when every difference is within the tolerance."""
    check_format(fmt)
    if opset is not None and fmt != "onnx":
        raise GlmhaError("--opset is for ONNX exports only")
    path = Path(path)
    with PendingFile(path, what="output") as pending:
        start = time.perf_counter()
        if fmt == "torch-export":
            save_program(traced.program, pending.tmp)
        else:
            opset = save_onnx(traced, pending.tmp, opset)
        seconds = traced.seconds + time.perf_counter() - start
        start = time.perf_counter()
        run, checked_with = _runner(fmt, pending.tmp, path)
        checks = [] if run is None else compare_outputs(traced.model, run, traced.sizes, log=log)
        check_seconds = time.perf_counter() - start
        failed = [check for check in checks if not check.passed]
        if failed:
            worst = max(failed, key=lambda c: math.inf if math.isnan(c.max_abs_diff) else c.max_abs_diff)
            raise GlmhaError(f"{path}: the exported {fmt} program differs from the PyTorch model at batch "
                             f"{worst.size.batch}, {worst.size.height}x{worst.size.width}: max |diff| "
                             f"{worst.max_abs_diff:.1e} > tolerance {worst.tolerance:.1e}; nothing written")
        file_bytes = pending.tmp.stat().st_size
        pending.commit(lambda _tmp: None)  # written above: now the mode, fsync and rename
    if checks:
        checked_with += f" at {len(checks)} sizes, max |diff| {max(c.max_abs_diff for c in checks):.1e}"
    return ExportReport(format=fmt, path=path, input_shapes=traced.input_shapes, output_shape=traced.output_shape,
                        ranges=traced.ranges, checks=tuple(checks), checked_with=checked_with,
                        file_bytes=file_bytes, seconds=seconds, check_seconds=check_seconds, opset=opset)


def _runner(fmt: str, path: Path, shown: Path) -> tuple[Runner | None, str]:
    """How the written file `path` (to be renamed to `shown`) is run for the checks, and those words."""
    try:
        if fmt == "torch-export":
            module = load_program(path)
            return (lambda inputs: module(*inputs)), "loaded with torch.export.load, run by .module()"
        session = onnx_session(path)
    except OnnxRuntimeMissing:
        return None, f"not checked with ONNX Runtime: {ORT_MISSING}"
    except GlmhaError as error:  # named after the temporary file: say which output it is
        raise GlmhaError(f"{shown}: {str(error).split(': ', 1)[-1]}; nothing written") from None
    return (lambda inputs: run_onnx(session, inputs)), "run by ONNX Runtime (CPU)"


def export_model(model: RestorationModel, path: str | Path, fmt: str, *, sizes: Sequence[CheckSize] | None = None,
                 opset: int | None = None, log: Callable[[str], None] | None = None) -> ExportReport:
    """trace + write_export, failing before the trace where the format's packages or the output are unusable."""
    check_format(fmt)
    if fmt == "onnx":
        require_onnx()
        check_opset(opset)
    elif opset is not None:
        raise GlmhaError("--opset is for ONNX exports only")
    check_writable_target(path, what="output")
    return write_export(trace(model, sizes), path, fmt, opset=opset, log=log)


def export_program(model: RestorationModel, path: str | Path, **options: Any) -> ExportReport:
    """A checked torch.export program (.pt2); options as export_model."""
    return export_model(model, path, "torch-export", **options)


def export_onnx(model: RestorationModel, path: str | Path, **options: Any) -> ExportReport:
    """A checked ONNX file; options as export_model."""
    return export_model(model, path, "onnx", **options)
