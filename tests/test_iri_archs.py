"""Notebook 05's information testbed on paper 2's three architectures (Profile.iri_archs): the plan at `paper`
(architectures, points, models), the smoke / quick plans unchanged, and SimCLR fronts of VGG-16 and ViT-Tiny."""
import dataclasses
import hashlib

import pytest
import torch

from fula_core import config, figure_list, models, simclr, units, zoo
from fula_core import iri_testbeds as T
from fula_core.store import config_key

# sha256 of the sorted unit ids (unit ids hash the configs: models, IRI sets, stitch groups, passes) of the
# smoke and quick profiles: the information testbed's further architectures (paper only) must leave them as they
# were. A deliberate change of either profile, or of how many stitch passes its notebooks make, updates its digest
# here (last: notebook 08 with two colour-model replicates at quick)
UNITS_BEFORE = {"smoke": "d646e0514ce1b24f", "quick": "1ba3a3c749924b8e"}


def _digest(profile: str) -> str:
    return hashlib.sha256("\n".join(sorted(units.enumerate_units(profile).units)).encode()).hexdigest()[:16]


@pytest.mark.parametrize("profile", ["smoke", "quick"])
def test_smoke_and_quick_plans_are_unchanged(profile):
    P = config.get_profile(profile)
    assert P.info_archs == ("resnet18",) and P.iri_archs == ()
    pl = T.plan(P)
    assert pl.arch_info == {}
    assert set(T.stitch_passes(pl)) == {"information", "adversarial", "shortcut"}
    assert T.arch_figure_names(P) == []
    assert not any(n.startswith("fig_info_stitching_") for n in figure_list.expected_figures(P))
    assert _digest(profile) == UNITS_BEFORE[profile]


def test_paper_plans_the_authors_three_architectures():
    P = config.get_profile("paper")
    assert P.info_archs == ("resnet18", "vgg16", "vit_tiny")
    pl = T.plan(P)
    assert list(pl.arch_info) == ["vgg16", "vit_tiny"]
    # every point of each architecture (the authors: front_layer_index null), the main one at iri_points
    assert pl.points == tuple(range(9))
    assert pl.arch_info["vgg16"].points == tuple(range(6)) and pl.arch_info["vit_tiny"].points == tuple(range(13))
    for arch, a in pl.arch_info.items():
        assert a.end_cfg.arch == arch and a.end_cfg.seed == P.seeds[0] and a.end_cfg.lr == 0.01  # the authors' lr
        assert set(a.fronts) == {(pair, s) for pair in T.PAIRS for s in (1, 2, 3)}
        for (pair, s), cfg in a.fronts.items():
            assert cfg.arch == arch and cfg.width == 64 and cfg.dataset == P.end_dataset
            assert cfg.seed == (P.seeds[0] if pair == "identical" else s)
            assert cfg.lr == 0.01 and (pair != "cross-supervision" or cfg.probe_lr == 0.01)
            assert getattr(cfg, "shortcut", None) == (P.cross_bias_shortcut if pair == "cross-bias" else None)
        assert isinstance(a.fronts["cross-supervision", 1], simclr.SimCLRConfig)
    # stitches: stitch seeds x 4 pairs x 3 front seeds x 2 data modes x 4 objectives x points
    rows = pl.expected_rows()
    assert rows[T.info_testbed("vgg16")] == 1 * 4 * 3 * 2 * 4 * 6
    assert rows[T.info_testbed("vit_tiny")] == 1 * 4 * 3 * 2 * 4 * 13
    # passes: per front, one real-data call for all 13 points and one IRI call per point
    assert T.stitch_passes(pl)[T.info_testbed("vit_tiny")] == (4 * 3 * (1 + 13), 1248)
    # one IRI set per front, source and point (identical fronts invert each front seed's own stitch data)
    asks = [r for r in T.iri_requests(P, pl) if r.testbed.startswith("information (")]
    assert len(asks) == 12 * 6 + 12 * 13
    assert T.arch_figure_names(P) == ["fig_info_stitching_vgg16", "fig_info_stitching_vit_tiny"]
    assert [T.point_label(a) for a in pl.arch_info] == ["stitch point (1-6)", "stitch point (1-13)"]
    assert {"fig_info_stitching_vgg16", "fig_info_stitching_vit_tiny"} <= set(figure_list.expected_figures(P))


