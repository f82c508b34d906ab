"""The distillation run on Hugging Face Accelerate.

One run = one recipe and one run directory. The student, optimizer, loaders and scheduler are
prepared by Accelerate; the teacher stays frozen in eval mode on the device and is not prepared
(nothing of it is trained or synchronised). Every sample is a pure function of (seed, sample index)
(see glmha.distill.data), so resuming needs only the step count to put the data stream back where it
was, and a resumed run ends bit-identical to an uninterrupted one on the same hardware.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from glmha.archs import RestorationModel
from glmha.convert.initialise import CALIBRATED_INITS
from glmha.convert.plan import in_recipe_terms
from glmha.data.degrade import seeded_generator
from glmha.distill import checkpointing
from glmha.distill.data import (
    TrainPatches,
    ValImages,
    centre_crop,
    check_patch_size,
    check_worker_temp_dir,
    open_source,
    stable_seed,
    stop_workers,
    unwrap_worker_error,
)
from glmha.distill.evaluate import Evaluator, Scores
from glmha.distill.losses import FeatureTap, distance_fn, feature_loss, feature_points
from glmha.distill.optim import build_optimizer, build_scheduler, select_trainable
from glmha.distill.recipe import (
    Recipe,
    RecipeError,
    SourceSection,
    recipe_to_yaml,
    resume_differences,
)
from glmha.distill.spectral_data import SpectralPatches, SpectralScenes, open_spectral_source
from glmha.distill.table import TableRow, write_table
from glmha.distill.trackers import CSVTracker, csv_columns, tensorboard_available
from glmha.errors import GlmhaError
from glmha.exports import export_model
from glmha.io_utils import sha256_file
from glmha.layers import changed_layers
from glmha.metrics import IMAGE_METRICS
from glmha.report import describe
from glmha.spectral.metrics import SPECTRAL_METRICS

STUDENT_FILE = "student.safetensors"
LOG_FILE = "log.csv"
_ADVICE = "Lower train.lr or set train.max_grad_norm"  # what a diverging run needs


class TrainingDiverged(GlmhaError):
    """The loss became NaN or infinite."""


StudentBuilder = Callable[[Recipe, RestorationModel, Callable[[str], None]], RestorationModel]


@dataclass
class RunResult:
    run_dir: Path
    step: int
    finished: bool  # reached train.steps
    stopped_by: str | None  # "signal", "stop_at" or None
    best_step: int | None
    best_scores: Scores | None
    table: str | None  # the final Markdown table
    dry_run_loss: float | None = None


@dataclass
class RunState:
    """What trainer_state.json holds besides the Accelerate state."""

    step: int = 0
    best_step: int | None = None
    best: dict | None = None  # Scores.to_json() of the best student
    teacher_scores: dict | None = None
    converted_scores: dict | None = None
    history: list = dataclasses.field(default_factory=list)  # [{"step": s, **scores}]


class StopRequest:
    """SIGINT/SIGTERM ask the run to stop after the current step and save; a second Ctrl-C aborts."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.requested = False
        self.say = say
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.say("\nstop requested: finishing this step and saving a checkpoint (Ctrl-C again aborts)")

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _choose_device(recipe: Recipe) -> bool:
    """Whether to run on the CPU, checking the recipe's device and precision against the machine."""
    train = recipe.train
    has_cuda = torch.cuda.is_available()
    if train.device == "cuda" and not has_cuda:
        raise RecipeError("train.device: cuda was asked for, but no CUDA device is visible")
    cpu = train.device == "cpu" or not has_cuda
    if train.mixed_precision == "fp16" and cpu:
        raise RecipeError("train.mixed_precision: fp16 needs a CUDA device; on the CPU use bf16 or no")
    if train.mixed_precision == "bf16" and not cpu and not torch.cuda.is_bf16_supported():
        raise RecipeError("train.mixed_precision: this GPU has no bf16; use fp16 or no")
    return cpu


