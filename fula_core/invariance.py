"""Invariance-aware model stitching (the ICML 2026 revision; spec: ``invariance_aware.md``).

Forward compatibility asks whether an affine stitch lets the end model g solve the task from the front
model f's features on real data. Backward compatibility asks more: the same stitch must also work on
inputs x' that f cannot tell apart from x at the stitch point, f_{<=l}(x') = f_{<=l}(x). The stitched
output on x' equals that on x, so this holds only if g treats x' like x, i.e. if g shares f's layer-l
invariances.

The method, in the order this module implements it:

1. Identically Represented Inputs (IRIs, after Nanda et al., 2022): for every training image x, start
   x' from uniform noise over the input box [0, 1] and run sign-gradient descent
       x' <- clamp(x' - step * sign(grad), 0, 1)
   on the relative Frobenius error ||f_{<=l}(x') - f_{<=l}(x)||_F / ||f_{<=l}(x)||_F of the whole
   mini-batch (front model in eval mode). The IRIs keep the label of x and are stored as uint8.
2. Invariance-aware stitching: the stitch of point l trains on that point's IRIs only, every target
   (end activations, end logits) computed on the IRI itself; the least-squares initialisation still
   uses real images, and the frozen models' BatchNorm stays in eval mode. Evaluation is always on the
   real test set: accuracy, agreement probability with g and its chance-normalised form.
3. Companion measurements: excess agreement under shortcut markers (correct minus shifted markers) and
   minibatch linear CKA between f_{<=l} and g_{<=l}, on real images and on IRIs.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn

from . import metrics
from .data import ImageSet
from .models import MODELS_VERSION, eval_mode
from .shortcuts import add_shortcut
from .stitching import STITCHING_VERSION, StitchConfig, StitchJob, predict, relative_error, result_row, train_stitches
from .store import NO_CHECKPOINT, Checkpointer, ResultStore

INVARIANCE_VERSION = 2  # part of every cache key: bump when a change here alters IRIs or stitch rows
# 2: stitch rows keep every test image's score ("<measure>_scores" tensors) for the paired bootstraps of claims.py

# ----------------------------------------------------------------------------------------------------
# 1. Identically represented inputs


@dataclass(frozen=True, eq=False)
class IRIs:
    """The IRIs of one front model at one stitch point, with how well the inversion worked.

    Errors are relative Frobenius errors ||f_{<=l}(x') - f_{<=l}(x)||_F / ||f_{<=l}(x)||_F per sample
    (CPU float tensors [N]); `summary()` pools them over the whole set.

    Attributes:
        data: the IRIs, uint8 [N, C, H, W] with the labels of their source images (an ImageSet), or a
            plain uint8 tensor when a tensor of images was inverted.
        point: the stitch point l the IRIs are identically represented at.
        initial_error: error of the uniform-noise starting points.
        unquantised_error: error after the last step, before rounding to uint8.
        final_error: error of the stored uint8 IRIs (what a stitch trains on).
        target_norm: ||f_{<=l}(x)||_F of every source image, to pool errors over the set.
        loss_curve: [batches, steps + 1] the batch objective before every step and after the last.
    """

    data: ImageSet | torch.Tensor
    point: int
    initial_error: torch.Tensor
    unquantised_error: torch.Tensor
    final_error: torch.Tensor
    target_norm: torch.Tensor
    loss_curve: torch.Tensor

    def __len__(self) -> int:
        return len(self.data)

    @property
    def images(self) -> torch.Tensor:
        """The uint8 IRI images."""
        return self.data.images if isinstance(self.data, ImageSet) else self.data

    def summary(self) -> dict:
        """Errors pooled over the set (the objective's batch error with the whole set as one batch),
        plus the median and worst per-sample final error: one row of the inversion-quality table."""
        def pooled(err: torch.Tensor) -> float:
            return float((err * self.target_norm).square().sum().sqrt() / self.target_norm.square().sum().sqrt())

        return {"point": self.point, "samples": len(self), "initial_error": pooled(self.initial_error),
                "unquantised_error": pooled(self.unquantised_error), "final_error": pooled(self.final_error),
                "final_error_median": float(self.final_error.median()), "final_error_max": float(self.final_error.max())}


def _sample_errors(a: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample relative error of activations `a` to targets `t`, and the targets' norms."""
    norm = t.float().flatten(1).norm(dim=1)
    err = (a.float() - t.float()).flatten(1).norm(dim=1) / norm.clamp_min(1e-12)  # a dead (all-zero) target: no NaN
    return err, norm


def _batch_seed(seed: int, start: int) -> int:
    """The noise seed of the batch starting at sample `start`: a resumed run redraws the same start."""
    return int.from_bytes(hashlib.sha256(f"iri:{seed}:{start}".encode()).digest()[:7], "little")


def _check_inversion_args(model, point, images, steps, step_size, batch_size) -> None:
    if not hasattr(model, "activations_upto") or not hasattr(model, "point_index"):
        raise TypeError(f"IRIs need a stitchable front model (models.build, or any network wrapped with "
                        f"models.stitchable(model, points)), got {type(model).__name__}")
    model.point_index(point)  # a clear error for an unknown name or an index out of range
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(f"IRIs are generated for uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}: "
                        f"pass ImageSet.images, not float images")
    if getattr(model, "in_channels", None) is not None and images.shape[1] != model.in_channels:
        raise ValueError(f"the images have {images.shape[1]} channels but the front model takes {model.in_channels}: "
                         f"invert images of the data set the model was trained on")
    if len(images) == 0:
        raise ValueError("no images to invert")
    if steps < 0 or not step_size > 0 or batch_size < 1:
        raise ValueError(f"need steps >= 0, step_size > 0 and batch_size >= 1; got {steps}, {step_size}, {batch_size}")


def generate_iris(model, point: int, images: ImageSet | torch.Tensor, *, steps: int = 200,
                  step_size: float = 1 / 255, batch_size: int = 256, seed: int = 0, progress: bool = True,
                  checkpoint: Checkpointer = NO_CHECKPOINT) -> IRIs:
    """Invert `model` at stitch point `point`: one IRI per image, started from uniform noise.

    Each mini-batch runs `steps` sign-gradient steps x' <- clamp(x' - step_size * sign(grad), 0, 1) on
    the batch relative error ||f_{<=l}(x') - f_{<=l}(x)||_F / ||f_{<=l}(x)||_F, model in eval mode, the
    gradient taken w.r.t. x' only. Because the sign of the batch objective's gradient equals that of each
    sample's own error, every IRI evolves as if it were inverted alone. The IRIs are rounded to uint8
    (round(255 x')) and their error is measured again after rounding.

    Args:
        model: the front model f (any device; the IRIs are computed there).
        point: stitch point l, an index or a point name of the model.
        images: uint8 source images, an ImageSet (the IRIs keep its labels) or a tensor [N, C, H, W].
        steps, step_size: the sign-gradient schedule (paper: 200 steps of 1/255).
        batch_size: images inverted together; the starting noise is drawn per batch from `seed`.
        checkpoint: the finished batches are saved after each one, so a killed run resumes where it stopped.
    Returns an IRIs record; its `.data` is an ImageSet when an ImageSet was given, else a uint8 tensor.
    """
    from tqdm.auto import tqdm

    source = images.images if isinstance(images, ImageSet) else images
    _check_inversion_args(model, point, source, steps, step_size, batch_size)
    device = next(model.parameters()).device
    n = len(source)
    starts = list(range(0, n, batch_size))
    signature = {"point": point, "steps": steps, "step_size": step_size, "batch_size": batch_size, "seed": seed, "n": n}

    done: dict[str, list[torch.Tensor]] = {k: [] for k in ("images", "initial", "unquantised", "final", "norm", "curve")}
    state = checkpoint.load()
    if state is not None:
        if state["signature"] != signature:
            raise ValueError(f"the IRI checkpoint {checkpoint.path} belongs to another run ({state['signature']}, "
                             f"now {signature}): delete it or use another path")
        done = state["done"]

    with eval_mode(model):
        for start in tqdm(starts[len(done["images"]):], desc=f"IRIs @{point}", disable=not progress,
                          initial=len(done["images"]), total=len(starts)):
            x = source[start:start + batch_size].to(device).float().div(255)
            gen = torch.Generator().manual_seed(_batch_seed(seed, start))
            x_iri = torch.rand(x.shape, generator=gen).to(device)  # drawn on the CPU: the same IRIs on every device
            with torch.no_grad():
                target = model.activations_upto(x, point)
                initial, norm = _sample_errors(model.activations_upto(x_iri, point), target)
            curve = torch.empty(steps + 1, device=device)  # filled on the device: no host sync per step
            for step in range(steps):
                x_iri.requires_grad_(True)
                loss = relative_error(model.activations_upto(x_iri, point), target)
                (grad,) = torch.autograd.grad(loss, x_iri)
                curve[step] = loss.detach()
                x_iri = (x_iri.detach() - step_size * grad.sign()).clamp_(0, 1)
            quantised = x_iri.mul(255).round_().to(torch.uint8)
            with torch.no_grad():
                a = model.activations_upto(x_iri, point)
                curve[steps] = relative_error(a, target)
                unquantised, _ = _sample_errors(a, target)
                final, _ = _sample_errors(model.activations_upto(quantised.float().div(255), point), target)
            for key, value in zip(done, (quantised, initial, unquantised, final, norm, curve)):
                done[key].append(value.cpu())
            checkpoint.save({"signature": signature, "done": done})

    iri_images = torch.cat(done["images"]).to(source.device)
    data = images.with_images(iri_images) if isinstance(images, ImageSet) else iri_images
    if isinstance(data, ImageSet):
        data = dataclasses.replace(data, name=f"{images.name}+iri(p{point},{steps}x{step_size:.4g},s{seed})")
    return IRIs(data, point, torch.cat(done["initial"]), torch.cat(done["unquantised"]), torch.cat(done["final"]),
                torch.cat(done["norm"]), torch.stack(done["curve"]))


def iri_set(store: ResultStore, model_cfg, model, point: int, data: ImageSet, *,
            steps: int = 200, step_size: float = 1 / 255, samples: int | None = None, seed: int = 0,
            batch_size: int = 256, progress: bool = True) -> IRIs:
    """The IRIs of `model` at `point` for (a fixed subset of) `data`, cached in `store` (kind "iri").

    Args:
        model_cfg: what identifies the front model in the cache key (its TrainConfig, SimCLRConfig or a
            dict); the model itself is not hashed.
        data: the source images; their `name` and size are part of the key (paste shortcut markers in
            before, as the shortcut testbed does, and the name says so).
        samples: invert only data.take(samples, seed) (None = every image).
    Returns the IRIs with `.data` an ImageSet on data's device.
    """
    if not isinstance(data, ImageSet):
        raise TypeError(f"iri_set needs an ImageSet (the IRIs keep its labels), got {type(data).__name__}")
    source = data.take(samples, seed=seed) if samples else data
    config = {"front": model_cfg, "point": point, "steps": steps, "step_size": step_size, "samples": samples,
              "seed": seed, "batch_size": batch_size, "source": data.name, "source_size": len(data),
              "code_version": (MODELS_VERSION, INVARIANCE_VERSION)}

    def compute(checkpoint: Checkpointer) -> dict:
        iris = generate_iris(model, point, source, steps=steps, step_size=step_size, batch_size=batch_size,
                             seed=seed, progress=progress, checkpoint=checkpoint)
        return {"images": iris.images.cpu(), "labels": iris.data.labels.cpu(), "classes": list(iris.data.classes),
                "name": iris.data.name, "point": point, "initial_error": iris.initial_error,
                "unquantised_error": iris.unquantised_error, "final_error": iris.final_error,
                "target_norm": iris.target_norm, "loss_curve": iris.loss_curve}

    p = store.get_or_compute("iri", config, compute)
    iri_data = ImageSet(p["images"], p["labels"], tuple(p["classes"]), p["name"]).to(data.images.device)
    return IRIs(iri_data, p["point"], p["initial_error"], p["unquantised_error"], p["final_error"], p["target_norm"],
                p["loss_curve"])


# ----------------------------------------------------------------------------------------------------
# 2. Stitching on IRIs, scored on real test data


def iri_stitch_config(cfg: StitchConfig, bn_mode: str = "eval") -> StitchConfig:
    """The stitch config for IRI training: BatchNorm of the frozen models in `bn_mode` (the authors:
    eval) and no crop/flip augmentation (an IRI is matched to f_{<=l} as it is, not shifted)."""
    return dataclasses.replace(cfg, bn_mode=bn_mode, augment=False)


def score_stitch(model: nn.Module, test: ImageSet, end_logits: torch.Tensor, num_classes: int) -> dict:
    """Accuracy, agreement probability with the end model and chance-normalised agreement on `test`, as means
    and per test image ("<measure>_scores": CPU float32 tensors [N] in percent, in the order of `test`;
    tensors, not numpy arrays, because the store loads with torch.load(weights_only=True))."""
    logits = predict(model, test)
    correct = (logits.argmax(1) == test.labels.to(logits.device)).float().mul(100).cpu()
    agree = metrics.agreement_per_sample(logits, end_logits).float().cpu()
    agreement = float(agree.double().mean())
    return {"accuracy": metrics.accuracy(logits, test.labels), "agreement": agreement,
            "chance_normalised_agreement": metrics.chance_normalised_agreement(agreement, num_classes),
            "accuracy_scores": correct, "agreement_scores": agree,
            "chance_normalised_agreement_scores": metrics.chance_normalised_agreement(agree, num_classes)}


def invariance_aware_stitching(front, end, points: Sequence[int],
                               objectives: Sequence[str], real_train: ImageSet,
                               iri_sets: Mapping[int, IRIs | ImageSet] | None, test: ImageSet,
                               cfg: StitchConfig = StitchConfig(), *, alpha: float = 0.0, bn_mode: str = "eval",
                               extra_eval: Callable[[nn.Module, StitchJob], dict] | None = None,
                               store: ResultStore | None = None, key=None, progress: bool = True) -> list[dict]:
    """Train one stitch per (point, objective) and score it on the real test set: tidy result rows.

    With `iri_sets` (stitch point -> that point's IRIs) this is invariance-aware stitching: the jobs of
    point l train on its IRIs only, with `iri_stitch_config(cfg, bn_mode)`, and the least-squares
    initialisation uses `real_train`. With `iri_sets=None` it is ordinary (forward) stitching on
    `real_train` with `cfg` as given, so both data modes give rows of the same shape.

    Args:
        points: stitch points; each job stitches point l of f to point l of g.
        objectives: any of stitching.OBJECTIVES ("hlm" for task loss, "slm", "fula", "dm", "hint", "tlm").
        alpha: share of PGD inputs of the stitched model (adversarial stitching; "dm" needs 0).
        extra_eval: more scores per stitched model, `extra_eval(model, job) -> dict` (e.g. excess
            agreement, robust agreement), merged into its row.
        store, key: cache the rows of each point in `store` (kind "stitch_rows"); `key` must identify
            everything the config does not see: the front and end models and what `extra_eval` measures.
    Returns one dict per job: the job's fields, "data" ("iri" or "real"), "point", "accuracy",
    "agreement", "chance_normalised_agreement", "final_loss" and "error" (None unless training stopped).
    """
    if store is not None and key is None:
        raise ValueError("caching stitch rows needs a `key` naming the front/end models (and what extra_eval measures)")
    mode = "real" if iri_sets is None else "iri"
    if iri_sets is not None:
        missing = [p for p in points if p not in iri_sets]
        if missing:
            raise KeyError(f"no IRI set for stitch point(s) {missing}: generate them with iri_set(...) first")
    train_cfg = cfg if iri_sets is None else iri_stitch_config(cfg, bn_mode)
    test = test.to(next(end.parameters()).device)
    end_logits = predict(end, test)

    def train_data_of(point: int) -> ImageSet:
        if iri_sets is None:
            return real_train
        iris = iri_sets[point]
        if isinstance(iris, IRIs):
            if iris.point != point:
                raise ValueError(f"iri_sets[{point}] holds IRIs of stitch point {iris.point}")
            iris = iris.data
        return iris

    jobs_of = {point: [StitchJob(point, point, objective, alpha) for objective in objectives] for point in points}
    data_of = {point: train_data_of(point) for point in points}
    # the cache holds one entry per point, whichever call trained it
    config_of = {point: {"key": key, "mode": mode, "jobs": [dataclasses.asdict(j) for j in jobs_of[point]],
                         "cfg": train_cfg, "train": (data_of[point].name, len(data_of[point])),
                         "init": (real_train.name, len(real_train)), "test": (test.name, len(test)),
                         "code_version": (MODELS_VERSION, STITCHING_VERSION, INVARIANCE_VERSION)}
                 for point in points}
    rows_of = {p: store.load("stitch_rows", config_of[p]) for p in points
               if store is not None and store.has("stitch_rows", config_of[p])}
    missing = [p for p in points if p not in rows_of]
    # Real-data stitches of every point train on the same images, so they train in one call: one front
    # forward per batch serves all points, and each job's result is the same as in a call of its own (its
    # random numbers come from its own generator; tests/test_invariance.py checks it). IRI stitches of each
    # point train on that point's own IRIs: one call per point.
    for group in ([missing] if iri_sets is None and missing else [[p] for p in missing]):
        checkpoint = NO_CHECKPOINT if store is None else store.checkpointer(
            "stitch_rows", config_of[group[0]] if len(group) == 1 else [config_of[p] for p in group])
        outcomes = train_stitches(front, end, [j for p in group for j in jobs_of[p]], data_of[group[0]], train_cfg,
                                  init_data=real_train, checkpoint=checkpoint, progress=progress)
        for point in group:
            rows_of[point] = []
            for outcome in outcomes[: len(jobs_of[point])]:
                stitched = outcome.model(front, end, train_cfg.resize)
                scores = score_stitch(stitched, test, end_logits, end.num_classes)
                extra = extra_eval(stitched, outcome.job) if extra_eval is not None else {}
                rows_of[point].append(result_row(outcome.job, data=mode, point=point, **scores, **extra,
                                                 final_loss=outcome.losses[-1] if outcome.losses else None,
                                                 error=outcome.error))
            outcomes = outcomes[len(jobs_of[point]):]
            if store is not None:
                store.save("stitch_rows", config_of[point], rows_of[point])
        checkpoint.clear()
    return [row for point in points for row in rows_of[point]]


# ----------------------------------------------------------------------------------------------------
# 3. Excess agreement and CKA


def excess_agreement_eval(stitched: nn.Module, end: nn.Module, test: ImageSet, kind: str, seed: int = 0,
                          layout_seed: int = 0) -> dict:
    """Agreement of the stitched and the end model on test images carrying shortcut markers of `kind`:
    with the correct class markers, with markers shifted cyclically by one class (class c carries class
    c - 1's marker, as the authors'), and the difference (excess agreement, in percentage points). Both
    models see the same marked image. seed: the markers' per-image draws; layout_seed: the class layout,
    the one the stitch was trained with (its data's DataSpec.seed).
    Per test image too ("<measure>_scores", CPU float32 tensors [N]): the excess of an image is its agreement
    with the correct markers minus its agreement with the shifted ones (the same image under both).
    """
    test = test.to(next(end.parameters()).device)
    scores = {}
    for name, shift in (("agreement_correct", 0), ("agreement_shifted", 1)):
        marked = add_shortcut(test, kind, seed=seed, shift=shift, layout_seed=layout_seed)
        per_image = metrics.agreement_per_sample(predict(stitched, marked), predict(end, marked)).float().cpu()
        scores[name], scores[f"{name}_scores"] = float(per_image.double().mean()), per_image
    scores["excess_agreement"] = metrics.excess_agreement(scores["agreement_correct"], scores["agreement_shifted"])
    scores["excess_agreement_scores"] = scores["agreement_correct_scores"] - scores["agreement_shifted_scores"]
    return scores


@torch.no_grad()
def _point_cka(front, end, images: torch.Tensor, points: Sequence[int], batch_size: int) -> dict[int, float]:
    """Minibatch CKA at each of `points` over `images` (uint8), batches of fewer than 4 images skipped."""
    device = next(front.parameters()).device
    ckas = {p: metrics.MinibatchCKA() for p in points}
    for xb in images.split(batch_size):
        if len(xb) < 4:  # the unbiased HSIC estimator needs 4 samples: a tiny ragged tail is left out
            continue
        x = xb.to(device).float().div(255)
        if len(points) == 1:
            fa, ga = [front.activations_upto(x, points[0])], [end.activations_upto(x, points[0])]
        else:
            f_all, g_all = front.activations(x), end.activations(x)
            fa, ga = [f_all[front.point_index(p)] for p in points], [g_all[end.point_index(p)] for p in points]
        for p, a, b in zip(points, fa, ga):
            ckas[p].update(a, b)
    return {p: c.value() for p, c in ckas.items()}


def cka_per_point(front, end, data: ImageSet | Mapping[int, IRIs | ImageSet],
                  points: Sequence[int], batch_size: int = 128) -> dict[int, float]:
    """Minibatch linear CKA between f_{<=l} and g_{<=l} at every stitch point l in `points`.

    Args:
        data: one image set for every point (real test images), or a mapping point -> images for that
            point alone (each point's IRIs).
        batch_size: CKA minibatch size (at least 4; the authors' 128 by default: the minibatch estimator's
            value depends on it).
    Returns {point: CKA}. Both models are used in eval mode and left as they were.
    """
    if batch_size < 4:
        raise ValueError(f"minibatch CKA needs batches of at least 4 images, got batch_size={batch_size}")
    for p in points:  # a clear error for an unknown name or an index out of range, on either model
        front.point_index(p), end.point_index(p)
    with eval_mode(front, end):
        if isinstance(data, Mapping):
            missing = [p for p in points if p not in data]
            if missing:
                raise KeyError(f"no images for stitch point(s) {missing}")
            return {p: _point_cka(front, end, _images_of(data[p]), [p], batch_size)[p] for p in points}
        return _point_cka(front, end, _images_of(data), list(points), batch_size)


def _images_of(data) -> torch.Tensor:
    images = data.images if isinstance(data, (ImageSet, IRIs)) else data
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(f"expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    if len(images) < 4:
        raise ValueError(f"minibatch CKA needs at least 4 images, got {len(images)}")
    return images
