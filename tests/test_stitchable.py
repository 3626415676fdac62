"""Stitching any network by layer name: the generic wrapper, the stitch families and the library around them."""
import dataclasses
import math

import pytest
import torch
import torch.nn as nn
import torchvision

from fula_core import data, invariance, models, stitching
from fula_core.experiments import DataSpec, EvalSpec, Stitcher
from fula_core.stitchable import StitchPointError, proportional_points
from fula_core.stitching import StitchConfig, StitchJob
from fula_core.store import ResultStore

CFG = StitchConfig(epochs=1, batch_size=32, lstsq_samples=64, bn_mode="eval", augment=False, pgd_steps=1)


def tv_resnet():
    torch.manual_seed(0)
    net = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=4)
    return models.stitchable(net, ["layer1", "layer2", "layer3", "layer4"], mean=data_mean(), std=data_std())


def data_mean():
    return (0.5, 0.5, 0.5)


def data_std():
    return (0.25, 0.25, 0.25)


def tv_vit(patch: int = 4):
    from collections import OrderedDict

    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    net = VisionTransformer(image_size=16, patch_size=patch, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=4)
    net.heads = nn.Sequential(OrderedDict(pre_logits=nn.Identity(), head=net.heads.head))
    # not "conv_proj": torchvision's ViT reads the batch size from the input's shape after the patch embedding,
    # so that cut is rejected (a value from before the cut is needed after it)
    return models.stitchable(net, ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1",
                                   "heads.pre_logits"], input_range=(-1, 1))


def zoo_vgg():
    torch.manual_seed(0)
    return models.build("vgg16", 4, 3, width=2)


def timm_vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, embed_dim=16,
                            depth=2, num_heads=2, num_classes=4)
    return models.stitchable(net, ["blocks.0", "blocks.1", "head_drop"])


MODELS = {"torchvision_resnet": tv_resnet, "torchvision_vgg16": zoo_vgg, "torchvision_vit": tv_vit, "timm_vit": timm_vit}


