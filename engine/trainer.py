"""Training runs: ``sparsemat train`` on a dataset with the published recipe, and ``sparsemat
finetune`` on a shot's keyframes (docs/TRAINING.md). No argparse here: a host's "train on
keyframes" action calls ``finetune`` as the command does.

A run's checkpoint is the published layout (``--checkpoint`` and the published code load it)
with the run's record beside it: the step, the epoch, the optimizer's state and the recipe, so
``train --resume`` continues the step count and the learning-rate schedule where it stopped.
Every write replaces the file atomically; an interrupted run keeps its last checkpoint.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .imageio import ImageReadError, read_alpha, read_rgb
from .losses import validation_band
from .matting import Matter
from .metrics import CONVENTIONS, connectivity_error, gradient_error, mse, sad
from .model import CheckpointError, SparseMat
from .model.checkpoint import load_state, published_state, read_published, save_published
from .recipe import Recipe
from .training import (MIN_BAND_PIXELS, Patch, crop, freeze_prior, patch_in_view, refiner_optimiser,
                       set_learning_rate, train_step, trainable, whole_frame)
from .training_data import Dataset, DatasetError, band_crop, load_example, published_patch
from .validation import FrameError

DEFAULT_STEPS = 300  # a fine-tune's, when neither steps nor minutes are given
ERRORS = {"sad": sad, "mse": mse, "grad": gradient_error, "conn": connectivity_error}


class TrainingError(ValueError):
    """A run that cannot start or go on; the message says why."""


def matte_errors(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """SAD, MSE, gradient and connectivity errors, scaled as ``sparsemat eval`` reports them."""
    scaling = CONVENTIONS["ours"].scaling
    return {name: function(pred, truth, mask) * scaling[name] for name, function in ERRORS.items()}


def describe_errors(errors: dict[str, float]) -> str:
    labels = CONVENTIONS["ours"].labels
    return ", ".join(f"{labels[name]} {value:.4f}" for name, value in errors.items())


def _load(path: str, device: torch.device) -> tuple[SparseMat, dict, dict | None]:
    """The model from ``path`` ready to train on ``device``, the file's published state (the base
    of what is written back) and its training record, from one read of the file."""
    try:
        state, record = read_published(path)
        model = SparseMat()
        load_state(model, state, path)
    except CheckpointError as exc:
        raise TrainingError(str(exc)) from exc
    freeze_prior(model)
    return model.to(device), state, record


def _tensor(array: np.ndarray | None, device: torch.device) -> torch.Tensor | None:
    return None if array is None else torch.from_numpy(np.ascontiguousarray(array)).to(device)


def _matte(model: SparseMat, device: torch.device, frame: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
    """The frame matted as ``sparsemat matte`` would (evaluation mode), the model left training."""
    try:
        alpha, _, _ = Matter(model, device=device).matte(torch.from_numpy(frame), prior=_tensor(prior, torch.device("cpu")))
        return alpha.cpu().numpy()
    finally:
        freeze_prior(model)


@dataclass
class TrainRun:
    """Where a ``train`` run stands: saved in its checkpoint's record."""

    recipe: Recipe
    seed: int
    dataset: str
    colourspace: str | None
    step: int = 0
    epoch: int = 0  # the epoch under way
    step_in_epoch: int = 0  # steps of it done
    losses: list = field(default_factory=list)  # the epoch under way's, a step each
    history: list = field(default_factory=list)  # one entry per finished epoch

    def record(self, optimiser: torch.optim.Optimizer) -> dict:
        return {"kind": "train", "recipe": asdict(self.recipe), "seed": self.seed, "dataset": self.dataset,
                "colourspace": self.colourspace, "step": self.step, "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch, "losses": self.losses, "history": self.history,
                "optimizer": optimiser.state_dict()}