def load_teacher(recipe: Recipe) -> RestorationModel:
    from glmha.loader import load

    teacher = load(recipe.teacher)
    if teacher.record.converted:
        raise RecipeError(f"teacher: {recipe.teacher} is a glmha export; give the original checkpoint it "
                          f"was converted from")
    return teacher


def build_student(recipe: Recipe, teacher: RestorationModel, say: Callable[[str], None]) -> RestorationModel:
    """The student from a glmha export, or by converting the teacher with the recipe's settings (the
    conversion records the teacher file's SHA-256, which glmha.load noted)."""
    from glmha.convert.api import convert
    from glmha.loader import load

    spec = recipe.student
    if spec.path is not None:
        student = load(spec.path)
        record = student.record
        if not record.converted:
            raise RecipeError(f"student.path: {spec.path} is not a glmha export (convert it with glmha-convert)")
        if student.family != teacher.family or student.config != teacher.config:
            raise RecipeError(f"student.path: {spec.path} was converted from a different model "
                              f"({student.family} {student.config.to_dict()}) than the teacher "
                              f"({teacher.family} {teacher.config.to_dict()})")
        if record.source_sha256 and record.source_sha256 != teacher.record.source_sha256:
            say(f"note: {spec.path} was converted from a file with another SHA-256 than the teacher "
                f"(same architecture; continuing)")
        return student
    plan, spectra, calibration = plan_student(recipe, teacher, say)
    return convert(teacher, plan, spectra, inputs=calibration)


def plan_student(recipe: Recipe, teacher: RestorationModel, say: Callable[[str], None]):
    """The conversion plan of the recipe's `student` settings for `teacher`, with the spectra and calibration
    inputs (None unless a budget or `refit` needs them) that converting by it takes."""
    from glmha.convert.api import analyse
    from glmha.convert.plan import make_plan

    spec = recipe.student
    spectra = analyse(teacher, mode=spec.spectrum)
    settings = spec.plan_settings()
    calibration = None
    if settings.has_budget or settings.init in CALIBRATED_INITS:
        calibration, described = recipe_calibration(recipe, teacher)
        say(f"calibration inputs: {described}")
    try:
        plan = make_plan(teacher, spectra, settings, spec.glmha_settings(), *recipe.eval.input_size,
                         calibration=calibration, say=say)
    except RecipeError:
        raise
    except GlmhaError as error:  # the planner speaks in CLI flags; say it in recipe keys
        raise RecipeError(in_recipe_terms(str(error))) from None
    if not plan.converted:
        raise RecipeError(f"student: under {plan.settings.rule()} no CSA layer is converted, so there is "
                          f"nothing to distil ({plan.layers[0].reason})")
    return plan, spectra, calibration


def recipe_calibration(recipe: Recipe, teacher: RestorationModel) -> tuple[list[tuple[torch.Tensor, ...]], str]:
    """Calibration inputs for budgets and `refit`: centre crops of the first training images as the recipe
    degrades them (what the model really sees: noisy images for a denoiser), at the size glmha-convert
    would use; spectral data gives the family's offline scenes."""
    from glmha.convert.calibration import calibration_size, default_calibration

    spec: SourceSection = recipe.data.train
    if spec.spectral:
        inputs, described = default_calibration(teacher)
        return inputs, described
    side, count = calibration_size(teacher)
    source = open_source(spec, channels=teacher.input_channels, where="data.train")
    crops = []
    for index in range(len(source)):
        if len(crops) == count:
            break
        height, width = source.sizes[index]
        if min(height, width) < side:
            continue
        generator = seeded_generator(stable_seed("glmha.distill.calibration", recipe.train.seed, index))
        image, _ = source.read(index, generator)
        crops.append(centre_crop(image, side))
    if not crops:
        raise RecipeError(f"data.train: no training image is at least {side}x{side} pixels, the calibration size "
                          f"budgets and refit need")
    return [(torch.stack(crops),)], f"{len(crops)} training images of data.train as degraded, centre {side}x{side}"