@pytest.fixture(scope="module")
def synthetic():
    return data.load("synthetic", "train").take(96), data.load("synthetic", "test").take(32)


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_from_reproduces_forward_at_every_point(name):
    net = MODELS[name]().eval()
    assert net.traced
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        acts, logits = net.activations(x, with_logits=True)
        ref = net(x)
        torch.testing.assert_close(logits, ref)
        for k, point in enumerate(net.stitch_points):
            torch.testing.assert_close(net.forward_from(acts[k], k), ref, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(net.forward_from(acts[k], point), ref, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(net.activations_upto(x, point), acts[k])
            later, out = net.activations_from(acts[k], k, with_logits=True)
            assert len(later) == len(acts) - k - 1
            for a, b in zip(later, acts[k + 1:]):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert len(net.point_shapes((3, 16, 16))) == len(net.stitch_points)


def test_forward_from_runs_only_the_later_layers():
    net = tv_resnet().eval()
    calls = []
    net.model.layer1.register_forward_hook(lambda *_: calls.append("layer1"))
    net.model.layer3.register_forward_hook(lambda *_: calls.append("layer3"))
    a = net.activations_upto(torch.rand(2, 3, 16, 16), "layer2")
    calls.clear()
    net.forward_from(a, "layer2")
    assert calls == ["layer3"]


def test_input_conventions_are_inside_the_wrapper():
    net = tv_resnet().eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.model((x - 0.5) / 0.25))
    vit = tv_vit().eval()
    with torch.no_grad():
        torch.testing.assert_close(vit(x), vit.model(x * 2 - 1))


@pytest.mark.parametrize("name", ["torchvision_resnet", "torchvision_vgg16", "torchvision_vit"])
def test_self_stitch_with_least_squares_init_reproduces_the_logits(name, synthetic):
    net = MODELS[name]().eval()
    # the least-squares map is unique (the identity) only where the K samples give more rows (pixels or
    # tokens) than unknowns per output channel; deep 1x1 maps of the wide torchvision ResNet have too few
    rows = {p: 96 * (math.prod(s[1:]) if len(s) == 3 else s[0] if len(s) == 2 else 1)
            for p, s in zip(net.stitch_points, net.point_shapes((3, 16, 16)))}
    chans = {p: s[0] if len(s) == 3 else s[-1] for p, s in zip(net.stitch_points, net.point_shapes((3, 16, 16)))}
    jobs = [StitchJob(p, p, "dm") for p in net.stitch_points if rows[p] > 2 * (chans[p] + 1)]
    assert len(jobs) >= 2
    outcomes = stitching.train_stitches(net, net, jobs, synthetic[0], dataclasses.replace(CFG, lstsq_samples=96),
                                        progress=False)
    x = synthetic[1].images.float() / 255
    with torch.no_grad():
        ref = net(x)
        for o in outcomes:
            assert o.job.front_point in net.stitch_points  # the caller's job (names) comes back
            torch.testing.assert_close(o.model(net, net).eval()(x), ref, atol=2e-3, rtol=2e-3)


def test_fula_slm_and_adversarial_jobs_train(synthetic):
    cnn, vit = tv_resnet(), tv_vit()
    jobs = [StitchJob("layer2", "layer2", "fula"), StitchJob("layer3", "layer3", "slm"),
            StitchJob(1, 1, "fula", alpha=1.0), StitchJob("layer4", "layer4", "fula", fula_weights=(1.0,))]
    for o in stitching.train_stitches(cnn, cnn, jobs, synthetic[0], CFG, progress=False):
        assert o.error is None and len(o.losses) == 1, o
    # CNN -> ViT (conv -> token, class token from the spatial mean), token -> token and vector -> vector
    jobs = [StitchJob("layer2", "encoder.layers.encoder_layer_0", "fula"),
            StitchJob("layer3", "heads.pre_logits", "slm", alpha=1.0)]
    for o in stitching.train_stitches(cnn, vit, jobs, synthetic[0], CFG, progress=False):
        assert o.error is None
        assert o.model(cnn, vit)(synthetic[1].images[:4].float() / 255).shape == (4, 4)
    # FuLA weights count the end model's own later points (this ViT: 3 points)
    with pytest.raises(ValueError, match="need 2 FuLA weights"):
        stitching.train_stitches(vit, vit, [StitchJob(1, 1, "fula", fula_weights=(1.0,) * 9)], synthetic[0], CFG,
                                 progress=False)


def test_stitch_families_and_least_squares():
    assert stitching.Stitch.between((8, 4, 4), (5, 3, 3)).end_kind == "conv"
    tok = stitching.Stitch.between((8, 4, 4), (17, 6))  # 4x4 patch grid + a class token
    out = tok(torch.randn(2, 8, 4, 4))
    assert out.shape == (2, 17, 6)
    a = torch.randn(50, 10, 3)
    w_true = torch.randn(4, 3)
    t = a @ w_true.T + 0.5
    w, b = stitching.lstsq_init(a, t)
    torch.testing.assert_close(w, w_true, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b, torch.full((4,), 0.5), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="vector has no spatial layout"):
        stitching.Stitch.between((8,), (4, 2, 2))


def test_clear_errors():
    tv = torchvision.models.resnet18(num_classes=4)
    with pytest.raises(StitchPointError, match="closest names: 'layer2'"):
        models.stitchable(tv, ["layr2"])
    with pytest.raises(StitchPointError, match=r"cannot cut ResNet at stitch point 'layer1.0.conv1'.*\['maxpool'\]"):
        models.stitchable(tv, ["layer1.0.conv1"])
    with pytest.raises(StitchPointError, match="order"):
        models.stitchable(tv, ["layer2", "layer1"])
    net = tv_resnet()
    with pytest.raises(StitchPointError, match="out of range"):
        net.forward_from(torch.zeros(1), 7)
    with pytest.raises(StitchPointError, match="closest: 'layer3'"):
        net.activations_upto(torch.zeros(1, 3, 16, 16), "layer33")
    coarse, fine = tv_vit(4), tv_vit(2)  # 16 + 1 tokens against 64 + 1
    stitch = stitching.Stitch.between((17, 16), (65, 16))
    with pytest.raises(ValueError, match="token counts differ: the front point has 17 tokens, the end point 65"):
        stitch(torch.zeros(1, 17, 16))
    with pytest.raises(ValueError, match="token counts differ"):
        stitching.init_stitches(coarse, fine, [StitchJob(1, 1, "dm")], data.load("synthetic", "train").take(8), CFG)
    with pytest.raises(StitchPointError, match="cannot cut VisionTransformer at stitch point 'conv_proj'"):
        models.stitchable(coarse.model, ["conv_proj"])


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > -1e9:  # always true, but depends on the data
            h = torch.relu(h)
        return self.head(self.b(h).mean((2, 3)))


def test_untraceable_model_falls_back_to_hooks_with_a_warning():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="falling back to forward hooks"):
        net = models.stitchable(Branchy(), ["a", "b"], input_shape=(3, 8, 8))
    assert not net.traced
    x = torch.rand(2, 3, 8, 8)
    acts = net.activations(x)
    torch.testing.assert_close(net.forward_from(acts[1], "b"), net(x))
    torch.testing.assert_close(net.activations_upto(x, 1), acts[1])
    # no segments on the fallback: the engine's batched clean jobs then take one pass per end point
    with pytest.raises(NotImplementedError, match="could not be traced"):
        net.segment(acts[0], 0)
    assert not stitching._segmented(net) and stitching._segmented(tv_resnet())


def test_iris_from_a_wrapped_front_halve_the_inversion_error(synthetic):
    net = tv_resnet().eval()
    iris = invariance.generate_iris(net, "layer1", synthetic[0].take(16), steps=40, step_size=4 / 255, progress=False)
    s = iris.summary()
    assert s["final_error"] < 0.5 * s["initial_error"], s
    cka = invariance.cka_per_point(net, net, synthetic[1], ["layer1", 2])
    assert cka["layer1"] == pytest.approx(1.0, abs=1e-4) and cka[2] == pytest.approx(1.0, abs=1e-4)