def train(dataset: Dataset, out: str, recipe_values: dict, base: str | None = None, resume: bool = False,
          validation: Dataset | None = None, device: torch.device = torch.device("cpu"), seed: int | None = None,
          colourspace: str | None = None, max_steps: int | None = None, save_every: int = 0,
          progress: bool = True, log: Callable[[str], None] = print) -> TrainRun:
    """Train the refiner on ``dataset`` from ``base`` (a published-format checkpoint with a trained
    prior network), or, with ``resume``, from ``out``'s own state, with the recipe's values
    (``Recipe``'s fields) from ``recipe_values``, else the resumed run's, else the published ones.
    Each epoch's batches are in an order drawn from (seed, epoch) and each patch from (seed,
    epoch, sample), so a resumed run draws what the uninterrupted one would have: it refuses
    another seed, batch, dataset or colourspace. ``max_steps`` stops early (a trial run); the
    checkpoint is written at the end of every epoch, every ``save_every`` steps, and on stopping.
    An interruption (Ctrl-C) waits for the step under way, so the checkpoint is always a whole step's."""
    source = os.path.abspath(dataset.source)
    if resume:
        model, state, record = _load(out, device)
        if record is None or record.get("kind") != "train":
            raise TrainingError(f"{out} holds no sparsemat train run to resume")
        stored = dict(record["recipe"], betas=tuple(record["recipe"]["betas"]),
                      patch_crops=tuple(record["recipe"]["patch_crops"]))
        recipe = Recipe(**{**stored, **recipe_values})
        for what, given, kept in (("seed", record["seed"] if seed is None else seed, record["seed"]),
                                  ("batch", recipe.batch, stored["batch"]), ("dataset", source, record["dataset"]),
                                  ("colourspace", colourspace, record["colourspace"])):
            if given != kept:
                raise TrainingError(f"the run in {out} has {what} {kept}, not {given}: its order and patches "
                                    f"cannot change mid-run")
        run = TrainRun(recipe, record["seed"], source, colourspace, record["step"], record["epoch"],
                       record["step_in_epoch"], list(record["losses"]), list(record["history"]))
    else:
        if base is None:
            raise TrainingError("give --checkpoint BASE: the refiner trains on a pretrained, frozen prior network")
        model, state, _ = _load(base, device)
        recipe = Recipe(**recipe_values)
        run = TrainRun(recipe, seed or 0, source, colourspace)
    if recipe.rescale < recipe.crop:
        raise TrainingError(f"--rescale ({recipe.rescale}) must be at least --crop ({recipe.crop}): the prior "
                            f"network's view is a crop of the rescaled image")
    optimiser = refiner_optimiser(model, recipe.learning_rate, recipe.betas)
    if resume:
        optimiser.load_state_dict(record["optimizer"])
        for group in optimiser.param_groups:  # the state keeps the old betas; the recipe's stand
            group["betas"] = recipe.betas
    if run.epoch >= recipe.epochs:
        log(f"sparsemat: {out} has finished its {recipe.epochs} epochs ({run.step} steps): nothing to do")
        return run
    steps_per_epoch = math.ceil(len(dataset) / recipe.batch)

    def save() -> None:
        save_published(out, published_state(model, state), run.record(optimiser))

    bar = tqdm(total=recipe.epochs * steps_per_epoch, initial=run.step, unit="step", disable=not progress or None,
               file=sys.stderr, dynamic_ncols=True)
    started, done_here, first_step = time.perf_counter(), 0, run.step
    try:
        while run.epoch < recipe.epochs:
            set_learning_rate(optimiser, recipe.learning_rate_at(run.epoch))
            order = np.random.default_rng([run.seed, run.epoch]).permutation(len(dataset))
            while run.step_in_epoch < steps_per_epoch:
                if max_steps is not None and run.step >= max_steps:
                    return run
                batch = order[run.step_in_epoch * recipe.batch:(run.step_in_epoch + 1) * recipe.batch]
                patches = [_dataset_patch(model, dataset, int(index), run, device) for index in batch]
                patches = [patch for patch in patches if patch is not None]
                with deferred_interrupt():  # the step and its count together, or neither
                    loss = train_step(model, optimiser, patches) if patches else float("nan")
                    run.losses.append(loss)
                    run.step += 1
                    run.step_in_epoch += 1
                done_here += len(patches)
                bar.update(1)
                bar.set_postfix(epoch=run.epoch + 1, loss=f"{loss:.4f}", lr=f"{optimiser.param_groups[0]['lr']:.1e}",
                                patches_per_s=f"{done_here / (time.perf_counter() - started):.2f}")
                if save_every and run.step % save_every == 0:
                    save()
            trained = [loss for loss in run.losses if not math.isnan(loss)]
            entry = {"epoch": run.epoch + 1, "step": run.step,
                     "loss": sum(trained) / len(trained) if trained else None}
            loss_text = "-" if entry["loss"] is None else f"{entry['loss']:.4f}"
            summary = f"sparsemat: epoch {run.epoch + 1}: mean loss {loss_text}"
            if validation is not None:
                entry["validation"] = validate(model, validation, device, colourspace)
                summary += f"; validation on {len(validation)} image(s): {describe_errors(entry['validation'])}"
            log(summary)
            run.history.append(entry)
            run.epoch, run.step_in_epoch, run.losses = run.epoch + 1, 0, []
            save()
        return run
    finally:
        bar.close()
        if run.epoch < recipe.epochs and run.step > first_step:  # stopped early: keep what was done
            save()


