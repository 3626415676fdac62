"""The layer explorer: pick a front model f, an end model g, a front point i, an end point j and an objective,
and see where the stitch g_{>j} ∘ T ∘ f_{<=i} stands and what it does.

    ex = Explorer(store, "quick", device)                                 # every architecture of the profile
    ex.add_model("my vgg", stitchable(vgg, [...]), "fashion_mnist")       # and your own networks
    ex.result("fashion_mnist_1", "fashion_mnist_0", 4, 4, "fula")         # cached only (0-based points)
    ex.result("digits_0", "fashion_mnist_0", 6, 2, "hint", train_if_missing=True)
    ex.view()                                                             # the widget, with a static snapshot

The views (each a plain function of the cache, so the widgets, the notebook and the tests share them):
  - `heatmap`: the pair's cross-layer grid (§3.3, Fig. 10) as far as it is cached, the chosen cell marked;
  - `curves`: the stitching plot across corresponding points (§3.1-3.2): clean accuracy, robust accuracy where
    notebook 01 cached it, agreement probability;
  - `inspect`: one test image through the stitch: a few channels of f_{<=i}(x), T(f_{<=i}(x)) and g_{<=j}(x),
    and the relative errors ||h_k - g_{<=k}(x)|| / ||g_{<=k}(x)|| at the stitch point and after it (the terms
    FuLA averages, Eq. 5);
  - `iri_examples`: when notebook 05 cached an IRI set of the front model at point i, real images, their IRIs
    and what the end model predicts on each (invariance-aware stitching, paper 2).
Nothing here trains unless asked (`train_if_missing`, or the widget's button). Stitches use the same cache keys
as the notebooks (profile's StitchConfig, stitch training subset of the end model's task, clean evaluation on
the profile's test subset), so whatever 01-05 trained is found here.

Stitch points are shown in the paper's numbering, 1..9 for the ResNets, with the layer name ("5 · layer2.1");
the API takes 0-based indices like the rest of fula_core.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import io
import json
import math

import numpy as np
import torch

from . import metrics, plots
from .plots import OBJECTIVE_LABELS
from .config import Profile, get_profile
from .crosslayer import eval_spec, train_spec
from .experiments import EvalSpec, Stitcher, baseline_rows, robust_eval_spec
from .models import build, eval_mode
from .stitching import OBJECTIVES, StitchJob, relative_error
from .store import ResultStore, _canonical

EXPLORER_VERSION = 1
CKA_BATCH = 500  # minibatch CKA over the test subset in chunks of about this many images (bounded memory)
CHANNELS_SHOWN = 4  # channels of each activation in the image view
STATUS = {"cached": "from the cache", "trained": "trained just now",
          "not trained": "stitch not trained yet: press the button to train it",
          "models not trained": "a base model is not trained yet: run 00_base_models or press the button"}
# the explorer's figures, in the order it draws them; each <img> carries its name as alt text
VIEWS = ("overview", "one_image", "iri")
AGREEMENT_DEFINITION = (
    "Agreement probability: per test image, the overlap of the stitched model's and the end model's softmax "
    "outputs, $\\sum_c p_S(c)\\,p_g(c) \\,/\\, \\max(\\|p_g\\|^2, \\|p_S\\|^2)$, averaged; 100% only where both "
    "give the same distribution. It is not an accuracy: a stitch can agree with $g$ far more often than $g$ is right.")


@dataclasses.dataclass(frozen=True)
class OwnModel:
    """The cache identity of a network added with `Explorer.add_model`: its name, task and a hash of its
    weights (a retrained network is a different model, so its stitches are not mixed up with the old ones)."""

    name: str
    dataset: str
    weights: str

    @classmethod
    def of(cls, name: str, model: torch.nn.Module, dataset: str) -> "OwnModel":
        h = hashlib.sha256()
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return cls(name, dataset, h.hexdigest()[:16])


point_label = plots.point_label  # '5 · layer2.1' for 0-based index 4: the papers' numbering, shared with every figure


class Explorer:
    """Stitching results and views for any (front model, end model, front point, end point, objective)."""

    def __init__(self, store: ResultStore, profile: str | Profile, device="cpu", *, arch: str | None = None,
                 configs: dict | None = None, data_dir=None, progress: bool = True):
        """configs: model id -> TrainConfig (default: every architecture of the profile, `zoo.table1_configs`;
        `arch` restricts to one architecture's zoo)."""
        from .zoo import table1_configs, zoo_configs

        self.P = profile if isinstance(profile, Profile) else get_profile(profile)
        self.store, self.device, self.data_dir, self.progress = store, device, data_dir, progress
        if configs is not None:
            self.configs = dict(configs)
        else:
            self.configs = dict(zoo_configs(self.P, arch) if arch else table1_configs(self.P))
        self._own: dict[str, torch.nn.Module] = {}  # model id -> network added with add_model
        self._names: dict[str, list[str]] = {}
        self.objectives = tuple(dict.fromkeys(tuple(self.P.objectives) + ("dm",)))
        self._stitchers: dict[tuple[str, str], Stitcher] = {}
        self.controls: dict = {}  # the widgets of the last .widget() box, by name
        self.last: dict = {}  # what the widget rendered last (result dict and figures): the static snapshot

    @property
    def model_ids(self) -> list[str]:
        return list(self.configs)

    @property
    def point_names(self) -> list[str]:
        """The stitch point names of the first model (every zoo model of one architecture shares them)."""
        return self.points_of(self.model_ids[0])

    def points_of(self, model_id: str) -> list[str]:
        """The stitch point names of `model_id`, in depth order."""
        if model_id not in self._names:
            if model_id in self._own:
                self._names[model_id] = list(self._own[model_id].stitch_points)
            else:
                cfg = self._cfg(model_id)
                self._names[model_id] = list(build(cfg.arch, 2, 1, width=1).stitch_points)
        return self._names[model_id]

    def add_model(self, model_id: str, model: torch.nn.Module, dataset: str) -> None:
        """Add your own network (a `fula_core.stitchable(...)` wrapper, or any module with `stitch_points`,
        `activations_upto` and `activations_from`) trained on `dataset` (its stitches train and are scored on
        that task's data, so it must take that data's images). Its stitches are cached like the zoo's, keyed
        by a hash of its weights."""
        for attr in ("stitch_points", "activations_upto", "activations_from"):
            if not hasattr(model, attr):
                raise TypeError(f"{type(model).__name__} has no {attr!r}: wrap it with "
                                f"fula_core.stitchable(model, [layer names]) first")
        if model_id in self.configs:
            raise ValueError(f"model id {model_id!r} is taken: choose another name")
        self._own[model_id] = model.to(self.device).eval()
        self.configs[model_id] = OwnModel.of(model_id, model, dataset)
        for w in (self.controls.get("front"), self.controls.get("end")):
            if w is not None:
                w.options = self.model_ids

    # ------------------------------------------------------------------------------------------------
    # the pure part: what the widgets and the tests call

    def model_cached(self, model_id: str) -> bool:
        if model_id in self._own:
            return True
        return self.store.has("model", dataclasses.asdict(self._cfg(model_id)))

    def _job(self, front_id, end_id, i, j, objective) -> StitchJob:
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
        for mid, k in ((front_id, i), (end_id, j)):
            n = len(self.points_of(mid))
            if not 0 <= int(k) < n:
                raise IndexError(f"stitch point index {k} is out of range for {mid!r}: it has points 0..{n - 1}")
        return StitchJob(int(i), int(j), objective)

    def result(self, front_id: str, end_id: str, i: int, j: int, objective: str,
               train_if_missing: bool = False) -> dict:
        """The stitch front_id[i] -> end_id[j] under `objective` (clean training, alpha 0).

        Returns a dict: front, end, front_point, end_point, front_layer, end_layer, objective, job,
        status ("cached", "trained", "not trained", "models not trained"), accuracy and agreement (%),
        cka (linear CKA of f_{<=i} and g_{<=j} on the test subset), end_accuracy (%), error. Nothing trains
        unless train_if_missing; the numbers that are not available are NaN.
        """
        end_cfg = self._cfg(end_id)
        job = self._job(front_id, end_id, i, j, objective)
        out = {"front": front_id, "end": end_id, "front_point": job.front_point, "end_point": job.end_point,
               "front_layer": self.points_of(front_id)[job.front_point],
               "end_layer": self.points_of(end_id)[job.end_point],
               "objective": objective, "job": job.name, "status": "", "accuracy": math.nan, "agreement": math.nan,
               "cka": math.nan, "end_accuracy": math.nan, "error": "",
               "accuracy_scores": None, "end_accuracy_scores": None}  # per-image scores (0/100) for claims
        if not train_if_missing and not (self.model_cached(front_id) and self.model_cached(end_id)):
            out["status"] = "models not trained"
            return out
        st = self._stitcher(front_id, end_id)
        out["cka"] = self.cka(front_id, end_id, job.front_point, job.end_point)
        spec = eval_spec(self.P, end_cfg.dataset)
        base = baseline_rows(self.store, st.end, end_cfg, "end", [spec], self.device, self.data_dir)
        end_row = next(r for r in base if r["metric"] == "accuracy")
        out["end_accuracy"], out["end_accuracy_scores"] = end_row["value"], end_row.get("scores")
        cached = self.store.has("stitch", st.key(job))
        if not cached and not train_if_missing:
            out["status"] = "not trained"
            return out
        rows = st.evaluate([job], [spec])
        values = {r["metric"]: r["value"] for r in rows}
        out.update(status="cached" if cached else "trained", accuracy=values["accuracy"],
                   agreement=values["agreement"], error=rows[0]["error"],
                   accuracy_scores=next(r.get("scores") for r in rows if r["metric"] == "accuracy"))
        return out

    def cka(self, front_id: str, end_id: str, i: int, j: int) -> float:
        """Linear CKA between f_{<=i} and g_{<=j} on the end task's test subset (minibatch estimator of
        Nguyen et al. over chunks of ~CKA_BATCH images; cached)."""
        front_cfg, end_cfg = self._cfg(front_id), self._cfg(end_id)
        spec = eval_spec(self.P, end_cfg.dataset).data
        key = {"front": front_cfg, "end": end_cfg, "front_point": i, "end_point": j, "data": spec,
               "version": EXPLORER_VERSION}

        def compute(_ckpt):
            st = self._stitcher(front_id, end_id)
            x = spec.load(self.device, self.data_dir).images.float() / 255
            return {"cka": activation_cka(st.front, st.end, x, i, j)}

        return float(self.store.get_or_compute("cka", key, compute)["cka"])

    def _cached_eval(self, front_id, end_id, job: StitchJob, spec: EvalSpec) -> dict | None:
        """The cached scores of `job` under `spec` ({"accuracy", "agreement", "error"}), or None."""
        key = self._stitcher(front_id, end_id).eval_key(job, spec)
        return self.store.load("stitch_eval", key) if self.store.has("stitch_eval", key) else None

    def heatmap(self, front_id: str, end_id: str, objective: str, metric: str = "accuracy"):
        """(points, M): M[a, b] = cached `metric` of the stitch points[a] -> points[b] over the profile's
        cross-layer points (notebook 04's grid), NaN where nothing is cached. Nothing trains."""
        points = [p for p in self.P.cross_layer_points
                  if p < min(len(self.points_of(front_id)), len(self.points_of(end_id)))]
        m = np.full((len(points), len(points)), np.nan)
        if not (self.model_cached(front_id) and self.model_cached(end_id)):
            return points, m
        spec = eval_spec(self.P, self._cfg(end_id).dataset)
        for a, i in enumerate(points):
            for b, j in enumerate(points):
                s = self._cached_eval(front_id, end_id, StitchJob(i, j, objective), spec)
                if s is not None:
                    m[a, b] = s[metric]
        return points, m

    def curves(self, front_id: str, end_id: str, objectives=None):
        """The stitching plot's data across corresponding points i -> i (clean training): tidy rows
        (objective, front_point, end_point, eval, metric, value) of whatever is cached: clean accuracy and
        agreement probability on the test subset, robust accuracy under notebook 01's attack. Nothing trains."""
        import pandas as pd

        rows = []
        if self.model_cached(front_id) and self.model_cached(end_id):
            dataset = self._cfg(end_id).dataset
            specs = [eval_spec(self.P, dataset), robust_eval_spec(self.P, dataset)]
            n = min(len(self.points_of(front_id)), len(self.points_of(end_id)))
            for obj in objectives or self.objectives:
                for k in range(n):
                    for spec in specs:
                        s = self._cached_eval(front_id, end_id, StitchJob(k, k, obj), spec)
                        if s is None:
                            continue
                        for metric in ("accuracy", "agreement"):
                            rows.append({"objective": obj, "front_point": k, "end_point": k, "eval": spec.name,
                                         "robust": spec.attack is not None, "metric": metric,
                                         "value": float(s[metric])})
        return pd.DataFrame(rows, columns=["objective", "front_point", "end_point", "eval", "robust", "metric",
                                           "value"])

    def test_images(self, end_id: str):
        """The end task's test subset (what every clean number here is measured on)."""
        return eval_spec(self.P, self._cfg(end_id).dataset).data.load(self.device, self.data_dir)

    def inspect(self, front_id: str, end_id: str, i: int, j: int, objective: str, index: int = 0) -> dict | None:
        """Test image `index` through the trained stitch (None when the stitch is not cached).

        Returns: image [C, H, W] in [0, 1], label, class names, the activations f_{<=i}(x), T(f_{<=i}(x)) and
        g_{<=j}(x) (one sample each), `errors` {k: relative error ||h_k - g_{<=k}(x)||_F / ||g_{<=k}(x)||_F}
        for every end point k >= j (h_j = T(f_{<=i}(x)), h_k the end model's later activations from it: the
        terms FuLA averages), and the stitched and end models' predicted classes."""
        job = self._job(front_id, end_id, i, j, objective)
        if not (self.model_cached(front_id) and self.model_cached(end_id)):
            return None
        st = self._stitcher(front_id, end_id)
        if not self.store.has("stitch", st.key(job)):
            return None
        outcome = st.outcomes([job])[0]
        if outcome.error:
            return None
        data = self.test_images(end_id)
        index = int(index) % len(data.images)
        x = data.images[index:index + 1].float() / 255
        model = outcome.model(st.front, st.end, st.cfg.resize)
        with torch.no_grad(), eval_mode(model), model._job_bn():
            front_act = st.front.activations_upto(x, job.front_point)
            stitched = model.stitch(front_act)
            after, h_logits = st.end.activations_from(stitched, job.end_point, with_logits=True)
            g_points, g_logits = st.end.activations(x, with_logits=True)
        hs = [stitched, *after]
        errors = {job.end_point + n: float(relative_error(h, g_points[job.end_point + n]))
                  for n, h in enumerate(hs) if job.end_point + n < len(g_points)}
        return {"image": x[0].cpu(), "label": int(data.labels[index]), "classes": list(data.classes), "index": index,
                "front": front_act[0].cpu(), "stitched": stitched[0].cpu(), "end": g_points[job.end_point][0].cpu(),
                "errors": errors, "stitched_class": int(h_logits.argmax(1)), "end_class": int(g_logits.argmax(1)),
                "job": job}

    def iri_examples(self, front_id: str, end_id: str, i: int, n: int = 4) -> dict | None:
        """When an IRI set of the front model at point i is cached (notebook 05, `invariance.iri_set`, kind
        "iri"): n of its IRIs, the real images they invert (when the source set can be rebuilt from its name)
        and the end model's predicted class on each; else None. The store's index files (<key>.json, the
        canonical config) say which set belongs to which front model and point."""
        from .store import safe_load

        if front_id in self._own or not (self.model_cached(front_id) and self.model_cached(end_id)):
            return None
        want = _canonical(self._cfg(front_id))
        folder = self.store.root / "iri"
        for meta in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                config = json.loads(meta.read_text())
            except (OSError, ValueError):
                continue  # a half-written index file: the entry is not usable yet
            pt = meta.with_suffix(".pt")
            if config.get("point") != i or config.get("front") != want or not pt.exists():
                continue
            payload = safe_load(pt, kind="iri", key=meta.stem)
            iris = payload["images"][:n].float() / 255
            source = _rebuild_source(config, len(payload["images"]), self.data_dir)
            source = source[:n] if source is not None else None
            end = self._stitcher(front_id, end_id).end
            with torch.no_grad(), eval_mode(end):
                pred_iri = end(iris.to(self.device)).argmax(1).cpu().tolist()
                pred_real = end(source.to(self.device)).argmax(1).cpu().tolist() if source is not None else None
            return {"source": source, "iris": iris, "labels": payload["labels"][:n].tolist(),
                    "classes": list(payload["classes"]), "pred_real": pred_real, "pred_iri": pred_iri,
                    "final_error": float(torch.as_tensor(payload.get("final_error", math.nan)).float().mean()), "name": payload["name"],
                    "point": i}
        return None

    # ------------------------------------------------------------------------------------------------
    # figures (matplotlib; the widget shows them, the snapshot embeds them)

    def overview_figure(self, front_id: str, end_id: str, i: int, j: int, objective: str):
        """Where the pair stands: the cached cross-layer heatmap with cell (i, j) marked, and the stitching
        plot across corresponding points (clean accuracy solid, robust dashed, agreement probability dotted)."""
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle


        fig, (ax_h, ax_c) = plt.subplots(1, 2, figsize=(10.5, 3.9), gridspec_kw={"width_ratios": [1, 1.35]})
        points, m = self.heatmap(front_id, end_id, objective)
        label = OBJECTIVE_LABELS.get(objective, objective)
        if np.isfinite(m).any():
            im = ax_h.imshow(m, vmin=0, vmax=100, cmap="viridis", origin="upper")
            ticks = [point_label(p) for p in points]
            ax_h.set_xticks(range(len(points)), ticks, fontsize=7)
            ax_h.set_yticks(range(len(points)), ticks, fontsize=7)
            ax_h.set_xlabel("end point j (g)")
            ax_h.set_ylabel("front point i (f)")
            fig.colorbar(im, ax=ax_h, fraction=0.046, label="clean accuracy (%)")
            if i in points and j in points:
                a, b = points.index(i), points.index(j)
                ax_h.add_patch(Rectangle((b - 0.5, a - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.2))
            ax_h.set_title(f"cross-layer grid, {label} (cached cells)", fontsize=9)
        else:
            ax_h.axis("off")
            ax_h.text(0.5, 0.5, f"no cross-layer grid cached\nfor this pair and {label}\n(notebook 04 trains it)",
                      ha="center", va="center", fontsize=9, color="0.4", transform=ax_h.transAxes)
        df = self.curves(front_id, end_id)
        if df.empty:
            ax_c.axis("off")
            ax_c.text(0.5, 0.5, "no stitch at corresponding points i → i cached for this pair",
                      ha="center", va="center", fontsize=9, color="0.4", transform=ax_c.transAxes)
        else:
            present = [o for o in self.objectives if o in set(df.objective)]
            for ev, ls in dict.fromkeys(zip(df["eval"], df["robust"])):
                plots.stitching_plot(ax_c, df, "accuracy", ev, present, linestyle="--" if ls else "-",
                                     label_suffix=" (robust)" if ls else "", style_axes=False)
            clean = df[~df.robust]
            plots.stitching_plot(ax_c, clean[clean.objective == objective], "agreement", clean["eval"].iloc[0]
                                 if len(clean) else "", [objective], linestyle=":", label_suffix=" agreement prob.",
                                 style_axes=False)
            plots.style_stitching_axes(ax_c, sorted(set(df.front_point)))
            ax_c.axvline(plots.plot_x(i), color="red", alpha=0.35, linewidth=4)
            ax_c.set_ylabel("%")
            ax_c.set_xlabel("stitch point (i = j)")
            ax_c.set_ylim(-3, 103)
            ax_c.legend(fontsize=7, ncol=2, loc="lower left")
            ax_c.set_title("stitching at corresponding points (solid: clean accuracy, dashed: robust, "
                           "dotted: agreement)", fontsize=8)
        fig.tight_layout()
        return fig

    def inspect_figure(self, info: dict):
        """One test image through the stitch: channels of f_{<=i}(x), T(f_{<=i}(x)), g_{<=j}(x) and the
        relative errors at and after the stitch point."""
        import matplotlib.pyplot as plt

        k = CHANNELS_SHOWN
        fig = plt.figure(figsize=(10.5, 4.6))
        grid = fig.add_gridspec(3, k + 3, width_ratios=[1.1] + [1] * k + [0.45, 2.2], wspace=0.25, hspace=0.35)
        ax = fig.add_subplot(grid[:, 0])
        img = info["image"]
        ax.imshow((img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)).numpy(), cmap="gray", vmin=0, vmax=1)
        cls = info["classes"]
        ax.set_title(f"test image {info['index']}\nlabel: {cls[info['label']]}\nstitched: "
                     f"{cls[info['stitched_class']]}\nend model: {cls[info['end_class']]}", fontsize=8)
        ax.axis("off")
        job = info["job"]
        g_maps, order = _maps(info["end"], k)
        f_maps, f_order = _maps(info["front"], k)
        t_maps, _ = _maps(info["stitched"], k, order)
        rows = [(f"f≤{point_label(job.front_point)}(x)", f_maps, f_order, None), ("T(f≤i(x))", t_maps, order, g_maps),
                (f"g≤{point_label(job.end_point)}(x)", g_maps, order, g_maps)]
        for r, (name, maps, chans, scale_like) in enumerate(rows):
            for c in range(k):
                a = fig.add_subplot(grid[r, c + 1])
                a.set_xticks([])
                a.set_yticks([])
                if c < len(maps):
                    ref = scale_like[c] if scale_like is not None and c < len(scale_like) else maps[c]
                    a.imshow(maps[c], cmap="magma", vmin=float(ref.min()), vmax=float(ref.max()) + 1e-12)
                    a.set_title(f"ch {chans[c]}" if chans is not None else "", fontsize=7)
                if c == 0:
                    a.set_ylabel(name, fontsize=8)
        ax_e = fig.add_subplot(grid[:, k + 2])  # (column k + 1: room for its axis label)
        ks = sorted(info["errors"])
        ax_e.bar([plots.plot_x(p) for p in ks], [100 * info["errors"][p] for p in ks], color="tab:green")
        ax_e.set_xticks([p + 1 for p in ks])
        ax_e.set_xlabel("end point k ≥ j")
        ax_e.set_ylabel("relative error (%)")
        ax_e.set_title("‖h_k − g≤k(x)‖ / ‖g≤k(x)‖\n(the FuLA terms, this image)", fontsize=8)
        fig.suptitle("what the stitch does to one test image (T, g: the channels where g is most active; "
                     "same colour scale per column)", fontsize=9)
        return fig

    def iri_figure(self, info: dict):
        """Real images, their IRIs at the front point, and the end model's prediction on each."""
        import matplotlib.pyplot as plt

        n = len(info["iris"])
        rows = 2 if info["source"] is not None else 1
        fig, axes = plt.subplots(rows, n, figsize=(1.9 * n, 2.1 * rows + 0.4), squeeze=False)
        cls = info["classes"]
        for c in range(n):
            panels = ([("real", info["source"][c], info["pred_real"][c])] if rows == 2 else []) + \
                     [("IRI", info["iris"][c], info["pred_iri"][c])]
            for r, (what, im, pred) in enumerate(panels):
                a = axes[r, c]
                a.imshow((im[0] if im.shape[0] == 1 else im.permute(1, 2, 0)).numpy(), cmap="gray", vmin=0, vmax=1)
                a.set_title(f"{what} ({cls[info['labels'][c]]})\ng predicts: {cls[pred]}", fontsize=7)
                a.axis("off")
        fig.suptitle(f"IRIs of the front model at point {info['point'] + 1} (inputs with the same activation "
                     f"f≤i; mean final relative error of the set {100 * info['final_error']:.1f}%)", fontsize=8)
        fig.tight_layout()
        return fig

    def render(self, front_id: str, end_id: str, i: int, j: int, objective: str, index: int = 0) -> dict:
        """Everything the explorer shows for one selection, cached only: {"result", "figures" (PNG bytes, in
        order: overview, image view when the stitch is trained, IRIs when cached), "views" (their names:
        overview, one_image, iri)}. Kept as `self.last`."""
        import matplotlib.pyplot as plt

        r = self.result(front_id, end_id, i, j, objective)
        figs, names = [], []
        if self.model_cached(front_id) and self.model_cached(end_id):
            figs.append(self.overview_figure(front_id, end_id, i, j, objective))
            names.append(VIEWS[0])
            info = self.inspect(front_id, end_id, i, j, objective, index)
            if info is not None:
                figs.append(self.inspect_figure(info))
                names.append(VIEWS[1])
            iri = self.iri_examples(front_id, end_id, i)
            if iri is not None:
                figs.append(self.iri_figure(iri))
                names.append(VIEWS[2])
        pngs = []
        for fig in figs:
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
            plt.close(fig)
            pngs.append(buf.getvalue())
        self.last = {"result": r, "figures": pngs, "views": names}
        return self.last

    def snapshot_html(self) -> str:
        """A static HTML copy of what the widget rendered last (table, definitions and figures as data URIs):
        what a reader sees where the widget cannot run (the repository page, nbconvert)."""
        if not self.last:
            return "<p>(the explorer has not rendered a selection yet)</p>"
        imgs = _images_html(self.last["figures"], self.last.get("views"))
        return (f"<div><p><i>Static snapshot of the layer explorer (run the notebook to use the controls).</i></p>"
                f"{format_html(self.last['result'])}<p style='font-size:90%'>{html.escape(_plain(AGREEMENT_DEFINITION))}"
                f"</p>{imgs}</div>")

    # ------------------------------------------------------------------------------------------------
    # internals

    def _cfg(self, model_id: str):
        if model_id not in self.configs:
            raise KeyError(f"unknown model {model_id!r}: choose one of {', '.join(self.model_ids)}")
        return self.configs[model_id]

    def _stitcher(self, front_id: str, end_id: str) -> Stitcher:
        if (front_id, end_id) not in self._stitchers:
            front_cfg, end_cfg = self._cfg(front_id), self._cfg(end_id)
            self._stitchers[front_id, end_id] = Stitcher(
                self.store, front_cfg, end_cfg, self.P.stitch, train_spec(self.P, end_cfg.dataset), self.device,
                front=self._own.get(front_id), end=self._own.get(end_id), data_dir=self.data_dir,
                progress=self.progress)
        return self._stitchers[front_id, end_id]

    # ------------------------------------------------------------------------------------------------
    # the widgets

    def widget(self, front_id: str | None = None, end_id: str | None = None, i: int = 4, j: int = 4,
               objective: str = "fula", index: int = 0):
        """An ipywidgets box: dropdowns for the models, points (paper numbering and layer name) and objective,
        a slider for the test image, the cached result with its views, and a button that trains a missing
        stitch (status at once, progress bars below). Nothing trains until the button is pressed. The widgets
        are also kept in `self.controls` (front, end, front_point, end_point, objective, image, train, status,
        result, views, log) for scripting and tests."""
        import ipywidgets as W

        ids = self.model_ids
        end_id = end_id or ids[0]
        front_id = front_id or (ids[1] if len(ids) > 1 else ids[0])
        style = {"description_width": "initial"}
        wide = W.Layout(width="max-content")
        front = W.Dropdown(options=ids, value=front_id, description="front model f", style=style)
        end = W.Dropdown(options=ids, value=end_id, description="end model g", style=style)
        fp = W.Dropdown(options=self._point_options(front_id), value=i, description="front point i", style=style)
        ep = W.Dropdown(options=self._point_options(end_id), value=j, description="end point j", style=style)
        obj = W.Dropdown(options=[(OBJECTIVE_LABELS.get(o, o), o) for o in self.objectives], value=objective,
                         description="objective", style=style)
        n_test = self.P.eval_subset or 1000
        image = W.IntSlider(value=index, min=0, max=max(0, n_test - 1), description="test image", style=style,
                            continuous_update=False)
        button = W.Button(description="Train this stitch", icon="play", button_style="primary", layout=wide,
                          tooltip="train the selected stitch with the profile's stitch settings (progress below)")
        status = W.HTML()
        legend = W.HTMLMath(value=(
            "The stitched model is $h = g_{>j} \\circ T \\circ f_{\\le i}$: the front model $f$ up to point $i$, "
            "a trained 1x1 convolution $T$, then the end model $g$ after point $j$. " + AGREEMENT_DEFINITION))
        shown = W.HTML()
        views = W.HTML()  # the figures as <img> data URIs (also what the static snapshot embeds)
        log = W.Output()

        def selection():
            return front.value, end.value, fp.value, ep.value, obj.value

        def refresh(*_):
            try:
                last = self.render(*selection(), index=image.value)
            except Exception as err:  # show it in the box: a widget callback has nowhere else to report
                shown.value = f"<b>error:</b> {html.escape(str(err))}"
                return
            r = last["result"]
            shown.value = format_html(r)
            button.disabled = r["status"] in ("cached", "trained")
            status.value = ""
            views.value = _images_html(last["figures"], last["views"])

        def models_changed(change):
            for w, mid in ((fp, front.value), (ep, end.value)):
                options = self._point_options(mid)
                if list(w.options) != options:
                    keep = w.value if w.value < len(options) else len(options) - 1
                    with w.hold_trait_notifications():
                        w.options, w.value = options, keep
            refresh()

        def train(_):
            button.disabled = True
            status.value = ("<b>Training started</b> (models first if they are missing, then the stitch): "
                            "progress bars below; the views update when it is done.")
            with log:
                log.clear_output()
                try:
                    r = self.result(*selection(), train_if_missing=True)
                except Exception as err:
                    status.value = f"<b>training failed:</b> {html.escape(str(err))}"
                    button.disabled = False
                    return
            refresh()
            if self.last.get("result", {}).get("job") == r["job"]:  # say that it was trained just now
                self.last["result"] = r
                shown.value = format_html(r)

        front.observe(models_changed, names="value")
        end.observe(models_changed, names="value")
        for w in (fp, ep, obj, image):
            w.observe(refresh, names="value")
        button.on_click(train)
        self.controls = {"front": front, "end": end, "front_point": fp, "end_point": ep, "objective": obj,
                         "image": image, "train": button, "status": status, "result": shown, "views": views,
                         "log": log}
        refresh()
        return W.VBox([W.HBox([front, end, obj]), W.HBox([fp, ep, image]), W.HBox([button, status]), legend,
                       shown, log, views])

    def view(self, *args, **kwargs) -> "ExplorerView":
        """The widget, displayed with a static HTML snapshot beside it (see `ExplorerView`)."""
        return ExplorerView(self, self.widget(*args, **kwargs))

    def _point_options(self, model_id: str) -> list[tuple[str, int]]:
        return [(point_label(k, name), k) for k, name in enumerate(self.points_of(model_id))]


class ExplorerView:
    """The explorer's widget box plus a static snapshot: displayed, the output carries both the widget view
    (JupyterLab renders it live) and a text/html copy of the last rendered table and figures (the repository
    page and nbconvert, which have no kernel, show that instead of `VBox(children=...)`)."""

    def __init__(self, explorer: Explorer, box):
        self.explorer, self.box = explorer, box

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = dict(self.box._repr_mimebundle_(include=include, exclude=exclude) or {})
        bundle["text/html"] = self.explorer.snapshot_html()
        return bundle


def _images_html(pngs: list[bytes], names: list[str] | None = None) -> str:
    """The figures as <img> data URIs; each carries its view's name as alt text (screen readers, the browser
    test's per-view screenshots)."""
    names = names or [""] * len(pngs)
    return "".join(f"<img alt='{n}' style='max-width:100%;display:block' "
                   f"src='data:image/png;base64,{base64.b64encode(p).decode()}'/>" for p, n in zip(pngs, names))


def _maps(a: torch.Tensor, k: int, order: list[int] | None = None):
    """Up to k 2-D maps of one sample's activation: channels of a [C, H, W] map (the k most active by mean
    |a|, or `order`), a [T, D] token sequence as one map, a [D] vector as one row. Returns (maps, channels)."""
    a = a.detach().float().cpu()
    if a.dim() == 3:
        chans = order if order is not None else a.abs().mean(dim=(1, 2)).argsort(descending=True)[:k].tolist()
        chans = [c for c in chans if c < a.shape[0]][:k]
        return [a[c].numpy() for c in chans], chans
    if a.dim() == 2:
        return [a.numpy()], None
    return [a.reshape(1, -1).numpy()], None


def _plain(text: str) -> str:
    """LaTeX-free text of a definition (for the static snapshot)."""
    for tex, plain in (("$\\sum_c p_S(c)\\,p_g(c) \\,/\\, \\max(\\|p_g\\|^2, \\|p_S\\|^2)$",
                        "Σ_c p_S(c) p_g(c) / max(‖p_g‖², ‖p_S‖²)"), ("$g$", "g")):
        text = text.replace(tex, plain)
    return text


def _rebuild_source(config: dict, count: int, data_dir=None):
    """The real images an IRI set inverts, as [N, C, H, W] floats in [0, 1], rebuilt from the set's config
    when its source is a data set split with plain subsets ("<name>/<split>[take=n,seed=s]..."); None for
    anything else (marker-pasted sources), or when the rebuilt set does not match in size."""
    import re

    from .data import load

    m = re.fullmatch(r"([\w]+)/(train|test)((?:\[take=\d+,seed=\d+\])*)", str(config.get("source", "")))
    if not m:
        return None
    try:
        data = load(m.group(1), m.group(2), root=data_dir)
    except Exception:  # data set not on this machine: show the IRIs alone
        return None
    for n, seed in re.findall(r"\[take=(\d+),seed=(\d+)\]", m.group(3)):
        data = data.take(int(n), seed=int(seed))
    if len(data) != config.get("source_size"):
        return None
    if config.get("samples"):
        data = data.take(int(config["samples"]), seed=int(config.get("seed", 0)))
    if len(data) != count:
        return None
    return data.images.float() / 255


def activation_cka(front, end, x: torch.Tensor, i: int, j: int) -> float:
    """Minibatch linear CKA between front.activations_upto(x, i) and end.activations_upto(x, j), both models
    in eval mode, over chunks of about CKA_BATCH images (every chunk has at least 4)."""
    if len(x) < 4:
        raise ValueError(f"CKA needs at least 4 images, got {len(x)}")
    cka = metrics.MinibatchCKA()
    with torch.no_grad(), eval_mode(front, end):
        for xb in x.tensor_split(max(1, min(math.ceil(len(x) / CKA_BATCH), len(x) // 4))):
            cka.update(front.activations_upto(xb, i), end.activations_upto(xb, j))
    return cka.value()


def format_html(r: dict) -> str:
    """The result dict as a small HTML table (what the widget shows), every label in words."""
    def num(v, pct=True):
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:.2f}%" if pct else f"{v:.3f}")

    rows = [("stitch", f"{html.escape(r['front'])} at point {html.escape(point_label(r['front_point'], r['front_layer']))}"
                       f" → {html.escape(r['end'])} at point {html.escape(point_label(r['end_point'], r['end_layer']))}"
                       f", {OBJECTIVE_LABELS.get(r['objective'], r['objective'])}"),
            ("status", STATUS.get(r["status"], r["status"])),
            ("stitched model: clean accuracy", num(r["accuracy"])),
            ("end model g alone: clean accuracy", num(r["end_accuracy"])),
            ("agreement probability with g (not an accuracy, see below)", num(r["agreement"])),
            ("linear CKA of f≤i(x) and g≤j(x) (0 to 1, training-free)", num(r["cka"], pct=False))]
    if r.get("error"):
        rows.append(("error", html.escape(r["error"])))
    body = "".join(f"<tr><td style='padding-right:1em;text-align:left'>{k}</td><td style='text-align:left'>"
                   f"<b>{v}</b></td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


# ----------------------------------------------------------------------------------------------------
# Notebook 06's verdict

NOTEBOOK = "06_explorer"
SELF_STITCH_CLAIM = "self_stitch_keeps_accuracy"  # the notebook's one claim (the browser test looks for it)
SELF_TOLERANCE = 2.0  # accuracy points self-stitching at one point may lose and still "keep" the end model's


def claim_self_stitch_keeps_accuracy(self_result: dict, tolerance: float = SELF_TOLERANCE):
    """Sanity: stitching a model to itself at the same point (the affine map can be the identity) keeps the
    end model's accuracy within `tolerance` points. A: the stitched accuracy + tolerance, B: the end model's
    accuracy, on the same test images (`Explorer.result` keeps both per-image scores). Interval: paired
    bootstrap over those images."""
    from . import claims as claims_lib

    r = self_result
    if r.get("accuracy_scores") is None or r.get("end_accuracy_scores") is None:
        raise ValueError(f"{r.get('job')}: no per-image scores (status {r.get('status')!r}): look it up with "
                         f"train_if_missing=True first")
    claim = claims_lib.Claim(SELF_STITCH_CLAIM, NOTEBOOK, "explorer",
                             f"self-stitching {r['end']} at point {r['front_point'] + 1} keeps its accuracy within "
                             f"{tolerance:g} points", f"stitched accuracy + {tolerance:g} (%)", "end model accuracy (%)",
                             "sanity")
    a = np.asarray(r["accuracy_scores"], dtype=float) + tolerance
    return claims_lib.judge(claim, a, np.asarray(r["end_accuracy_scores"], dtype=float))