def test_proportional_mapping_matches_the_authors_linspace():
    assert proportional_points(9, 9) == list(range(9))
    assert proportional_points(9, 6) == [0, 2, 3, 5, 6, 8]  # round(linspace(0, 8, 6)), ties to even
    assert proportional_points(6, 13)[0] == 0 and proportional_points(6, 13)[-1] == 5
    jobs = stitching.proportional_jobs(models.build("resnet18", 4, 3, width=2), zoo_vgg(), "fula")
    assert [(j.front_point, j.end_point) for j in jobs] == [(0, 0), (2, 1), (3, 2), (5, 3), (6, 4), (8, 5)]


def test_own_data_in_the_cached_runner(tmp_path):
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.rand(96, 3, 16, 16, generator=gen), torch.randint(0, 4, (96,), generator=gen)
    train = data.ImageSet.from_tensors(images[:64], labels[:64], name="mine", augmentation={"crop_padding": 2, "flip": True})
    test = data.ImageSet.from_tensors(images[64:], labels[64:], classes=list("abcd"), name="mine", split="test")
    assert train.images.dtype == torch.uint8 and train.num_classes == 4
    name = data.register("mine", train, test)
    assert data.load(name, "test").name == f"{name}/test"
    x, _ = next(data.batches(train, 8, shuffle=True, generator=torch.Generator().manual_seed(0), augment_data=True))
    assert x.shape == (8, 3, 16, 16)
    with pytest.raises(ValueError, match="give the set its own"):
        next(data.batches(dataclasses.replace(train, name="other/train", augmentation=None), 8, shuffle=False,
                          augment_data=True))
    ds = torchvision.datasets.FakeData(size=6, image_size=(1, 8, 8), num_classes=3, random_offset=0)
    from_ds = data.ImageSet.from_dataset(ds, name="fake")
    assert from_ds.images.shape == (6, 1, 8, 8) and from_ds.labels.max() < 3

    net = tv_resnet()
    stitcher = Stitcher(ResultStore(tmp_path), {"model": "tv_resnet"}, {"model": "tv_resnet"},
                        dataclasses.replace(CFG, augment=True), DataSpec(name), "cpu", front=net, end=net,
                        progress=False)
    rows = stitcher.evaluate([StitchJob("layer2", "layer2", "fula")], [EvalSpec(DataSpec(name, "test"))])
    assert {r["metric"] for r in rows} == {"accuracy", "agreement"} and all(r["value"] == r["value"] for r in rows)


@pytest.mark.parametrize("arch", ["vgg16", "vit_tiny"])
def test_paper2_architectures_train_and_restore_through_the_zoo(arch):
    from fula_core import config, train

    cfg = dataclasses.replace(config.get_profile("smoke").train_config("synthetic", 0, arch=arch), width=2, epochs=1,
                              train_subset=64, batch_size=32)
    assert cfg.lr == 0.01  # the authors' recipe for VGG-16 and ViT-Tiny
    model = train.train_model(cfg, data.load("synthetic", "train"), progress=False)
    assert len(model.stitch_points) == {"vgg16": 6, "vit_tiny": 13}[arch]
    restored = train.restore_model(train.model_payload(model), cfg, "memory")
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(x), model.eval()(x))


class ChannelsLast(nn.Module):
    """Feature maps kept as [B, H, W, C] between blocks, as Swin transformers do."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(3, 6), nn.Linear(6, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = self.b(torch.relu(self.a(x.permute(0, 2, 3, 1))))
        return self.head(h.mean((1, 2)))


def test_channels_last_feature_maps_are_seen_channels_first():
    torch.manual_seed(0)
    net = models.stitchable(ChannelsLast(), ["a", "b"], channels_last=True).eval()
    x = torch.rand(2, 3, 8, 8)
    acts = net.activations(x)
    assert [tuple(a.shape[1:]) for a in acts] == [(6, 8, 8), (5, 8, 8)]
    torch.testing.assert_close(net.forward_from(acts[0], "a"), net(x))
    torch.testing.assert_close(net.activations_from(acts[0], 0)[0], acts[1])



@pytest.mark.parametrize("name", ["torchvision_resnet", "torchvision_vgg16"])
def test_a_deep_copy_cuts_its_own_network(name):
    import copy

    net = MODELS[name]().eval()
    x = torch.rand(4, 3, 16, 16) if name != "torchvision_vgg16" else torch.rand(4, 3, 32, 32)
    a = net.activations_upto(x, 1)
    net.forward_from(a, 1)  # the original's sub-graphs are built before the copy
    twin = copy.deepcopy(net)
    assert twin.traced and torch.equal(twin.forward_from(a, 1), net.forward_from(a, 1))
    # a cut the original never made: built from the copy's own trace
    b = net.activations_upto(x, 2)
    assert torch.equal(twin.activations_upto(x, 2), b) and torch.equal(twin.forward_from(b, 2), net.forward_from(b, 2))
    with torch.no_grad():  # the copy runs its own weights, not the original's
        for p in twin.parameters():
            p.mul_(0.5)
    assert not torch.equal(twin.forward_from(a, 1), net.forward_from(a, 1))
    assert all(not torch.equal(p, q) for p, q in zip(twin.parameters(), net.parameters()) if p.abs().sum() > 0)
