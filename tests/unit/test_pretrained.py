"""Registry backbones: the packaged EfficientNet-Lite0 weights, frozen parts, weight errors, ONNX export.

CPU cost: about a minute on 2 busy cores; most of it is the linear probe (3 x 600 photos at 128 px) and
the ONNX export of EfficientNet-Lite0.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from model_core.checkpoint import load_bundle, save_bundle
from model_core.config import BackboneSpec, InputSpec, NetworkSpec, WeightsAccess
from model_core.export import PARITY_TOLERANCE, export_onnx
from model_core.learner import Learner, TaskInfo
from model_core.networks import create_network
from model_core.networks.pretrained import resolve_network_spec
from model_core.networks.weights import BackboneError, WeightsError, package_weights_file, read_state_dict
from model_core.packaged_weights import record_packaged
from model_core.probe import linear_probe, photo_folder

PROBE_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10-mini"
# Linear probe on cifar10-mini: 30 photos a class to fit and 30 others to score, 10 classes, 128 px,
# logistic regression on the frozen features. Measured (python -m benchmarks.linear_probe): packaged weights 0.640; random weights 0.20-0.23 (two inits); the
# packaged tensors in a wrong order (permuted among tensors of equal shape) 0.140; the packaged weights
# with timm's ImageNet mean/std instead of their own [-1, 1] scaling 0.550. The floor sits between.
PROBE_PER_CLASS, PROBE_RES, PROBE_FLOOR = 30, 128, 0.58
LITE0 = "timm/efficientnet_lite0"


def lite0(resolution: int = 64, channels: int = 3, size: int = 32, **kw: object) -> NetworkSpec:
    return NetworkSpec(InputSpec("image", channels, size, size), backbone=BackboneSpec(LITE0, resolution=resolution, **kw))  # type: ignore[arg-type]


# --- the packaged weights ----------------------------------------------------------------------------


def test_package_weights_map_one_to_one_in_order_onto_timm() -> None:
    import timm

    found = read_state_dict(package_weights_file(LITE0))
    full = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    assert len(found) == len(full) == 296
    for (fk, fv), (tk, tv) in zip(found.items(), full.items(), strict=True):
        assert fv.shape == tv.shape, (fk, tk)
    net = create_network(lite0())  # every backbone tensor (the 1000-class head left out) comes from the file
    for (key, got), want in zip(net.backbone.net.state_dict().items(), found.values(), strict=False):
        assert torch.equal(got, want.to(got.dtype)), key


def _shuffled_equal_shapes(net: torch.nn.Module) -> None:
    """Load the same tensors in a wrong order: permuted among tensors of the same shape and kind."""
    sd = net.state_dict()
    groups: dict[tuple[object, ...], list[str]] = {}
    for key, t in sd.items():
        if t.ndim:
            groups.setdefault((tuple(t.shape), key.rsplit(".", 1)[-1]), []).append(key)
    g = torch.Generator().manual_seed(0)
    new = dict(sd)
    for keys in groups.values():
        for key, j in zip(keys, torch.randperm(len(keys), generator=g).tolist(), strict=True):
            new[key] = sd[keys[j]]
    net.load_state_dict(new)


@pytest.mark.skipif(not PROBE_DATA.is_dir(), reason=f"cifar10-mini is not at {PROBE_DATA} (../shared/data from the project root)")
def test_packaged_weights_pass_a_linear_probe_floor_that_wrong_weights_fail() -> None:
    train, test = photo_folder(PROBE_DATA / "train", PROBE_PER_CLASS), photo_folder(PROBE_DATA / "test", PROBE_PER_CLASS)
    pretrained = create_network(lite0(PROBE_RES))
    acc = linear_probe(pretrained, train, test)
    random = create_network(lite0(PROBE_RES, weights="none"))
    wrong = create_network(lite0(PROBE_RES))
    _shuffled_equal_shapes(wrong.backbone.net)
    acc_random, acc_wrong = linear_probe(random, train, test), linear_probe(wrong, train, test)
    assert acc >= PROBE_FLOOR, f"packaged weights reach {acc:.3f} < {PROBE_FLOOR}"
    assert acc_random < PROBE_FLOOR and acc_wrong < PROBE_FLOOR, (acc_random, acc_wrong)  # the floor tells them apart


# --- frozen and partly trainable backbones --------------------------------------------------------------


def _train_step(net: torch.nn.Module, x: torch.Tensor) -> None:
    net.train()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    loss = torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1] * (len(x) // 2)))
    loss.backward()
    opt.step()


def test_a_frozen_backbone_is_bitwise_unchanged_by_training_and_stays_in_eval_mode() -> None:
    net = create_network(lite0(64), head_sizes=[2])
    assert net.frozen_backbone and net.spec.backbone.train == "frozen"
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}  # batch-norm running stats too
    head = net.heads[0].weight.detach().clone()
    _train_step(net, torch.rand(4, 3, 32, 32))
    assert all(not m.training for m in net.backbone.net.modules())
    assert all(not p.requires_grad for p in net.backbone.parameters())
    for key, value in net.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not torch.equal(net.heads[0].weight, head)  # the head did train


def test_train_last_trains_the_last_stage_and_head_only() -> None:
    net = create_network(lite0(64, train="last"), head_sizes=[2])
    assert not net.frozen_backbone
    before = {k: v.clone() for k, v in net.backbone.net.state_dict().items()}
    _train_step(net, torch.rand(4, 3, 32, 32))
    changed = {k.rsplit(".", 1)[0].split(".")[0] + ("." + k.split(".")[1] if k.startswith("blocks.") else "")
               for k, v in net.backbone.net.state_dict().items() if not torch.equal(v, before[k])}  # fmt: skip
    assert changed == {"blocks.6", "conv_head", "bn2"}, changed
    assert not net.backbone.net.bn1.training and net.backbone.net.bn2.training  # frozen stem eval, last stage train


def test_grey_images_repeat_their_channel_and_features_have_the_declared_width() -> None:
    grey, rgb = create_network(lite0(64, channels=1)).eval(), create_network(lite0(64)).eval()
    assert grey.feature_dim == rgb.feature_dim == 1280
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(grey.forward_features(x), rgb.forward_features(x.expand(-1, 3, -1, -1)))
        assert grey.forward_features(x).shape == (2, 1280)
    tv = create_network(NetworkSpec(InputSpec("image", 3, 40, 24), backbone=BackboneSpec("torchvision/resnet18", weights="none", resolution=32)))
    assert tv.feature_dim == 512 and tv.forward_features(torch.rand(2, 3, 40, 24)).shape == (2, 512)


# --- the spec ------------------------------------------------------------------------------------------


def test_backbone_spec_defaults_round_trip_and_old_specs_still_load() -> None:
    spec = lite0(160)
    bb = spec.backbone
    assert (bb.weights, bb.train, bb.resolution) == ("package", "frozen", 160)
    assert NetworkSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    old = {"input": {"kind": "image", "channels": 1, "height": 8, "width": 8, "dim": 0}, "backbone": "cnn",
           "scenario": "class-incremental", "hidden": [256, 256], "cnn_channels": [32, 64, 128],
           "preprocessing": {"mean": [0.0], "std": [1.0], "resize": "bilinear", "pixel_scale": 255.0}}  # fmt: skip
    assert NetworkSpec.from_dict(old).backbone == BackboneSpec("cnn", weights="none", train="all")
    assert BackboneSpec("timm/resnet18").weights == "download"
    for bad, match in ((dict(name="vgg"), "unknown backbone"), (dict(name="cnn", weights="package"), "no pretrained"),
                       (dict(name="timm/resnet18", weights="package"), "no installed package"),
                       (dict(name=LITE0, weights="file"), "'file'"), (dict(name="cnn", train="frozen"), "all of it trains"),
                       (dict(name=LITE0, resolution=8), "resolution")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            BackboneSpec(**bad)  # type: ignore[arg-type]


def test_resolve_records_sha256_and_preprocessing_and_refuses_a_changed_file(tmp_path: Path) -> None:
    resolved = resolve_network_spec(lite0(64))
    bb = resolved.backbone
    assert bb.sha256 and len(bb.sha256) == 64 and bb.mean == bb.std == (0.5, 0.5, 0.5) and bb.input_size == (3, 224, 224)
    assert record_packaged(lite0(64)) == resolved  # what the API process records without torch, the same
    weights = tmp_path / "lite0.pt"
    torch.save(read_state_dict(package_weights_file(LITE0)), weights)
    spec = resolve_network_spec(lite0(64, weights="file", file=str(weights)))
    with open(weights, "ab") as f:
        f.write(b"\0")
    with pytest.raises(WeightsError, match="changed since"):
        create_network(spec)


# --- weight errors -------------------------------------------------------------------------------------


def test_weight_errors_say_what_is_wrong(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_network_spec(lite0(weights="file", file=str(missing)))
    sd = {k: v.clone() for k, v in create_network(lite0()).backbone.net.state_dict().items()}
    sd["blocks.2.0.conv_pw.weight"] = torch.zeros(7, 7, 1, 1)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError, match=r"'blocks.2.0.conv_pw.weight' has shape \[7, 7, 1, 1\], the backbone needs \[144, 24, 1, 1\]"):
        resolve_network_spec(lite0(weights="file", file=str(tmp_path / "bad.safetensors")))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="neither safetensors nor a torch state dict"):
        resolve_network_spec(lite0(weights="file", file=str(tmp_path / "junk.pt")))
    offline = WeightsAccess(cache_dir=str(tmp_path / "cache"), allow_download=False)
    for name in ("timm/resnet18", "torchvision/resnet18"):
        spec = NetworkSpec(InputSpec("image", 3, 32, 32), backbone=BackboneSpec(name, resolution=32))
        with pytest.raises(WeightsError, match="downloads are off"):
            resolve_network_spec(spec, offline)
    with pytest.raises(BackboneError, match="timm has no model"):
        resolve_network_spec(NetworkSpec(InputSpec("image", 3, 32, 32), backbone=BackboneSpec("timm/no_such_net", weights="none")))
    assert isinstance(WeightsError("x"), ValueError)


# --- bundles and ONNX ----------------------------------------------------------------------------------


def _learner(spec: NetworkSpec) -> Learner:
    learner = Learner.create(spec)
    learner.model.expand_head(2, torch.Generator().manual_seed(0))
    learner.labels, learner.tasks = ["a", "b"], [TaskInfo("t", [0, 1])]
    return learner


def test_a_frozen_backbone_is_referenced_by_bundles_not_copied(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    weights = tmp_path / "lite0.safetensors"  # timm's names: a safetensors file keeps no order to map by
    save_file({k: v.contiguous() for k, v in create_network(lite0()).backbone.net.state_dict().items()}, str(weights))
    x = torch.rand(3, 3, 32, 32)
    frozen = _learner(resolve_network_spec(lite0(64, weights="file", file=str(weights))))
    manifest = save_bundle(tmp_path / "frozen", frozen)
    assert manifest.external_backbone == {"name": LITE0, "weights": "file", "sha256": frozen.spec.backbone.sha256}
    stored = load_file(str(tmp_path / "frozen" / "model.safetensors"))
    assert not any(k.startswith("backbone.net.") for k in stored) and "heads.0.weight" in stored
    loaded, _ = load_bundle(tmp_path / "frozen")
    assert torch.equal(loaded.logits(x, device="cpu"), frozen.logits(x, device="cpu"))
    # A trainable part is the version's own: copied, so the bundle loads without the source.
    last = _learner(resolve_network_spec(lite0(64, weights="file", file=str(weights), train="last")))
    assert save_bundle(tmp_path / "last", last).external_backbone is None
    with open(weights, "ab") as f:  # the referenced source changed: refused, never silently different
        f.write(b"\0")
    with pytest.raises(WeightsError, match="changed since"):
        load_bundle(tmp_path / "frozen")
    weights.unlink()
    loaded, _ = load_bundle(tmp_path / "last")
    assert torch.equal(loaded.logits(x, device="cpu"), last.logits(x, device="cpu"))


def test_pretrained_onnx_export_matches_torch() -> None:
    # The whole graph: grey to RGB, an antialiased shrink keeping the aspect (96x80 -> 58x48), the weights'
    # normalisation, EfficientNet-Lite0 and the head. (Enlarging, as from 32 px to 128-224, is measured by
    # benchmarks/pretrained_export.py: parity 2e-6 to 3e-6.)
    spec = NetworkSpec(InputSpec("image", 1, 96, 80), backbone=BackboneSpec(LITE0, resolution=48))
    learner = _learner(spec)
    assert learner.model.backbone.size == (58, 48)
    result = export_onnx(learner, torch.rand(8, 1, 96, 80, generator=torch.Generator().manual_seed(3)))
    assert result.max_abs_diff <= PARITY_TOLERANCE


def test_the_dockerfile_bakes_weights_with_the_fetch_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from model_core.backbone_check import main

    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    assert 'ARG BAKE_WEIGHTS=""' in dockerfile and "ENV ENGRAM_WEIGHTS_CACHE_DIR=/opt/engram/weights" in dockerfile
    assert 'python -m model_core.backbone_check fetch "${BAKE_WEIGHTS}" --cache-dir /opt/engram/weights' in dockerfile
    assert main(["fetch", f"{LITE0}, {LITE0}", "--cache-dir", str(tmp_path)]) == 0  # packaged: no download
    assert capsys.readouterr().out.count(f"{LITE0}: package weights, sha256 5793442") == 2
