"""Training and validation data for distillation: image folders or synthetic degradations.

Why every sample is a pure function of (seed, sample index): a run that resumes at step N, or runs
with a different number of DataLoader workers or processes, must see exactly the patches the
uninterrupted run would have seen. So nothing here keeps a random stream between items; each item
seeds its own generator from a stable 64-bit hash of (seed, index), and the image order of each
pass over the data is a permutation seeded from (seed, pass).

Sources (one of four forms, validated by the recipe parser): {inputs, targets} (paired folders),
{inputs} (degraded images only: pure teacher distillation), {clean, degrade} (a clean folder
degraded on the fly) and {samples, degrade} (the offline scikit-image photos, degraded on the fly).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from os import PathLike
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from glmha.data.degrade import DegradeSpec, degrade, margin, seeded_generator
from glmha.data.image_folder import check_image, decode_image, find_images, image_size
from glmha.errors import GlmhaError

IMAGE_CHANNELS = (1, 3)
_LISTED = 5  # unmatched file names shown per side in a pairing error


class SourceLike(Protocol):
    """What `open_source` needs from a recipe's source section (glmha.distill.recipe.SourceSection)."""

    @property
    def inputs(self) -> str | PathLike[str] | None: ...

    @property
    def targets(self) -> str | PathLike[str] | None: ...

    @property
    def clean(self) -> str | PathLike[str] | None: ...

    @property
    def samples(self) -> str | None: ...

    @property
    def degrade(self) -> Any: ...