@contextmanager
def deferred_interrupt():
    """Hold Ctrl-C until the block ends, then raise it: a step is applied whole or not at all. Only
    the main thread receives signals; elsewhere (a host's worker thread) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


def _dataset_patch(model: SparseMat, dataset: Dataset, index: int, run: TrainRun, device: torch.device) -> Patch | None:
    """Sample ``index``'s patch of this epoch; None when its band is (almost) empty: an alpha with
    no soft edge there has nothing to teach."""
    rng = np.random.default_rng([run.seed, run.epoch, index])
    arrays = published_patch(load_example(dataset, index, rng, run.colourspace), run.recipe, rng)
    patch = patch_in_view(model, _tensor(arrays.view, device), _tensor(arrays.image, device),
                          _tensor(arrays.alpha, device), _tensor(arrays.band, device), arrays.box,
                          _tensor(arrays.foreground, device), _tensor(arrays.background, device))
    return patch if trainable(patch) else None


def validate(model: SparseMat, dataset: Dataset, device: torch.device, colourspace: str | None = None) -> dict:
    """The mean errors of the model's mattes of ``dataset``'s images, on each one's validation band."""
    totals: dict[str, float] = {}
    for index in range(len(dataset)):
        example = load_example(dataset, index, np.random.default_rng(index), colourspace)
        try:
            matte = _matte(model, device, example.image)
        except FrameError as exc:
            raise TrainingError(f"validation sample {index + 1} of {dataset.source}: {exc}") from exc
        errors = matte_errors(matte, example.alpha, validation_band(example.alpha) > 0)
        for name, value in errors.items():
            totals[name] = totals.get(name, 0.0) + value / len(dataset)
    return totals


@dataclass
class FinetuneReport:
    steps: int = 0
    seconds: float = 0.0
    interrupted: bool = False  # by Ctrl-C: the steps done are written, the held-out frames not scored after
    held_out_before: dict[int, dict] = field(default_factory=dict)
    held_out_after: dict[int, dict] = field(default_factory=dict)
    losses: list = field(default_factory=list)


