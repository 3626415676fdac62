"""The layer explorer: pick a front model, an end model, a front and an end stitch point and an objective,
and see the stitched model's clean accuracy, its agreement with the end model and the linear CKA between
f_{<=i} and g_{<=j} on test images; a missing stitch trains on request.

    ex = Explorer(store, "quick", device)
    ex.result("fashion_mnist_1", "fashion_mnist_0", 4, 4, "fula")                        # cached only
    ex.result("digits_0", "fashion_mnist_0", 6, 2, "hint", train_if_missing=True)       # trains if needed
    ex.widget()                                                                          # ipywidgets UI

Stitches use the same cache keys as the notebooks (profile's StitchConfig, stitch training subset of the
end model's task, clean evaluation on the profile's test subset), so whatever 01-04 trained is found here.
"""
from __future__ import annotations

import dataclasses
import html
import math

import torch

from . import metrics
from .config import Profile, get_profile
from .crosslayer import OBJECTIVE_LABELS, eval_spec, train_spec
from .experiments import Stitcher, baseline_rows
from .models import build, eval_mode
from .stitching import OBJECTIVES, StitchJob
from .store import ResultStore

EXPLORER_VERSION = 1
CKA_BATCH = 500  # minibatch CKA over the test subset in chunks of about this many images (bounded memory)
STATUS = {"cached": "from the cache", "trained": "trained just now",
          "not trained": "stitch not trained yet: press the button to train it",
          "models not trained": "a base model is not trained yet: run 00_base_models or press the button"}


