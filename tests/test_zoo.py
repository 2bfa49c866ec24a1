"""Every zoo family builds, runs, and has the published parameter / MAC counts for its definition."""

import pytest
import torch

from netcomp.__main__ import main as cli_main
from netcomp.metrics import count_macs, count_params
from netcomp.surgery import build_module
from netcomp.zoo import ARCHS, build_arch

# Published parameter counts of the same CIFAR-10 definitions (3x32x32, 10 classes).
PUBLISHED_PARAMS = {
    "resnet18": 11_173_962,    # N2N/ESNAC CIFAR ResNet-18
    "resnet34": 21_282_122,
    "vgg11": 9_231_114,        # CIFAR VGG with BN and conv biases
    "vgg16": 14_728_266,
    "vgg19": 20_040_522,       # "about 20.04M"
    "mobilenetv2": 2_296_922,  # CIFAR MobileNetV2
    "shufflenet": 887_582,     # ShuffleNet G2 (200/400/800, 4/8/4)
}
# Option-B CIFAR ResNets: option-A counts (0.27M / 0.46M / 0.85M / 1.73M) plus the two projection shortcuts.
APPROX_PARAMS = {"resnet20": 0.27e6, "resnet32": 0.46e6, "resnet56": 0.85e6, "resnet110": 1.70e6}
# TAS's MAC counts for CIFAR ResNets (conv + linear), and CIFAR ResNet-18 (0.5554 GMAC, ptflops aten).
PUBLISHED_MACS = {"resnet20": 40.81e6, "resnet32": 69.12e6, "resnet56": 125.75e6, "resnet110": 253.15e6,
                  "resnet18": 0.5554e9}


@pytest.mark.parametrize("name", ARCHS)
def test_every_family_builds_and_its_module_matches_the_ir(name):
    arch = build_arch(name, in_channels=3, image_size=32, num_classes=10)
    model = build_module(arch)
    assert sum(p.numel() for p in model.parameters()) == count_params(arch)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_params_match_published_counts(name):
    assert count_params(build_arch(name)) == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", sorted(APPROX_PARAMS))
def test_cifar_resnet_params_are_close_to_published(name):
    assert count_params(build_arch(name)) == pytest.approx(APPROX_PARAMS[name], rel=0.02)


def test_lenet5_has_the_classic_61706_parameters_on_mnist():
    assert count_params(build_arch("lenet5", 1, 28, 10)) == 61_706
    assert count_params(build_arch("lenet5", 1, 32, 10)) == 61_706


def test_lenet5_caffe_is_deephoyers_mnist_lenet5():
    """20/50 convs 5x5, 800 -> 500 -> 10 (DeepHoyer's LeNet_5): 431,080 parameters, 2.293 M MACs on MNIST."""
    arch = build_arch("lenet5caffe", 1, 28, 10)
    assert arch.shapes["flatten"] == (800,)
    assert count_params(arch) == (20 * 25 + 20) + (50 * 20 * 25 + 50) + (800 * 500 + 500) + (500 * 10 + 10) == 431_080
    assert count_macs(arch) == 20 * 25 * 24 * 24 + 50 * 20 * 25 * 8 * 8 + 800 * 500 + 500 * 10 == 2_293_000
    assert [n.out_channels for n in arch.nodes if n.op in ("conv", "linear")] == [20, 50, 500, 10]
    import envs  # an env id parses: the name has no dash (ids are space-arch-dataset)

    assert envs.parse_env_id("channel-ratio-lenet5caffe-mnist") == "netcomp/channel-ratio-lenet5caffe-mnist-v0"


@pytest.mark.parametrize("name", sorted(PUBLISHED_MACS))
def test_macs_match_published_counts(name):
    assert count_macs(build_arch(name)) == pytest.approx(PUBLISHED_MACS[name], rel=1e-3)


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("spec", [(1, 28, 10), (3, 32, 100)])
def test_any_input_channels_image_size_and_classes(name, spec):
    channels, size, classes = spec
    arch = build_arch(name, channels, size, classes)
    out = build_module(arch)(torch.randn(2, channels, size, size))
    assert out.shape == (2, classes)


def test_class_count_changes_only_the_classifier():
    a10, a100 = build_arch("resnet18", num_classes=10), build_arch("resnet18", num_classes=100)
    assert count_params(a100) - count_params(a10) == 90 * 512 + 90


def test_bad_names_and_sizes_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown architecture 'resnet9'.*resnet18"):
        build_arch("resnet9")
    with pytest.raises(ValueError, match="image_size"):
        build_arch("resnet18", image_size=2)
    with pytest.raises(ValueError, match="collapses"):
        build_arch("lenet5", image_size=8)


def test_summary_cli_prints_params_and_layers(capsys):
    assert cli_main(["summary", "resnet18", "--dataset", "cifar10", "--json"]) == 0
    import json

    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 11_173_962
    assert sum(r["params"] for r in info["layers"]) == info["params"]
    assert sum(r["macs"] for r in info["layers"]) == info["macs"]
    assert cli_main(["summary", "lenet5", "--dataset", "mnist"]) == 0
    assert "61,706 parameters" in capsys.readouterr().out


# ---------------------------------------------------------------------------- VGG head (the reference's)
def vgg_hand_count(cfg, in_channels=3, classifier_inputs=512, num_classes=10):
    """Conv 3x3 with bias + BN (2 per channel) per entry, then one linear layer: counted without the IR."""
    total, cin = 0, in_channels
    for v in cfg:
        if v != "M":
            total += v * cin * 9 + v + 2 * v
            cin = v
    return total + classifier_inputs * num_classes + num_classes


def test_vgg_flattens_its_last_map_into_one_linear_layer_without_a_global_pool():
    from netcomp.zoo import _VGG_CFG

    for name in ("vgg11", "vgg16", "vgg19"):
        arch = build_arch(name)
        assert "gap" not in {n.op for n in arch.nodes}
        assert [n.op for n in arch.nodes[-3:]] == ["maxpool", "flatten", "linear"]
        assert arch.in_shape("flatten") == (512, 1, 1) and arch.in_shape("fc") == (512,)
        model = build_module(arch)
        assert sum(p.numel() for p in model.parameters()) == count_params(arch) == vgg_hand_count(_VGG_CFG[name])
    assert count_params(build_arch("vgg19")) == 20_040_522  # 20.04M, the same as with a 1x1 global pool


def test_vgg_small_images_skip_the_pools_that_would_collapse_and_large_images_flatten_a_larger_map():
    from netcomp.zoo import _VGG_CFG

    mnist = build_arch("vgg11", 1, 28, 10)
    assert sum(n.op == "maxpool" for n in mnist.nodes) == 4 and mnist.in_shape("flatten") == (512, 1, 1)
    big = build_arch("vgg11", 3, 64, 10)
    assert sum(n.op == "maxpool" for n in big.nodes) == 5 and big.in_shape("fc") == (512 * 2 * 2,)
    assert count_params(big) == vgg_hand_count(_VGG_CFG["vgg11"], classifier_inputs=2048)
    assert build_module(big)(torch.randn(2, 3, 64, 64)).shape == (2, 10)