@dataclass(frozen=True)
class Keyframe:
    """A frame of the shot with an artist's matte: its plate, matte and, when given, coarse prior."""

    frame: int
    plate: str
    alpha: str
    prior: str | None = None

    def read(self, colourspace: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        try:
            plate = read_rgb(self.plate, colourspace)
            alpha = np.clip(read_alpha(self.alpha), 0.0, 1.0)
            prior = None if self.prior is None else read_alpha(self.prior)
        except ImageReadError as exc:
            raise TrainingError(f"keyframe {self.frame}: {exc}") from exc
        if alpha.shape != plate.shape[:2]:
            raise TrainingError(f"keyframe {self.frame}: the matte {self.alpha} is {alpha.shape[1]}x{alpha.shape[0]}, "
                                f"the plate {self.plate} {plate.shape[1]}x{plate.shape[0]}: they must be the same size")
        return plate, alpha, prior


def finetune(keyframes: list[Keyframe], base: str, out: str, held_out: list[Keyframe] = (), steps: int | None = None,
             minutes: float | None = None, crop_size: int = 512, batch: int = 2, learning_rate: float = 1e-4,
             seed: int = 0, device: torch.device = torch.device("cpu"), colourspace: str | None = None,
             progress: bool = True) -> FinetuneReport:
    """Adapt ``base``'s refiner to a shot: each step trains on ``batch`` crops of ``crop_size``
    pixels, each centred in the band inference refines on one keyframe (drawn at random), with
    the prior inference would use (the given prior, else the network's), until ``steps`` or
    ``minutes`` runs out (``DEFAULT_STEPS`` when neither is given). The held-out keyframes are
    matted before and after; ``out`` gets the adapted model in the published layout, also when
    Ctrl-C stops the steps (``report.interrupted``; the step under way is finished first)."""
    if not keyframes:
        raise TrainingError("give at least one keyframe (--keyframe N=ALPHA) to fine-tune on")
    if crop_size ** 2 < MIN_BAND_PIXELS:
        raise TrainingError(f"crops of {crop_size} px hold fewer than {MIN_BAND_PIXELS} pixels: nothing would train")
    if steps is None and minutes is None:
        steps = DEFAULT_STEPS
    model, state, _ = _load(base, device)
    rng = np.random.default_rng(seed)
    report = FinetuneReport()
    for key in held_out:
        report.held_out_before[key.frame] = _held_out_errors(model, device, key, colourspace)
    frames, bands = [], []
    for key in keyframes:
        plate, alpha, prior = key.read(colourspace)
        try:
            frame = whole_frame(model, _tensor(plate, device), _tensor(alpha, device), _tensor(prior, device))
        except FrameError as exc:
            raise TrainingError(f"keyframe {key.frame}: {exc}") from exc
        band = np.nonzero(frame.band.cpu().numpy())
        if len(band[0]) < MIN_BAND_PIXELS:
            raise TrainingError(f"keyframe {key.frame}: its prior's uncertain band has {len(band[0])} pixels, too "
                                f"few to train on (inference refines only there)")
        frames.append(frame)
        bands.append(band)
    optimiser = refiner_optimiser(model, learning_rate, (0.9, 0.999))
    deadline = None if minutes is None else time.monotonic() + minutes * 60
    started, draws = time.perf_counter(), 0
    bar = tqdm(total=steps, unit="step", disable=not progress or None, file=sys.stderr, dynamic_ncols=True)
    try:
        while (steps is None or report.steps < steps) and (deadline is None or time.monotonic() < deadline):
            patches = []
            for _ in range(batch):
                pick = int(rng.integers(len(frames)))
                top, left, size = band_crop(bands[pick], tuple(frames[pick].band.shape), crop_size, rng)
                patch = crop(frames[pick], top, left, size, flip=bool(rng.random() < 0.5))
                if trainable(patch):
                    patches.append(patch)
            draws += 1
            if not patches:
                if draws > 10 * (report.steps + 10):
                    raise TrainingError(f"almost no crop of {crop_size} px holds {MIN_BAND_PIXELS} band pixels: "
                                        f"give a larger --crop")
                continue
            with deferred_interrupt():
                report.losses.append(train_step(model, optimiser, patches))
                report.steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{report.losses[-1]:.4f}")
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        bar.close()
    report.seconds = time.perf_counter() - started
    if not report.interrupted:
        for key in held_out:
            report.held_out_after[key.frame] = _held_out_errors(model, device, key, colourspace)
    record = {"kind": "finetune", "base": os.path.abspath(base), "steps": report.steps, "seed": seed,
              "keyframes": {key.frame: key.alpha for key in keyframes}, "crop": crop_size, "batch": batch,
              "learning_rate": learning_rate, "interrupted": report.interrupted,
              "held_out_before": report.held_out_before, "held_out_after": report.held_out_after}
    save_published(out, published_state(model, state), record)
    return report


def _held_out_errors(model: SparseMat, device: torch.device, key: Keyframe, colourspace: str | None) -> dict:
    plate, alpha, prior = key.read(colourspace)
    try:
        return matte_errors(_matte(model, device, plate, prior), alpha)
    except FrameError as exc:
        raise TrainingError(f"held-out frame {key.frame}: {exc}") from exc


__all__ = ["DatasetError", "Keyframe", "Recipe", "TrainingError", "finetune", "train", "validate"]
