"""Any network as a stitchable model: stitch points named by module, sub-networks cut out of its graph.

    net = stitchable(torchvision.models.resnet18(num_classes=10), ["layer1", "layer2", "layer3", "layer4"])
    acts = net.activations(x)                 # one forward, the activation at every point
    logits = net.forward_from(acts[1], "layer2")  # only g_{>layer2} runs

A stitch point is the output of a module, named as in ``model.named_modules()``. The wrapper traces the
network once with torch.fx (each stitch-point module kept as one opaque call, the rest of the network
traced through, as torchvision's feature extraction does) and cuts three kinds of sub-graph out of the
trace: f_{<=k} (input -> point k), the whole network with every point as an extra output, and g_{>k}
(a new input placed at point k -> every later point and the logits). g_{>k} runs only the operations
after the cut. A cut is valid only if the point's activation is the single tensor that flows from the
part before it to the part after it: a residual block's inner conv is not a valid point, since the
skip connection carries a second tensor across. Such a point is rejected with the names of the
tensors that cross.

Networks that torch.fx cannot trace (data-dependent Python control flow) fall back to forward hooks
with a warning: then g_{>k} runs the whole network on a dummy input and swaps `a` in at point k, which
is correct only if nothing before the cut reaches the layers after it, and costs a full forward.

Inputs follow the library's convention: float images in [0, 1]. The wrapper maps them to what the
network was trained on (an input range such as [-1, 1], then a per-channel normalisation such as
ImageNet's mean and std), so attacks and IRIs work in the natural input box.
"""
from __future__ import annotations

import copy
import difflib
import sys
import warnings
from typing import Sequence

import torch
import torch.fx as fx
import torch.nn as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class StitchPointError(ValueError, IndexError):
    """A stitch point that does not exist or at which the network cannot be cut; the message says why.
    (An IndexError too, like the project ResNets' out-of-range points, so either catch works.)"""


def _closest(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=5, cutoff=0.4)
    return ", ".join(repr(c) for c in close) if close else "none close"


class _PointTracer(fx.Tracer):
    """Keeps each stitch-point module as one call_module node (so its output is one node of the graph);
    everything else is traced through down to torch.nn's own leaf modules. With timm installed, its
    registry of untraceable helpers (shape asserts, ...) is honoured as torchvision's extractor does."""

    def __init__(self, points: set[str], leaf_types: tuple = (), autowrap: tuple = ()):
        super().__init__(autowrap_functions=autowrap)
        self.points, self.leaf_types = points, leaf_types

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.points or (self.leaf_types and isinstance(m, self.leaf_types)):
            return True
        return super().is_leaf_module(m, qualname)


def _timm_trace_helpers() -> tuple[tuple, tuple]:
    """timm's own lists of modules and functions that symbolic tracing must not enter (empty unless timm
    has been imported: a timm model means timm is loaded, and other models need not pay its import)."""
    if "timm" not in sys.modules:
        return (), ()
    try:
        from timm.layers import _fx as timm_fx  # noqa: PLC0415
    except Exception:  # timm is optional
        return (), ()
    modules = tuple(getattr(timm_fx, "get_notrace_modules", lambda: [])())
    functions = tuple(getattr(timm_fx, "get_notrace_functions", lambda: [])())
    return modules, functions