def data_form(source: SourceSection) -> str:
    """What a data section gives, in the terms of glmha.archs.base.Task.data_forms."""
    if source.format == "sci" or source.kind == "sci":
        return "sci"
    return "rgb-spectral" if source.spectral else "image"


def _check_data_fits(recipe: Recipe, teacher: RestorationModel) -> None:
    task = teacher.task
    for split in ("train", "val"):
        source: SourceSection = getattr(recipe.data, split)
        where = f"data.{split}"
        if data_form(source) not in task.data_forms:
            raise RecipeError(f"{where}: {task.other_data.format(title=teacher.title)}")
        if not source.spectral and source.has_target and teacher.output_channels != teacher.input_channels:
            raise RecipeError(f"{where}: the teacher maps {teacher.input_channels} to {teacher.output_channels} "
                              f"channels; image ground truth cannot be compared with its output, use "
                              f"{{inputs: DIR}} (pure teacher distillation) or a spectral format")
    try:
        teacher.check_patch_size(recipe.data.patch_size)
    except GlmhaError as error:
        raise RecipeError(f"data.patch_size: {error}") from None


def open_data(recipe: Recipe, teacher: RestorationModel, split: str):
    """The source of one split, image or spectral, with its training-time checks; every file is
    checked here, before the run folder exists, so a damaged one costs seconds and leaves nothing."""
    spec: SourceSection = getattr(recipe.data, split)
    where = f"data.{split}"
    if spec.spectral:
        source = open_spectral_source(spec, where=where, bands=teacher.output_channels, training=split == "train")
    else:
        source = open_source(spec, channels=teacher.input_channels, where=where)
        if split == "train":
            check_patch_size(source, recipe.data.patch_size)
    source.verify()
    return source


@dataclass
class RunParts:
    """What the set-up builds and the loop uses: the models (the student, and `model`, the same student as
    Accelerate prepared it), optimisation, data and evaluation, and the feature taps (teacher, student)."""

    teacher: RestorationModel
    student: RestorationModel
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: DataLoader
    evaluator: Evaluator
    taps: tuple[FeatureTap, FeatureTap] | None