def stable_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of ints/strings, identical in every process and Python version
    (unlike hash(), which is salted per process for strings)."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class ImageSource:
    """An indexed set of images: names and (H, W) sizes known up front (headers only), pixels read on
    demand as float32 (C, H, W) in [0, 1].

    Synthetic sources (clean folder or sample photos plus a degradation) return (degrade(clean),
    clean); folder sources return (input, target) or (input, None) when there is no ground truth.
    Picklable, so DataLoader workers can take a copy.
    """

    def __init__(self, *, where: str, channels: int, names: list[str], sizes: list[tuple[int, int]],
                 inputs: list[Path] | None = None, targets: list[Path] | None = None,
                 clean: list[Path] | None = None, cached: list[torch.Tensor] | None = None,
                 degradation: DegradeSpec | None = None) -> None:
        self.where = where
        self.channels = channels
        self.names = names
        self.sizes = sizes
        self.degradation = degradation
        self._inputs = inputs
        self._targets = targets
        self._clean = clean
        self._cached = cached  # (C, H, W) uint8 per sample photo

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        kind = "synthetic" if self.synthetic else ("paired" if self.has_target else "inputs only")
        return f"ImageSource({self.where}: {len(self)} images, {kind})"

    @property
    def has_target(self) -> bool:
        return self.synthetic or self._targets is not None

    @property
    def synthetic(self) -> bool:
        """Inputs are made from clean images on the fly (so crops can be degraded after cropping)."""
        return self.degradation is not None

    @property
    def margin(self) -> int:
        """Context pixels the degradation needs around a crop (0 for folder sources)."""
        return margin(self.degradation) if self.degradation is not None else 0

    def read_clean(self, index: int, box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """The clean image (C, H, W) of a synthetic source, before degradation; `box` (top, bottom,
        left, right, ends excluded) crops it first, which for the cached photos skips converting
        the whole image to float."""
        y0, y1, x0, x1 = box if box is not None else (0, self.sizes[index][0], 0, self.sizes[index][1])
        if self._cached is not None:
            return self._cached[index][:, y0:y1, x0:x1].float().div_(255.0)
        if self._clean is None:
            raise TypeError(f"{self.where}: read_clean is only for synthetic sources")
        image = self._decode(self._clean[index], "clean")
        if tuple(image.shape[-2:]) != self.sizes[index]:
            (height, width), (was_h, was_w) = image.shape[-2:], self.sizes[index]
            raise GlmhaError(f"{self.where}.clean: image {self._clean[index]} is {width}x{height} pixels, "
                             f"but was {was_w}x{was_h} when the data was indexed (changed during the run?)")
        return image[:, y0:y1, x0:x1]

    def read(self, index: int,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(input, target or None), float32 (C, H, W); synthetic sources draw from `generator`."""
        if self.degradation is not None:
            if generator is None:
                raise TypeError(f"{self.where}: a synthetic source needs a generator to degrade with")
            clean = self.read_clean(index)
            return degrade(self.degradation, clean, generator), clean
        assert self._inputs is not None
        image = self._decode(self._inputs[index], "inputs")
        if self._targets is None:
            return image, None
        target = self._decode(self._targets[index], "targets")
        if image.shape != target.shape:
            raise GlmhaError(_size_mismatch(self.where, self._inputs[index], tuple(image.shape[-2:]),
                                            self._targets[index], tuple(target.shape[-2:])))
        return image, target

    def labelled_files(self) -> list[tuple[Path, str]]:
        """Every file this source reads, with the label its errors start with (as `read` words them)."""
        keyed = (("inputs", self._inputs), ("targets", self._targets), ("clean", self._clean))
        return [(path, f"{self.where}.{key}: image {path}") for key, paths in keyed for path in paths or ()]

    def verify(self, threads: int | None = None) -> None:
        """Decode every file once, so a damaged one stops the run before it starts (a truncated file
        has an intact header, which is all `open_source` reads). Pillow decodes outside the GIL, so a
        few threads share the work; the first bad file (inputs before targets, each in name order) is
        reported."""
        files = self.labelled_files()
        if not files:
            return
        workers = max(1, min(len(files), threads or min(8, os.cpu_count() or 1)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            checks = [pool.submit(check_image, path, what) for path, what in files]
            try:
                for check in checks:
                    check.result()
            finally:
                for check in checks:  # after a failure, the files not started yet are not decoded
                    check.cancel()

    def _decode(self, path: Path, key: str) -> torch.Tensor:
        pixels = decode_image(path, self.channels, f"{self.where}.{key}: image {path}")  # (H, W) or (H, W, 3)
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, H, W)
        return torch.from_numpy(np.ascontiguousarray(pixels))


def _size_mismatch(where: str, input_path: Path, input_size: Sequence[int], target_path: Path,
                   target_size: Sequence[int]) -> str:
    (ih, iw), (th, tw) = input_size, target_size
    return (f"{where}: input {input_path.name} is {iw}x{ih} pixels but its target {target_path.name} "
            f"is {tw}x{th}")


def open_source(spec: SourceLike, *, channels: int, where: str) -> ImageSource:
    """Validate and index a source; reads file headers only (fast for thousands of files)."""
    if channels not in IMAGE_CHANNELS:
        raise GlmhaError(f"{where}: this model takes {channels} channels; image folders can only feed "
                         f"1- or 3-channel models")
    given = {key for key in ("inputs", "targets", "clean", "samples") if getattr(spec, key) is not None}
    degradation = spec.degrade
    if given == {"samples"} and degradation is not None:
        return _open_samples(spec.samples, degradation, channels=channels, where=where)
    if given == {"clean"} and degradation is not None:
        files = _list(spec.clean, "clean", where)
        sizes = [image_size(p, f"{where}.clean: image {p}") for p in files]
        return ImageSource(where=where, channels=channels, names=[p.name for p in files], sizes=sizes,
                           clean=files, degradation=degradation)
    if given in ({"inputs"}, {"inputs", "targets"}) and degradation is None:
        inputs = _list(spec.inputs, "inputs", where)
        targets = None
        if spec.targets is not None:
            inputs, targets = _pair(inputs, _list(spec.targets, "targets", where), where)
        sizes = [image_size(p, f"{where}.inputs: image {p}") for p in inputs]
        for input_path, target_path, size in zip(inputs, targets or (), sizes, strict=False):
            target_size = image_size(target_path, f"{where}.targets: image {target_path}")
            if target_size != size:
                raise GlmhaError(_size_mismatch(where, input_path, size, target_path, target_size))
        return ImageSource(where=where, channels=channels, names=[p.name for p in inputs], sizes=sizes,
                           inputs=inputs, targets=targets)
    keys = sorted(given | ({"degrade"} if degradation is not None else set()))
    raise GlmhaError(f"{where}: give exactly one of {{inputs, targets}}, {{inputs}}, {{clean, degrade}}, "
                     f"{{samples, degrade}} (got {', '.join(keys) or 'none'})")


def _list(folder: str | PathLike[str], key: str, where: str) -> list[Path]:
    path = Path(folder)
    return find_images(path, f"{where}.{key}: folder {path}")


def _pair(inputs: list[Path], targets: list[Path], where: str) -> tuple[list[Path], list[Path]]:
    """Match inputs to targets by full file name; files still unmatched are then matched by stem, when
    the stem is unique among them on both sides (so rain-1.jpg pairs with rain-1.png). Every file must
    be matched. Returns both lists in input-name order."""
    by_name = {p.name: p for p in targets}
    matched: dict[Path, Path] = {}
    leftover: list[Path] = []
    for path in inputs:
        target = by_name.pop(path.name, None)
        if target is None:
            leftover.append(path)
        else:
            matched[path] = target
    input_stems = Counter(p.stem for p in leftover)
    target_stems = Counter(p.stem for p in by_name.values())
    by_stem = {p.stem: p for p in by_name.values() if target_stems[p.stem] == 1}
    unmatched_inputs = []
    for path in leftover:
        target = by_stem.pop(path.stem, None) if input_stems[path.stem] == 1 else None
        if target is None:
            unmatched_inputs.append(path)
        else:
            matched[path] = target
            del by_name[target.name]
    unmatched_targets = sorted(by_name.values(), key=lambda p: p.name)
    if unmatched_inputs or unmatched_targets:
        raise GlmhaError(f"{where}: inputs and targets do not pair up by file name: "
                         f"{len(unmatched_inputs)} input(s) without a target{_some(unmatched_inputs)}, "
                         f"{len(unmatched_targets)} target(s) without an input{_some(unmatched_targets)}")
    ordered = [p for p in inputs if p in matched]
    return ordered, [matched[p] for p in ordered]


def _some(paths: list[Path]) -> str:
    """' (a.png, b.png, ... and 3 more)': the first few names of a list, for a one-line message."""
    if not paths:
        return ""
    shown = ", ".join(p.name for p in paths[:_LISTED])
    more = f" and {len(paths) - _LISTED} more" if len(paths) > _LISTED else ""
    return f" ({shown}{more})"


def _open_samples(split: str | None, degradation: DegradeSpec, *, channels: int, where: str) -> ImageSource:
    """Decode the sample photos once, kept as uint8 (4x smaller than float, cheap to pickle)."""
    from PIL import Image

    from glmha.data.sample_images import test_images, train_images

    loaders = {"train": train_images, "test": test_images}
    if split not in loaders:
        raise GlmhaError(f"{where}.samples: expected one of {', '.join(loaders)}, got {split!r}")
    names, cached = [], []
    for name, image in loaders[split]():
        pixels = image.mul(255.0).round_().to(torch.uint8)  # (3, H, W), exact: samples are 8-bit
        if channels == 1:  # Pillow's luma, exactly as a grey model reads an RGB file from a folder
            rgb = pixels.permute(1, 2, 0).numpy()  # (H, W, 3)
            grey = np.asarray(Image.fromarray(rgb, mode="RGB").convert("L"))  # (H, W)
            pixels = torch.from_numpy(grey.copy()).unsqueeze(0)  # (1, H, W)
        names.append(name)
        cached.append(pixels.contiguous())
    sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in cached]
    return ImageSource(where=where, channels=channels, names=names, sizes=sizes, cached=cached,
                       degradation=degradation)


def check_patch_size(source: ImageSource, patch_size: int) -> None:
    """Every image must hold a whole patch (the degradation margin is clamped at borders instead)."""
    if patch_size < 1:
        raise GlmhaError(f"{source.where}: patch_size must be at least 1, got {patch_size}")
    for name, (height, width) in zip(source.names, source.sizes, strict=True):
        if height < patch_size or width < patch_size:
            raise GlmhaError(f"{source.where}: image {name} is {width}x{height} pixels, smaller than "
                             f"patch_size {patch_size}")


# Margins travel with a crop through flips as (top, bottom, left, right) context pixels.
Margins = tuple[int, int, int, int]


def _transform(images: list[torch.Tensor], margins: Margins,
               flags: Sequence[bool]) -> tuple[list[torch.Tensor], Margins]:
    """Apply the same horizontal flip, vertical flip and transpose to every (C, H, W) image.

    The three flags pick one of the 8 symmetries of the square (the 4 rotations by 90 degrees and their
    mirror images), each with probability 1/8 when the flags are fair coins.
    """
    top, bottom, left, right = margins
    if flags[0]:
        images = [x.flip(-1) for x in images]
        left, right = right, left
    if flags[1]:
        images = [x.flip(-2) for x in images]
        top, bottom = bottom, top
    if flags[2]:
        images = [x.transpose(-2, -1) for x in images]  # (C, H, W) -> (C, W, H)
        top, bottom, left, right = left, right, top, bottom
    return [x.contiguous() for x in images], (top, bottom, left, right)


def _cut(image: torch.Tensor, margins: Margins) -> torch.Tensor:
    top, bottom, left, right = margins
    height, width = image.shape[-2:]
    return image[:, top:height - bottom, left:width - right].contiguous()


class EpochOrder:
    """Which image training item i is cut from: every image once per pass, in an order drawn from
    (seed, pass), so the answer depends on i alone (exact resumption, any number of workers)."""

    def __init__(self, count: int, seed: int) -> None:
        self.count = count
        self.seed = seed
        self._permutation: tuple[int, torch.Tensor] | None = None  # (pass, order): the last one used

    def __call__(self, i: int) -> int:
        epoch, position = divmod(i, self.count)
        if self._permutation is None or self._permutation[0] != epoch:
            generator = seeded_generator(stable_seed("glmha.distill.epoch", self.seed, epoch))
            self._permutation = (epoch, torch.randperm(self.count, generator=generator))
        return int(self._permutation[1][position])


class TrainPatches(Dataset):
    """Random training patches; item i is a pure function of (seed, i), whatever reads it and when.

    `length` is the number of samples the whole run draws (steps x batch size, say): pass e = i // N
    over the N images visits them in a permutation seeded by (seed, e), so every image is used once
    per pass. The crop, the flips and the degradation are drawn from a generator seeded by (seed, i).
    Synthetic sources are degraded after cropping (patch plus the degradation's margin, clamped at
    the image border) and flipping, which is cheaper than degrading whole images and, for blur,
    identical to it; rain is drawn in the final orientation, so its angle range holds as written.
    """

    def __init__(self, source: ImageSource, *, patch_size: int, length: int, seed: int,
                 flips: bool = True) -> None:
        if len(source) == 0:
            raise GlmhaError(f"{source.where}: no images")
        if length < 1:
            raise GlmhaError(f"{source.where}: the number of training samples must be at least 1, got {length}")
        check_patch_size(source, patch_size)
        self.source = source
        self.patch_size = patch_size
        self.length = length
        self.seed = seed
        self.flips = flips
        self.image_index = EpochOrder(len(source), seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = int(i)
        if not 0 <= i < self.length:
            raise IndexError(f"sample {i} out of range 0..{self.length - 1}")
        index = self.image_index(i)
        generator = seeded_generator(stable_seed("glmha.distill.patch", self.seed, i))
        source, size = self.source, self.patch_size
        images: list[torch.Tensor] = []
        if source.synthetic:
            height, width = source.sizes[index]
        else:
            first, target = source.read(index)
            images = [first] if target is None else [first, target]
            height, width = first.shape[-2:]
        if height < size or width < size:  # the file changed since it was indexed
            raise GlmhaError(f"{source.where}: image {source.names[index]} is {width}x{height} pixels, "
                             f"smaller than patch_size {size}")
        top = int(torch.randint(0, height - size + 1, (), generator=generator))
        left = int(torch.randint(0, width - size + 1, (), generator=generator))
        extra = source.margin
        margins = (min(extra, top), min(extra, height - top - size),
                   min(extra, left), min(extra, width - left - size))
        y0, x0 = top - margins[0], left - margins[2]
        y1, x1 = top + size + margins[1], left + size + margins[3]
        if source.synthetic:
            images = [source.read_clean(index, (y0, y1, x0, x1))]
        else:
            images = [x[:, y0:y1, x0:x1] for x in images]
        if self.flips:
            flags = (torch.rand(3, generator=generator) < 0.5).tolist()
            images, margins = _transform(images, margins, flags)
        if source.synthetic:
            assert source.degradation is not None
            clean = images[0]
            degraded = degrade(source.degradation, clean, generator)
            return {"input": _cut(degraded, margins), "target": _cut(clean, margins)}
        out = {"input": _cut(images[0], margins)}
        if len(images) == 2:
            out["target"] = _cut(images[1], margins)
        return out


class ValImages(Dataset):
    """Whole validation images; synthetic degradations are seeded by (seed, i), so every evaluation of
    a run scores exactly the same inputs. `limit` keeps the first N images (in name order); `crop`
    centre-crops each to at most crop x crop pixels (after degrading, so the noise is the same as on
    the whole image), for quick checks on large validation images."""

    def __init__(self, source: ImageSource, *, seed: int = 0, limit: int | None = None,
                 crop: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise GlmhaError(f"{source.where}: the validation image limit must be at least 1, got {limit}")
        if crop is not None and crop < 1:
            raise GlmhaError(f"{source.where}: the validation crop must be at least 1, got {crop}")
        self.source = source
        self.seed = seed
        self.crop = crop
        self.count = len(source) if limit is None else min(limit, len(source))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = int(i)
        if not 0 <= i < self.count:
            raise IndexError(f"validation image {i} out of range 0..{self.count - 1}")
        generator = seeded_generator(stable_seed("glmha.distill.val", self.seed, i))
        image, target = self.source.read(i, generator)
        if self.crop is not None:
            image, target = (None if x is None else centre_crop(x, self.crop) for x in (image, target))
        out = {"input": image, "index": torch.tensor(i)}
        if target is not None:
            out["target"] = target
        return out


def centre_crop(image: torch.Tensor, side: int) -> torch.Tensor:
    """The central min(H, side) x min(W, side) pixels of a (C, H, W) image."""
    height, width = image.shape[-2:]
    crop_h, crop_w = min(height, side), min(width, side)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return image[..., top:top + crop_h, left:left + crop_w]


# -- DataLoader workers ---------------------------------------------------------------------------------

_WORKER_HEADER = re.compile(r"Caught \w+ in DataLoader worker process \d+\.?")


def unwrap_worker_error(error: GlmhaError) -> GlmhaError:
    """The user's one-line error from a `GlmhaError` that a DataLoader worker raised.

    PyTorch re-raises a worker's exception in the main process as the same class, built from a
    message "Caught X in DataLoader worker process N." plus the worker's whole traceback, whose last
    line is "module.X: <our message>". That last line is the message the worker raised, so it is
    recovered from there; any other error is returned unchanged."""
    text = str(error)
    first, _, rest = text.partition("\n")
    if not _WORKER_HEADER.fullmatch(first.strip()) or not rest:
        return error
    last = rest.rstrip("\n").rsplit("\n", 1)[-1]
    kind = type(error)
    for prefix in (f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__qualname__}: "):
        if last.startswith(prefix):
            return kind(last[len(prefix):])
    return error


def stop_workers(loader: object) -> None:
    """Stop the worker processes of a DataLoader with persistent workers now, rather than leave them to
    the interpreter's exit, which terminates them: each terminated worker leaves its `pymp-*` folder
    in the temp directory. Accelerate's wrapper keeps the PyTorch DataLoader in `base_dataloader`;
    `_shutdown_workers` is what PyTorch's iterator itself calls when it is deleted."""
    base = getattr(loader, "base_dataloader", loader)
    iterator = getattr(base, "_iterator", None)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if callable(shutdown):
        shutdown()
    if iterator is not None:
        base._iterator = None


UNIX_SOCKET_PATH_MAX = 107  # bytes of an AF_UNIX socket path (sun_path is 108 with its NUL)
_WORKER_SOCKET_SUFFIX = len("/pymp-xxxxxxxx/listener-xxxxxxxx")


def check_worker_temp_dir(workers: int) -> None:
    """Refuse, in one line, a temp directory whose path is too long for DataLoader workers: they hand tensors
    to this process through a Unix socket made under it, and a path over the socket limit fails inside the
    worker's queue thread, which drops the batch, so the run would wait for it forever."""
    if workers == 0:
        return
    temp = tempfile.gettempdir()
    if len(os.fsencode(temp)) + _WORKER_SOCKET_SUFFIX > UNIX_SOCKET_PATH_MAX:
        raise GlmhaError(f"data.workers: {workers} worker processes need a temp directory path of at most "
                          f"{UNIX_SOCKET_PATH_MAX - _WORKER_SOCKET_SUFFIX} bytes for their sockets, {temp} has "
                          f"{len(os.fsencode(temp))}; set TMPDIR to a shorter directory, or data.workers: 0")