class Explorer:
    """Stitching results for any (front model, end model, front point, end point, objective) of a profile."""

    def __init__(self, store: ResultStore, profile: str | Profile, device="cpu", *, arch: str | None = None,
                 configs: dict | None = None, data_dir=None, progress: bool = True):
        """configs: model id -> TrainConfig (default: the profile's zoo, `zoo.zoo_configs(P, arch)`)."""
        from .zoo import zoo_configs

        self.P = profile if isinstance(profile, Profile) else get_profile(profile)
        self.store, self.device, self.data_dir, self.progress = store, device, data_dir, progress
        self.configs = dict(configs) if configs is not None else zoo_configs(self.P, arch)
        self.model_ids = list(self.configs)
        self.objectives = tuple(dict.fromkeys(tuple(self.P.objectives) + ("dm",)))
        first = next(iter(self.configs.values()))
        self.point_names = build(first.arch, 2, 1, width=1).stitch_points
        self.points = list(range(len(self.point_names)))
        self._stitchers: dict[tuple[str, str], Stitcher] = {}
        self.controls: dict = {}  # the widgets of the last .widget() box, by name

    # ------------------------------------------------------------------------------------------------
    # the pure part: what the widgets and the tests call

    def model_cached(self, model_id: str) -> bool:
        return self.store.has("model", dataclasses.asdict(self._cfg(model_id)))

    def result(self, front_id: str, end_id: str, i: int, j: int, objective: str,
               train_if_missing: bool = False) -> dict:
        """The stitch front_id[i] -> end_id[j] under `objective` (clean training, alpha 0).

        Returns a dict: front, end, front_point, end_point, front_layer, end_layer, objective, job,
        status ("cached", "trained", "not trained", "models not trained"), accuracy and agreement (%),
        cka (linear CKA of f_{<=i} and g_{<=j} on the test subset), end_accuracy (%), error. Nothing trains
        unless train_if_missing; the numbers that are not available are NaN.
        """
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
        job = StitchJob(int(i), int(j), objective)
        front_cfg, end_cfg = self._cfg(front_id), self._cfg(end_id)
        out = {"front": front_id, "end": end_id, "front_point": job.front_point, "end_point": job.end_point,
               "front_layer": self.point_names[job.front_point], "end_layer": self.point_names[job.end_point],
               "objective": objective, "job": job.name, "status": "", "accuracy": math.nan, "agreement": math.nan,
               "cka": math.nan, "end_accuracy": math.nan, "error": ""}
        if not train_if_missing and not (self.model_cached(front_id) and self.model_cached(end_id)):
            out["status"] = "models not trained"
            return out
        st = self._stitcher(front_id, end_id)
        out["cka"] = self.cka(front_id, end_id, job.front_point, job.end_point)
        spec = eval_spec(self.P, end_cfg.dataset)
        base = baseline_rows(self.store, st.end, end_cfg, "end", [spec], self.device, self.data_dir)
        out["end_accuracy"] = next(r["value"] for r in base if r["metric"] == "accuracy")
        cached = self.store.has("stitch", st.key(job))
        if not cached and not train_if_missing:
            out["status"] = "not trained"
            return out
        rows = st.evaluate([job], [spec])
        values = {r["metric"]: r["value"] for r in rows}
        out.update(status="cached" if cached else "trained", accuracy=values["accuracy"],
                   agreement=values["agreement"], error=rows[0]["error"])
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

    def _cfg(self, model_id: str):
        if model_id not in self.configs:
            raise KeyError(f"unknown model {model_id!r}: choose one of {', '.join(self.model_ids)}")
        return self.configs[model_id]

    def _stitcher(self, front_id: str, end_id: str) -> Stitcher:
        if (front_id, end_id) not in self._stitchers:
            front_cfg, end_cfg = self._cfg(front_id), self._cfg(end_id)
            self._stitchers[front_id, end_id] = Stitcher(
                self.store, front_cfg, end_cfg, self.P.stitch, train_spec(self.P, end_cfg.dataset), self.device,
                data_dir=self.data_dir, progress=self.progress)
        return self._stitchers[front_id, end_id]

    # ------------------------------------------------------------------------------------------------
    # the widgets

    def widget(self, front_id: str | None = None, end_id: str | None = None, i: int = 4, j: int = 4,
               objective: str = "fula"):
        """An ipywidgets box: dropdowns for the models, points and objective, the cached result, and a button
        that trains a missing stitch (progress bar in the box). Nothing trains until the button is pressed.
        The widgets are also kept in `self.controls` (front, end, front_point, end_point, objective, train,
        result, log) for scripting and tests."""
        import ipywidgets as W

        ids = self.model_ids
        end_id = end_id or ids[0]
        front_id = front_id or (ids[1] if len(ids) > 1 else ids[0])
        points = [(f"{k}: {name}", k) for k, name in enumerate(self.point_names)]
        style = {"description_width": "initial"}
        front = W.Dropdown(options=ids, value=front_id, description="front model f", style=style)
        end = W.Dropdown(options=ids, value=end_id, description="end model g", style=style)
        fp = W.Dropdown(options=points, value=i, description="front point i", style=style)
        ep = W.Dropdown(options=points, value=j, description="end point j", style=style)
        obj = W.Dropdown(options=[(OBJECTIVE_LABELS.get(o, o), o) for o in self.objectives], value=objective,
                         description="objective", style=style)
        button = W.Button(description="Train missing stitch", icon="play", button_style="primary")
        shown = W.HTML()
        log = W.Output()

        def selection():
            return front.value, end.value, fp.value, ep.value, obj.value

        def refresh(*_):
            try:
                r = self.result(*selection(), train_if_missing=False)
            except Exception as err:  # show it in the box: a widget callback has nowhere else to report
                shown.value = f"<b>error:</b> {html.escape(str(err))}"
                return
            shown.value = format_html(r)
            button.disabled = r["status"] in ("cached", "trained")

        def train(_):
            button.disabled = True
            with log:
                log.clear_output()
                try:
                    r = self.result(*selection(), train_if_missing=True)
                except Exception as err:
                    print(f"training failed: {err}")
                    button.disabled = False
                    return
            shown.value = format_html(r)

        for w in (front, end, fp, ep, obj):
            w.observe(refresh, names="value")
        button.on_click(train)
        self.controls = {"front": front, "end": end, "front_point": fp, "end_point": ep, "objective": obj,
                         "train": button, "result": shown, "log": log}
        refresh()
        return W.VBox([W.HBox([front, end, obj]), W.HBox([fp, ep, button]), shown, log])


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
    """The result dict as a small HTML table (what the widget shows)."""
    def num(v, pct=True):
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:.2f}%" if pct else f"{v:.3f}")

    rows = [("stitch", f"{html.escape(r['front'])}[{r['front_point']}: {r['front_layer']}] → "
                       f"{html.escape(r['end'])}[{r['end_point']}: {r['end_layer']}], "
                       f"{OBJECTIVE_LABELS.get(r['objective'], r['objective'])}"),
            ("status", STATUS.get(r["status"], r["status"])),
            ("stitched clean accuracy", num(r["accuracy"])), ("agreement with g", num(r["agreement"])),
            ("end model accuracy", num(r["end_accuracy"])), ("linear CKA f≤i vs g≤j", num(r["cka"], pct=False))]
    if r.get("error"):
        rows.append(("error", html.escape(r["error"])))
    body = "".join(f"<tr><td style='padding-right:1em'>{k}</td><td><b>{v}</b></td></tr>" for k, v in rows)
    return f"<table>{body}</table>"