class Distillation:
    """Builds everything a recipe describes and runs (or resumes) it."""

    def __init__(self, recipe: Recipe, *, restart: bool = False, stop_at: int | None = None,
                 dry_run: bool = False, progress: bool = True, say: Callable[[str], None] | None = None,
                 student_builder: StudentBuilder | None = None,
                 exporter: Callable[[RestorationModel, Path], None] | None = None,
                 identity: dict[str, str] | None = None) -> None:
        """`student_builder` replaces the recipe's conversion (glmha.compare's baseline methods), `exporter`
        writes the best student (default: a glmha export), and `identity` names what else, besides the recipe
        and its files, makes this run what it is (a method and its settings): a run folder made with another
        identity is not resumed."""
        self.recipe = recipe
        self.student_builder = student_builder or build_student
        self.exporter = exporter or export_model
        self.identity = dict(identity or {})
        self.restart = restart
        self.stop_at = stop_at
        self.dry_run = dry_run
        self.progress = progress
        self._say = say or (lambda text: print(text, flush=True))
        self.accelerator = None  # set by run(); until then every process speaks
        self._loaders: list = []  # every DataLoader made, so that their worker processes can be stopped
        if stop_at is not None and stop_at < 1:
            raise GlmhaError(f"--stop-at must be a positive step, got {stop_at}")

    # -- set-up ---------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        if self.accelerator is None or self.accelerator.is_main_process:
            self._say(text)

    def _make_accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        recipe = self.recipe
        cpu = _choose_device(recipe)
        _reset_single_process_state()
        trackers: list = []
        run_dir = recipe.run_dir
        if not self.dry_run:
            tensorboard = recipe.output.tensorboard
            if tensorboard is True and not tensorboard_available():
                raise RecipeError("output.tensorboard: true, but TensorBoard is not installed "
                                  "(pip install tensorboard, or set it to auto)")
            if tensorboard is True or (tensorboard == "auto" and tensorboard_available()):
                trackers.append("tensorboard")
        return Accelerator(
            cpu=cpu, mixed_precision=recipe.train.mixed_precision,
            gradient_accumulation_steps=recipe.train.grad_accum,
            log_with=trackers or None,
            project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir)),
        ), trackers

    def run(self) -> RunResult:
        """Run or resume the recipe. A run that fails before its first complete checkpoint removes the
        run folder it created (nothing there could be resumed), and an error raised in a DataLoader
        worker reaches the caller as the worker's own one-line message."""
        run_dir = self.recipe.run_dir
        existed = run_dir.exists()
        self._loaders = []
        try:
            return self._run()
        except BaseException as error:
            if not existed:
                self._discard_unfinished(run_dir)
            plain = unwrap_worker_error(error) if isinstance(error, GlmhaError) else error
            if plain is not error:
                raise plain from None
            raise
        finally:
            for loader in self._loaders:
                stop_workers(loader)

    def _discard_unfinished(self, run_dir: Path) -> None:
        """Remove a run folder this run created when it holds no complete checkpoint."""
        if self.accelerator is not None and not self.accelerator.is_main_process:
            return
        if run_dir.is_dir() and not checkpointing.complete_checkpoints(checkpointing.checkpoint_root(run_dir)):
            shutil.rmtree(run_dir, ignore_errors=True)

    def _run(self) -> RunResult:
        from accelerate.utils import set_seed

        recipe = self.recipe
        accelerator, tracker_names = self._make_accelerator()
        self.accelerator = accelerator
        run_dir = recipe.run_dir
        root = checkpointing.checkpoint_root(run_dir)

        resume = None if (self.restart or self.dry_run) else checkpointing.latest_checkpoint(root)
        teacher = load_teacher(recipe)
        files = {"teacher": teacher.record.source_sha256}  # the run's input files, by content
        if recipe.student.path is not None:
            files["student.path"] = sha256_file(recipe.student.path)
        files.update(self.identity)
        state = RunState()
        if resume is not None:
            state = self._check_resumable(resume, files, accelerator.num_processes)

        _check_data_fits(recipe, teacher)
        train_source = open_data(recipe, teacher, "train")
        val_source = open_data(recipe, teacher, "val")
        set_seed(recipe.train.seed)
        student = self.student_builder(recipe, teacher, self.say)
        teacher.to(accelerator.device).eval().requires_grad_(False)
        student.to(accelerator.device).train()
        params = select_trainable(student, recipe.train.trainable)

        micro_batches = recipe.train.steps * recipe.train.grad_accum * accelerator.num_processes
        patches = SpectralPatches if recipe.data.train.spectral else TrainPatches
        train_set = patches(train_source, patch_size=recipe.data.patch_size,
                            length=micro_batches * recipe.data.batch_size, seed=recipe.train.seed,
                            flips=recipe.data.flips)
        if recipe.data.val.spectral:
            val_set = SpectralScenes(val_source, limit=recipe.data.val_limit)
        else:
            val_set = ValImages(val_source, seed=0, limit=recipe.data.val_limit, crop=recipe.data.val_crop)
        workers = recipe.data.workers
        check_worker_temp_dir(workers)
        train_loader = DataLoader(train_set, batch_size=recipe.data.batch_size, shuffle=False, drop_last=True,
                                  num_workers=workers, persistent_workers=workers > 0)
        # persistent workers: kept in the loader, where `stop_workers` finds them however the run ends
        val_loader = DataLoader(val_set, batch_size=1, shuffle=False, num_workers=workers,
                                persistent_workers=workers > 0)
        self._loaders += [train_loader, val_loader]

        optimizer = build_optimizer(params, recipe.train)
        scheduler = build_scheduler(optimizer, recipe.train, accelerator.num_processes)
        model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
            student, optimizer, train_loader, val_loader, scheduler)
        self._loaders += [train_loader, val_loader]
        student = accelerator.unwrap_model(model)

        points = feature_points(student) if recipe.loss.features > 0 else []
        taps = (FeatureTap(teacher, points), FeatureTap(student, points)) if points else None
        spectral = teacher.task.spectral
        self.metrics = recipe.eval.metrics or (SPECTRAL_METRICS if spectral else IMAGE_METRICS)
        self.select = recipe.eval.select or teacher.selection_metric
        if self.select not in self.metrics:
            raise RecipeError(f"eval.select: {self.select!r} is not among the evaluated metrics "
                              f"({', '.join(self.metrics)})")
        evaluator = Evaluator(accelerator, val_loader, teacher, multiple=teacher.size_multiple,
                              metrics=self.metrics, spectral=spectral, border=recipe.eval.border)
        self.parts = RunParts(teacher=teacher, student=student, model=model, optimizer=optimizer,
                              scheduler=scheduler, train_loader=train_loader, evaluator=evaluator, taps=taps)
        if self.dry_run:
            return self._dry_run(teacher, student)

        if resume is not None:
            _load_state(accelerator, resume[1])
            self.say(f"resuming from {resume[1]} (step {state.step} of {recipe.train.steps})")
        elif accelerator.is_main_process:
            if self.restart and root.exists():
                shutil.rmtree(root)
                (run_dir / STUDENT_FILE).unlink(missing_ok=True)
            run_dir.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            checkpointing.remove_partials(root)
            from glmha.io_utils import atomic_write_text

            atomic_write_text(run_dir / "recipe.yaml", recipe_to_yaml(recipe))

        csv_tracker = CSVTracker(run_dir / LOG_FILE, resume_step=state.step if resume else None,
                                 columns=csv_columns(self.metrics)) \
            if accelerator.is_main_process else None
        if csv_tracker is not None:
            accelerator.trackers.append(csv_tracker)
        if tracker_names:
            accelerator.init_trackers("tensorboard", config=_scalar_config(recipe.to_dict()))

        try:
            return self._train(state, files, resume)
        finally:
            accelerator.end_training()
            if taps is not None:
                for tap in taps:
                    tap.remove()

    def _check_resumable(self, resume: tuple[int, Path], files: dict[str, str], processes: int) -> RunState:
        step, folder = resume
        saved = checkpointing.read_state(folder)
        checkpointing.check_files(folder, saved["num_processes"])
        differences = resume_differences(checkpointing.read_saved_recipe(folder), self.recipe.to_dict())
        saved_files = saved.get("file_sha256", {})
        for key, digest in files.items():
            if saved_files.get(key) != digest:
                if key in self.identity:
                    differences.append(f"{key}: {saved_files.get(key)} -> {digest}")
                    continue
                old = str(saved_files.get(key))[:12]
                differences.append(f"{key}: file content changed (SHA-256 {old}... -> {digest[:12]}...)")
        if saved.get("num_processes") != processes:
            differences.append(f"processes: {saved.get('num_processes')} -> {processes}")
        if differences:
            raise RecipeError(
                f"run folder {self.recipe.run_dir} was made by a different recipe; cannot resume from its step "
                f"{step} checkpoint {folder}: restore the {len(differences)} value(s) below, or rerun with "
                f"--restart to start over (this deletes the run's checkpoints)\n  " + "\n  ".join(differences))
        fields = {f.name for f in dataclasses.fields(RunState)}
        return RunState(**{k: v for k, v in saved.items() if k in fields})

    # -- training -------------------------------------------------------------------------------
    def _losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        recipe, parts = self.recipe, self.parts
        distance = distance_fn(recipe.loss.distance)
        taps = parts.taps
        if taps is not None:
            taps[0].clear()
            taps[1].clear()
        inputs = (batch["input"], batch["mask"]) if "mask" in batch else (batch["input"],)
        with torch.no_grad(), self.accelerator.autocast():
            teacher_out = parts.teacher(*inputs)
        student_out = parts.model(*inputs)
        terms: dict[str, torch.Tensor] = {}
        if recipe.loss.output > 0:
            terms["loss_output"] = distance(student_out, teacher_out)
        if recipe.loss.features > 0:
            terms["loss_features"] = feature_loss(taps[1].values, taps[0].values, distance)
        if recipe.loss.gt > 0:
            terms["loss_gt"] = distance(student_out, batch["target"])
        weights = {"loss_output": recipe.loss.output, "loss_features": recipe.loss.features,
                   "loss_gt": recipe.loss.gt}
        loss = sum(weights[k] * v for k, v in terms.items())
        return loss, {k: float(v.detach()) for k, v in terms.items()}

    def _dry_run(self, teacher: RestorationModel, student: RestorationModel) -> RunResult:
        accelerator, parts = self.accelerator, self.parts
        batch = next(iter(parts.train_loader))
        started = time.perf_counter()
        with accelerator.accumulate(parts.model):
            loss, terms = self._losses(batch)
            accelerator.backward(loss)
            parts.optimizer.zero_grad()
        seconds = time.perf_counter() - started
        trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
        converted = len(changed_layers(student))
        self.say(recipe_to_yaml(self.recipe).rstrip())
        self.say(f"\ndry run: teacher {teacher.family} {sum(p.numel() for p in teacher.parameters()):,} params; "
                 f"student {sum(p.numel() for p in student.parameters()):,} params, {converted} changed layers, "
                 f"{trainable:,} trainable; one step on a batch of {tuple(batch['input'].shape)}: "
                 f"loss {float(loss.detach()):.6f} ({', '.join(f'{k} {v:.6f}' for k, v in terms.items())}) "
                 f"in {seconds:.2f} s on {accelerator.device}. Nothing written.")
        return RunResult(self.recipe.run_dir, 0, False, None, None, None, None, dry_run_loss=float(loss.detach()))

    def _batches(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        loader = self.parts.train_loader
        skip = start_step * self.recipe.train.grad_accum
        if skip:
            loader = self.accelerator.skip_first_batches(loader, skip)
            self._loaders.append(loader)  # its persistent workers are stopped with the others
        return iter(loader)

    def _train(self, state: RunState, files: dict[str, str], resumed: tuple[int, Path] | None) -> RunResult:
        recipe, accelerator, parts = self.recipe, self.accelerator, self.parts
        train, run_dir = recipe.train, recipe.run_dir
        root = checkpointing.checkpoint_root(run_dir)
        model, optimizer, scheduler = parts.model, parts.optimizer, parts.scheduler
        evaluator = parts.evaluator
        last_saved: Path | None = resumed[1] if resumed else None

        def save(step: int) -> Path:
            broken = _first_nonfinite(parts.student)
            if broken is not None:
                raise TrainingDiverged(f"the student's weights are not finite at step {step} ({broken} holds NaN "
                                       f"or Inf); stopped without saving. {_last_good(last_saved)}. {_ADVICE}")
            payload = {**dataclasses.asdict(state), "step": step, "file_sha256": files,
                       "num_processes": accelerator.num_processes}
            return checkpointing.save_checkpoint(accelerator, root, step, payload, recipe_to_yaml(recipe),
                                                 train.keep_checkpoints)

        def evaluate(step: int) -> None:
            model.eval()
            scores = evaluator.evaluate(parts.student)
            model.train()
            if scores.nonfinite:
                raise TrainingDiverged(
                    f"step {step}: the student's output is not finite (NaN or Inf) on {scores.nonfinite} of "
                    f"{scores.images} validation images; stopped without exporting it. {_last_good(last_saved)}. "
                    f"{_ADVICE}")
            state.history.append({"step": step, **scores.to_json()})
            accelerator.log(scores.log_values(), step=step)
            best = Scores.from_json(state.best) if state.best else None
            if best is None or scores.selection_key(self.select) > best.selection_key(self.select):
                state.best, state.best_step = scores.to_json(), step
                if accelerator.is_main_process:
                    self.exporter(parts.student, run_dir / STUDENT_FILE)
            self.say(f"step {step}: {_describe_scores(scores)}"
                     f"{'  (best so far, exported)' if state.best_step == step else ''}")

        if resumed is None:
            teacher_scores = evaluator.evaluate(None)
            state.teacher_scores = teacher_scores.to_json()
            self.say(f"teacher: {_describe_scores(teacher_scores)}")
            evaluate(0)
            state.converted_scores = {k: v for k, v in state.history[-1].items() if k != "step"}

        progress = _progress_bar(train.steps, state.step, enabled=self.progress and accelerator.is_main_process)
        stopped_by = None
        step = state.step
        batches = self._batches(step)
        window_seconds, window_samples = 0.0, 0
        with StopRequest(self.say) as stop, progress:
            while step < train.steps:
                sums: dict[str, float] = {}
                lr = optimizer.param_groups[0]["lr"]
                started = time.perf_counter()
                for _ in range(train.grad_accum):
                    batch = next(batches)
                    with accelerator.accumulate(model):
                        loss, terms = self._losses(batch)
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and train.max_grad_norm is not None:
                            accelerator.clip_grad_norm_(model.parameters(), train.max_grad_norm)
                        _optimizer_step(optimizer, step + 1, last_saved)
                        scheduler.step()
                        optimizer.zero_grad()
                    for key, value in {"loss": float(loss.detach()), **terms}.items():
                        sums[key] = sums.get(key, 0.0) + value / train.grad_accum
                    window_samples += batch["input"].shape[0] * accelerator.num_processes
                window_seconds += time.perf_counter() - started
                step += 1
                state.step = step
                keys = sorted(sums)
                shared = accelerator.reduce(torch.tensor([sums[k] for k in keys] + [float(stop.requested)],
                                                         dtype=torch.float64, device=accelerator.device), "sum")
                means = (float(v) / accelerator.num_processes for v in shared[:-1].tolist())
                values = dict(zip(keys, means, strict=True))
                if not math.isfinite(values["loss"]):
                    raise TrainingDiverged(f"loss is {values['loss']} at step {step}; stopped. "
                                           f"{_last_good(last_saved)}")
                if step % 10 == 0 or step == train.steps:  # training throughput, evaluation excluded
                    values["samples_per_s"] = window_samples / max(window_seconds, 1e-9)
                    window_seconds, window_samples = 0.0, 0
                accelerator.log({**values, "lr": lr}, step=step)
                progress.update(1)
                progress.set_postfix(loss=f"{values['loss']:.4g}", lr=f"{lr:.3g}", refresh=False)

                if step % recipe.eval.every == 0 or step == train.steps:
                    evaluate(step)
                stop_now = shared[-1].item() > 0 or (self.stop_at is not None and step >= self.stop_at)
                if step % train.checkpoint_every == 0 or step == train.steps or stop_now:
                    last_saved = save(step)
                if stop_now and step < train.steps:
                    stopped_by = "signal" if shared[-1].item() > 0 else "stop_at"
                    break
        if stopped_by is not None:
            self.say(f"stopped at step {step}; checkpoint {last_saved}. Rerun the same command to continue.")
            return RunResult(run_dir, step, False, stopped_by, state.best_step,
                             Scores.from_json(state.best) if state.best else None, None)
        table = self._final_table(state)
        self.say(table)
        return RunResult(run_dir, step, True, None, state.best_step, Scores.from_json(state.best), table)

    # -- the end --------------------------------------------------------------------------------
    def _final_table(self, state: RunState) -> str:
        recipe, parts, accelerator = self.recipe, self.parts, self.accelerator
        height, width = recipe.eval.input_size
        rows = []
        for name, model, scores, size in (
            ("teacher", parts.teacher, state.teacher_scores, Path(recipe.teacher).stat().st_size),
            ("converted (before distillation)", parts.student, state.converted_scores, None),
            (f"distilled (step {state.best_step})", parts.student, state.best,
             (recipe.run_dir / STUDENT_FILE).stat().st_size if (recipe.run_dir / STUDENT_FILE).exists() else None),
        ):
            cost = _costs(model, height, width)
            rows.append(TableRow(name, cost[0], cost[1], cost[2], size, Scores.from_json(scores),
                                 is_teacher=name == "teacher"))
        rows[1] = dataclasses.replace(rows[1], file_bytes=rows[2].file_bytes)
        reference = "GT" if rows[0].scores.reference(self.select) == "gt" else "teacher"
        notes = [f"Validation: {rows[0].scores.images} images; best student by {self.select.upper()} vs "
                 f"{reference}, exported to {recipe.run_dir / STUDENT_FILE}."]
        markdown = None
        if accelerator.is_main_process:
            markdown = write_table(recipe.run_dir, rows, metrics=self.metrics, input_size=(height, width),
                                   notes=notes,
                                   extra={"steps": recipe.train.steps, "best_step": state.best_step,
                                          "history": state.history})
        return markdown or ""


def _load_state(accelerator, folder: Path) -> None:
    """`accelerator.load_state`, with any failure of a file the checks let through (a damaged pickle
    inside a whole archive) as the one-line damaged-checkpoint refusal."""
    try:
        accelerator.load_state(str(folder))
    except GlmhaError:
        raise
    except Exception as error:  # torch.load and safetensors raise many types
        first = str(error).splitlines()[0] if str(error) else "no details"
        raise checkpointing.damaged(folder, f"cannot be loaded ({type(error).__name__}: {first})") from None


def _optimizer_step(optimizer, step: int, last_saved: Path | None) -> None:
    """`optimizer.step()`; an update too large for float32 (PyTorch refuses to convert the step size,
    as with train.lr 1e39) stops the run like a diverged loss."""
    try:
        optimizer.step()
    except RuntimeError as error:
        if "without overflow" not in str(error):
            raise
        lr = optimizer.param_groups[0]["lr"]
        raise TrainingDiverged(f"the optimizer's update at step {step} overflows float32 (learning rate {lr:g}); "
                               f"stopped. {_last_good(last_saved)}. Lower train.lr") from None


def _first_nonfinite(model: torch.nn.Module) -> str | None:
    """The name of the first floating-point tensor of `model` holding NaN or Inf, if any."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _last_good(last_saved: Path | None) -> str:
    return f"Last good checkpoint: {last_saved if last_saved else 'none (no checkpoint was written yet)'}"


def _reset_single_process_state() -> None:
    """Accelerate keeps its state (device, precision) in process-wide singletons. A launched process
    runs one recipe, but Python users and tests may run several recipes in one process, each with its
    own precision, so outside a process group the previous run's state is dropped."""
    from accelerate.state import AcceleratorState, GradientState

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _costs(model: RestorationModel, height: int, width: int) -> tuple[int, int, int]:
    report = describe(model, height, width)
    return report.params, report.macs_linear, report.macs_total


def _describe_scores(scores: Scores) -> str:
    parts = []
    for reference in ("gt", "teacher"):
        shown = []
        for metric, unit in (("psnr", " dB"), ("ssim", ""), ("mrae", ""), ("sam", " deg")):
            value = scores.values.get(f"{metric}_{reference}")
            if value is not None:
                shown.append(f"{metric.upper()} {value:.4g}{unit}" if metric != "psnr" else f"PSNR {value:.2f} dB")
        if shown:
            parts.append(", ".join(shown) + (" vs GT" if reference == "gt" else " vs teacher"))
    count = scores.images
    return "; ".join(parts) + f" ({count} image{'s' if count != 1 else ''})"


def _scalar_config(recipe: dict[str, Any]) -> dict[str, Any]:
    from glmha.distill.recipe import flatten

    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(recipe).items()}


def _progress_bar(total: int, initial: int, *, enabled: bool):
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr,
                mininterval=0.5, smoothing=0.1)


class _NoProgress(contextlib.AbstractContextManager):
    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, _n: int) -> None:
        pass

    def set_postfix(self, **_kwargs: Any) -> None:
        pass