def test_paper_zoo_lists_every_model_the_testbed_needs():
    P = config.get_profile("paper")
    configs = zoo.all_zoo_configs(P)
    keys = {config_key(c) for c in configs.values()}
    for a in T.plan(P).arch_info.values():
        assert config_key(a.end_cfg) in keys
        assert {config_key(c) for c in a.fronts.values()} <= keys
    # per further architecture: the end model, then 3 cross-seed + 3 cross-bias + 3 SimCLR fronts
    extra = [mid for mid in configs if mid.endswith((" vgg16", " vit_tiny"))]
    assert len(extra) == 2 * (1 + 9)
    # the units (run_all.sh / Ray) train them before notebook 05 and list its new IRI sets and passes
    c = units.enumerate_units("paper").counts()
    assert (c["base_model"], c["simclr_front"], c["iri_set"], c["paper2_pass"]) == (59, 9, 582, 906)


def test_shrunk_paper_keeps_the_architectures_at_their_end_points():
    S = config.get_profile("paper-shrunk")
    assert S.info_archs == ("resnet18", "vgg16", "vit_tiny")
    assert S.iri_points_of("vgg16") == (0, 5) and S.iri_points_of("vit_tiny") == (0, 12)
    assert S.iri_points_of("resnet18") == S.iri_points


def test_profile_rejects_a_bad_architecture_list():
    P = config.get_profile("paper")
    with pytest.raises(ValueError, match="must start with the main architecture"):
        dataclasses.replace(P, iri_archs=("vgg16", "resnet18"))
    with pytest.raises(ValueError, match="unknown architecture"):
        dataclasses.replace(P, iri_archs=("resnet18", "vgg19"))
    with pytest.raises(ValueError, match="stitch points 0..5"):
        dataclasses.replace(P, iri_arch_points={"vgg16": (0, 6)})
    assert models.num_stitch_points("vit_tiny") == 13 and models.num_stitch_points("resnet34") == 9


def test_simclr_lr_follows_the_architecture():
    P = config.get_profile("paper")
    assert (P.simclr_config(1).lr, P.simclr_config(1).probe_lr) == (0.1, 0.1)  # ResNet-18: unchanged
    assert P.simclr_config(1) == P.simclr_config(1, "resnet18")
    for arch in ("vgg16", "vit_tiny"):
        cfg = P.simclr_config(1, arch)
        assert (cfg.arch, cfg.lr, cfg.probe_lr) == (arch, 0.01, 0.01)


@pytest.mark.parametrize("arch, probe", [("vgg16", "classifier"), ("vit_tiny", "heads.head")])
def test_simclr_trains_vgg_and_vit_fronts(arch, probe):
    """The encoder ends where the authors' make_simclr_model puts the projector; the probe phase trains the
    authors' get_classifier only."""
    torch.manual_seed(0)
    train = __import__("fula_core.data", fromlist=["load"]).load("synthetic", "train").take(64, seed=0)
    net = models.build(arch, train.num_classes, in_channels=train.images.shape[1], width=4,
                       image_size=train.images.shape[-1])
    head = simclr.probe_head(net)
    assert head is net.model.get_submodule(probe)
    x = train.images[:5].float() / 255
    h = simclr.features(net, x)
    assert h.shape == (5, simclr.feature_dim(net))
    net.eval()
    assert torch.allclose(head(simclr.features(net, x)), net(x), atol=1e-5)  # h is exactly what the head reads
    cfg = simclr.SimCLRConfig("synthetic", arch=arch, width=4, epochs=1, batch_size=16, proj_hidden=16, proj_dim=8,
                              probe_epochs=1, probe_batch_size=16, lr=0.01, probe_lr=0.01)
    log = {}
    trained = simclr.train_simclr(cfg, train, log=log)
    assert len(log["pretrain_losses"]) == 1 and len(log["probe_losses"]) == 1
    assert all(torch.isfinite(torch.tensor(log["pretrain_losses"] + log["probe_losses"])))
    assert trained(x).shape == (5, train.num_classes)