class Stitchable(nn.Module):
    """A network whose stitch points are module names; the protocol the stitching library runs on.

    Attributes:
        model: the wrapped network (its parameters are this module's parameters).
        stitch_points: the point names, in depth order; every method takes a point by name or index.
        in_channels, num_classes: input channels and logits (None where unknown).
        traced: True when sub-graphs are cut from an fx trace, False on the hook fallback.
    """

    def __init__(self, model: nn.Module, points: Sequence[str], *, in_channels: int | None = None,
                 num_classes: int | None = None, input_range: tuple[float, float] = (0.0, 1.0),
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 input_shape: Sequence[int] | None = None, channels_last: bool = False, trace: bool = True):
        super().__init__()
        self.model = model
        points = list(points)
        modules = dict(model.named_modules())
        if not points:
            raise StitchPointError("give at least one stitch point (a module name from model.named_modules())")
        for p in points:
            if not isinstance(p, str) or p not in modules or p == "":
                raise StitchPointError(f"no module named {p!r} in {type(model).__name__}; closest names: "
                                       f"{_closest(str(p), [n for n in modules if n])}")
        if len(set(points)) != len(points):
            raise StitchPointError(f"stitch points must be distinct, got {points}")
        for a in points:
            for b in points:
                if b.startswith(a + "."):
                    raise StitchPointError(f"stitch point {b!r} lies inside stitch point {a!r}: choose one of them")
        self.stitch_points: list[str] = points
        self.in_channels = in_channels if in_channels is not None else _first_conv_channels(model)
        self.num_classes = num_classes if num_classes is not None else _last_linear_features(model)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        lo, hi = input_range
        self.input_range = (float(lo), float(hi))
        c = self.in_channels or 1
        self.register_buffer("_mean", torch.tensor(mean if mean is not None else [0.0] * c, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("_std", torch.tensor(std if std is not None else [1.0] * c, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self._identity_input = self.input_range == (0.0, 1.0) and mean is None and std is None
        # networks whose feature maps are [B, H, W, C] (Swin, ConvNeXt-style blocks): the library sees [B, C, H, W]
        self.channels_last = channels_last
        self._graph: fx.Graph | None = None
        self._subgraphs: dict = {}
        self.traced = False
        if trace:
            self._trace()
        if not self.traced:
            self._nodes = []

    # ------------------------------------------------------------------------------------------------
    # points

    def point_index(self, k: int | str) -> int:
        """The index of stitch point `k` (a name or an index); a clear error for anything else."""
        n = len(self.stitch_points)
        if isinstance(k, str):
            if k in self.stitch_points:
                return self.stitch_points.index(k)
            raise StitchPointError(f"{k!r} is not a stitch point of this model; its points are {self.stitch_points} "
                                   f"(closest: {_closest(k, self.stitch_points)})")
        if isinstance(k, int) and not isinstance(k, bool) and 0 <= k < n:
            return k
        raise StitchPointError(f"stitch point {k!r} is out of range: this model has points 0..{n - 1} "
                               f"({', '.join(self.stitch_points)})")

    @property
    def num_points(self) -> int:
        return len(self.stitch_points)

    @torch.no_grad()
    def point_shapes(self, input_shape: Sequence[int] | None = None) -> list[tuple[int, ...]]:
        """Per-sample activation shape at every point ([C, H, W], [T, D] or [D]), from one dummy forward."""
        shape = tuple(input_shape) if input_shape is not None else self.input_shape
        if shape is None:
            raise ValueError("point_shapes needs an input shape [C, H, W] (pass it here or as stitchable(input_shape=...))")
        from .models import eval_mode

        device = next(self.parameters()).device
        with eval_mode(self):
            acts = self.activations(torch.zeros((2, *shape), device=device))
        return [tuple(a.shape[1:]) for a in acts]

    # ------------------------------------------------------------------------------------------------
    # inputs

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> the network's input convention (range, then per-channel normalisation)."""
        if self._identity_input:
            return x
        lo, hi = self.input_range
        if (lo, hi) != (0.0, 1.0):
            x = x * (hi - lo) + lo
        return (x - self._mean) / self._std

    def _out(self, a: torch.Tensor) -> torch.Tensor:
        """A point's activation as the library sees it (channels first)."""
        return a.permute(0, 3, 1, 2) if self.channels_last and a.dim() == 4 else a

    def _in(self, a: torch.Tensor) -> torch.Tensor:
        """An activation from the library in the network's own layout."""
        return a.permute(0, 2, 3, 1) if self.channels_last and a.dim() == 4 else a

    # ------------------------------------------------------------------------------------------------
    # the protocol

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))

    def activations(self, x: torch.Tensor, with_logits: bool = False):
        """The activation at every stitch point in one forward pass (plus the logits if asked)."""
        x = self.preprocess(x)
        if self.traced:
            *acts, logits = self._sub("all")(x)
        else:
            acts, logits = self._hooked(x, None, None)
        acts = [self._out(a) for a in acts]
        return (acts, logits) if with_logits else acts

    def activations_upto(self, x: torch.Tensor, k: int | str) -> torch.Tensor:
        """The activation at point k, running only what it depends on (f_{<=k})."""
        k = self.point_index(k)
        x = self.preprocess(x)
        if self.traced:
            return self._out(self._sub("upto", k)(x))
        return self._out(self._hooked(x, None, None, stop_at=k))

    def activations_from(self, a: torch.Tensor, k: int | str, with_logits: bool = False):
        """Place `a` at point k; the activations at every later point (and the logits if asked): g_{>k}."""
        k = self.point_index(k)
        a = self._in(a)
        if self.traced:
            *acts, logits = self._sub("from", k)(a)
        else:
            acts, logits = self._hooked(self._dummy_input(a), k, a)
            acts = acts[k + 1:]
        acts = [self._out(t) for t in acts]
        return (acts, logits) if with_logits else acts

    def segment(self, a: torch.Tensor, k: int | str) -> torch.Tensor:
        """The activation at point k + 1 when `a` is placed at point k: only the layers between the two points
        (the stitching engine walks g point by point with it, letting stitched batches join at each point).
        Traced networks only: the hook fallback re-runs the whole network for every cut."""
        k = self.point_index(k)
        if not self.traced:
            raise NotImplementedError(f"{type(self.model).__name__} could not be traced: no segment between points")
        if k + 1 >= len(self.stitch_points):
            raise StitchPointError(f"stitch point {k} is the last one: no segment follows it (forward_from gives the logits)")
        return self._out(self._sub("segment", k)(self._in(a)))

    def forward_from(self, a: torch.Tensor, k: int | str) -> torch.Tensor:
        """The logits when activation `a` is placed at point k."""
        k = self.point_index(k)
        a = self._in(a)
        if self.traced:
            return self._sub("head", k)(a)
        return self._hooked(self._dummy_input(a), k, a)[1]

    # ------------------------------------------------------------------------------------------------
    # graph surgery

    def _trace(self) -> None:
        leaf_types, autowrap = _timm_trace_helpers()
        tracer = _PointTracer(set(self.stitch_points), leaf_types, autowrap)
        try:
            graph = tracer.trace(self.model)
        except Exception as err:  # data-dependent control flow, unsupported ops...
            warnings.warn(f"torch.fx cannot trace {type(self.model).__name__} ({type(err).__name__}: {err}); "
                          f"falling back to forward hooks: forward_from/activations_from then run the whole network "
                          f"on a dummy input with the activation swapped in at the point (slower, and correct only "
                          f"if nothing before the cut is used after it)", stacklevel=3)
            return
        nodes = {}
        for node in graph.nodes:
            if node.op == "call_module" and node.target in self.stitch_points:
                if node.target in nodes:
                    raise StitchPointError(f"stitch point {node.target!r} is called more than once in the forward pass "
                                           f"(a shared module): its output is not one activation")
                nodes[node.target] = node
        unused = [p for p in self.stitch_points if p not in nodes]
        if unused:
            raise StitchPointError(f"stitch point(s) {unused} are never called in {type(self.model).__name__}'s forward")
        order = {n: i for i, n in enumerate(graph.nodes)}
        by_depth = sorted(self.stitch_points, key=lambda p: order[nodes[p]])
        if by_depth != self.stitch_points:
            raise StitchPointError(f"give the stitch points in the order the forward pass reaches them: {by_depth}")
        self._graph, self._nodes, self._root = graph, [nodes[p] for p in self.stitch_points], tracer.root
        self._check_cuts()
        self.traced = True

    def _check_cuts(self) -> None:
        """Every point must be the only input-dependent tensor that flows past it."""
        graph = self._graph
        image = next(n for n in graph.nodes if n.op == "placeholder")  # the rest are optional arguments (masks...)
        input_dependent = set()
        for node in graph.nodes:  # topological order
            if node is image or any(i in input_dependent for i in node.all_input_nodes):
                input_dependent.add(node)
        output = next(n for n in graph.nodes if n.op == "output")
        for name, cut in zip(self.stitch_points, self._nodes):
            needed = _ancestors(output, stop=cut)
            after = _descendants(cut)
            crossing = sorted(n.name for n in needed if n in input_dependent and n is not cut and n not in after
                              and any(u in after for u in n.users))
            if crossing:
                raise StitchPointError(
                    f"cannot cut {type(self.model).__name__} at stitch point {name!r}: besides its output, the tensor(s) "
                    f"{crossing} also flow from before the point to after it (e.g. a skip connection around it, or a "
                    f"size read from the input's shape), so "
                    f"the rest of the network cannot be run from this activation alone. Choose the module that "
                    f"encloses the whole block (e.g. the residual block instead of a layer inside it)")

    def _sub(self, kind: str, k: int | None = None) -> fx.GraphModule:
        """The sub-graph `kind` ("all", "upto", "from", "segment", "head") of point k, built once and cached."""
        key = (kind, k)
        if key not in self._subgraphs:
            self._subgraphs[key] = self._build(kind, k)
        return self._subgraphs[key]

    def _build(self, kind: str, k: int | None) -> fx.GraphModule:
        graph, env = fx.Graph(), {}
        old_out = next(n for n in self._graph.nodes if n.op == "output")
        logits_node = old_out.args[0]
        if kind == "all":
            outputs = self._nodes + [logits_node]
        elif kind == "upto":
            outputs = self._nodes[k]
        elif kind == "from":
            outputs = self._nodes[k + 1:] + [logits_node]
        elif kind == "segment":
            outputs = self._nodes[k + 1]
        else:
            outputs = logits_node
        cut = self._nodes[k] if kind in ("from", "head", "segment") else None
        # copy only what the outputs depend on, not looking past the cut: g_{>k} never runs f_{<=k}
        # (_check_cuts made sure that nothing else computed from the input is needed)
        needed = set()
        for out in (outputs if isinstance(outputs, list) else [outputs]):
            needed |= _ancestors(out, stop=cut)
        if cut is not None:  # the activation is the first argument; optional ones (with defaults) follow
            env[cut] = graph.placeholder("a")
        for node in self._graph.nodes:
            if node.op == "output" or node not in needed or node is cut:
                continue
            env[node] = graph.node_copy(node, lambda n: env[n])
        graph.output(fx.node.map_arg(outputs, lambda n: env[n]) if not isinstance(outputs, list)
                     else tuple(env[n] for n in outputs))
        gm = fx.GraphModule(self._root, graph, class_name=f"{type(self.model).__name__}_{kind}{'' if k is None else k}")
        gm.graph.lint()
        gm.recompile()
        return gm

    def __deepcopy__(self, memo):
        # An fx graph deep-copies into new nodes without telling `memo`, so the copied point list would name
        # nodes of no graph (KeyError on the next cut). Copy everything but the trace, then trace the copy.
        skip = ("_graph", "_nodes", "_root", "_subgraphs")
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for name, value in self.__dict__.items():
            if name not in skip:
                new.__dict__[name] = copy.deepcopy(value, memo)
        new._graph, new._nodes, new._subgraphs = None, [], {}
        if self.traced:
            new.traced = False
            new._trace()
        return new

    def _apply(self, fn, *args, **kwargs):
        # a device or dtype move may replace tensors the cached sub-graphs hold: rebuild them lazily
        self._subgraphs = {}
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------------------------------------
    # the hook fallback (untraceable networks)

    def _dummy_input(self, a: torch.Tensor) -> torch.Tensor:
        if self.input_shape is None:
            raise ValueError("this network could not be traced: re-entering it at a stitch point needs "
                             "stitchable(..., input_shape=(C, H, W)) to build a dummy input")
        return torch.zeros((a.shape[0], *self.input_shape), device=a.device, dtype=a.dtype)

    def _hooked(self, x, replace_at: int | None, replacement, stop_at: int | None = None):
        modules = dict(self.model.named_modules())
        acts: list = [None] * len(self.stitch_points)

        class _Stop(Exception):
            pass

        def hook_for(i):
            def hook(module, inputs, output):
                if i == replace_at:
                    output = replacement
                acts[i] = output
                if i == stop_at:
                    raise _Stop
                return output
            return hook

        handles = [modules[p].register_forward_hook(hook_for(i)) for i, p in enumerate(self.stitch_points)]
        try:
            logits = self.model(x)
        except _Stop:
            return acts[stop_at]
        finally:
            for h in handles:
                h.remove()
        return acts, logits


def _ancestors(node: fx.Node, stop: fx.Node) -> set:
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n is not stop:
            todo.extend(n.all_input_nodes)
    return seen


def _descendants(node: fx.Node) -> set:
    seen, todo = set(), list(node.users)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(n.users)
    return seen


def _first_conv_channels(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def _last_linear_features(model: nn.Module) -> int | None:
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m.out_features
    return last


def stitchable(model: nn.Module, points: Sequence[str], **options) -> Stitchable:
    """Wrap any network so that the stitching library can use it: stitch points are module names.

    Args:
        model: any nn.Module mapping images to logits.
        points: module names (as in model.named_modules()), in forward order.
        in_channels, num_classes: default to the first Conv2d's input channels and the last Linear's outputs.
        input_range: the value range the network expects, e.g. (-1, 1); inputs to the wrapper are in [0, 1].
        mean, std: per-channel normalisation applied after the range, e.g. IMAGENET_MEAN / IMAGENET_STD.
        input_shape: (C, H, W), for point_shapes() and for the hook fallback.
        channels_last: the network's feature maps are [B, H, W, C] (torchvision's Swin, for example); the
            library then sees them as [B, C, H, W]. Without it such a map would be read as C=H, H=W, W=C.
        trace: False forces the hook fallback (for testing; tracing is the default).
    """
    return Stitchable(model, points, **options)


def proportional_points(n_front: int, n_end: int) -> list[int]:
    """Depth-proportional mapping between architectures with different numbers of stitch points (the
    authors' `relative_front_index`): end point e (0-based) is paired with front point
    round(e * (n_front - 1) / (n_end - 1)), so first maps to first and last to last (ties round to even,
    as numpy does)."""
    if n_front < 1 or n_end < 1:
        raise ValueError(f"need at least one point on each side, got {n_front} and {n_end}")
    if n_end == 1:
        return [n_front - 1]
    import numpy as np

    return [int(v) for v in np.linspace(0, n_front - 1, n_end).round().astype(int)]


def num_points(model) -> int:
    """How many stitch points a model of the library has (9 for the project's ResNets)."""
    return len(model.stitch_points)


def point_index(model, k: int | str) -> int:
    """Point `k` of `model` (a name or an index) as an index, with a clear error for anything else."""
    if hasattr(model, "point_index"):
        return model.point_index(k)
    raise TypeError(f"{type(model).__name__} is not a stitchable model: wrap it with fula_core.models.stitchable(model, points)")
