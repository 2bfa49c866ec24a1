"""Your own model as the teacher: torchvision CNNs read into the IR count, compute and prune like the module;
what the IR cannot express is refused naming the node; the envs, the CLI, --validate and the README use it."""

import re
import shlex
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from netcomp.arch import removable_layers
from netcomp.errors import UserError
from netcomp.fx_import import CUSTOM_ARCH, ModelImportError, import_model, imported_teacher, load_callable
from netcomp.metrics import GroupCostModel, count_macs, count_params
from netcomp.surgery import (
    build_module,
    inherit_weights,
    remove_block_paths,
    residual_blocks,
    set_stage_depths,
    set_widths,
    student_problem,
)
from tests.conftest import cli

README = Path(__file__).resolve().parent.parent / "README.md"


# ---------------------------------------------------------------------------- helpers
def random_model(ctor, seed: int = 0, num_classes: int = 10) -> nn.Module:
    """``ctor(num_classes=...)`` with seeded random weights and BatchNorm statistics (no slow default init:
    built on the meta device, then filled), in eval mode, so that equal outputs mean the weights were copied."""
    try:
        with torch.device("meta"):
            model = ctor(num_classes=num_classes).to_empty(device="cpu")
    except NotImplementedError:  # a constructor that computes with tensors (RegNet's widths) needs real ones
        model = ctor(num_classes=num_classes)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, p in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
                _fill(module, name, p, gen)
    return model.eval()


def _fill(module: nn.Module, name: str, tensor: torch.Tensor, gen: torch.Generator) -> None:
    if name == "num_batches_tracked":
        tensor.fill_(7)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm) and name in ("weight", "running_var"):
        tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
    elif tensor.dim() > 1:  # conv / linear weights at a fan-in scale: activations neither vanish nor explode
        tensor.copy_(torch.randn(tensor.shape, generator=gen) / tensor[0].numel() ** 0.5)
    else:
        tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)


def torch_macs(ctor, size: int) -> int:
    """Conv + matmul MACs of the torchvision model by torch's own flop counter (on the meta device: no compute,
    where the constructor allows it)."""
    try:
        with torch.device("meta"):
            model, x = ctor(num_classes=10).eval(), torch.empty(1, 3, size, size)
    except NotImplementedError:
        model, x = ctor(num_classes=10).eval(), torch.zeros(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def half_widths(arch):
    """Every shrinkable channel group at half its width."""
    model = GroupCostModel(arch)
    return {gid: max(1, int(w) // 2) for gid, w in zip(model.gids, model.full)}


# ---------------------------------------------------------------------------- torchvision models
MODELS = {
    "resnet18": (tvm.resnet18, 32),
    "resnet50": (tvm.resnet50, 32),          # bottlenecks, a downsample in every stage
    "vgg11_bn": (tvm.vgg11_bn, 224),         # its pool is to 7x7: the IR reads it at 224 (7x7 maps) only
    "mobilenet_v2": (tvm.mobilenet_v2, 32),  # ReLU6, depthwise convs, functional adaptive pool
    "shufflenet_v2": (tvm.shufflenet_v2_x0_5, 32),  # chunk, concat, channel shuffle, mean over (H, W)
    "mobilenet_v3_small": (tvm.mobilenet_v3_small, 32),  # hard-swish, squeeze-and-excitation (mul), BN eps 1e-3
    "efficientnet_b0": (tvm.efficientnet_b0, 32),  # SiLU, sigmoid gates, stochastic depth
    "regnet_y_400mf": (tvm.regnet_y_400mf, 32),  # grouped convs, projections, squeeze-and-excitation
}


@pytest.mark.parametrize("name", MODELS)
def test_a_torchvision_model_counts_and_computes_like_the_module(name):
    ctor, size = MODELS[name]
    model = random_model(ctor)
    arch, built = import_model(model, 3, size)
    assert arch.family == CUSTOM_ARCH and arch.num_classes == 10
    assert count_params(arch) == sum(p.numel() for p in model.parameters())
    assert count_params(arch) == sum(p.numel() for p in built.parameters())
    assert count_macs(arch) == torch_macs(ctor, size)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want, got = model(x), built(x)
    assert want.std() > 1e-3                            # not a degenerate network: the comparison means something
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


@pytest.mark.parametrize("name", [n for n in MODELS if n != "vgg11_bn"])
def test_a_pruned_student_of_an_imported_model_builds_inherits_and_runs(name):
    ctor, size = MODELS[name]
    model = random_model(ctor)
    arch, built = import_model(model, 3, size)
    widths = half_widths(arch)
    assert widths, "no shrinkable channel group"
    student = set_widths(arch, widths)
    assert student_problem(student, arch) is None
    module = build_module(student)
    inherit_weights(module, student, built, arch)
    assert sum(p.numel() for p in module.parameters()) == count_params(student) < count_params(arch)
    assert GroupCostModel(arch).macs(widths) == count_macs(student) < count_macs(arch)
    with torch.no_grad():
        out = module.eval()(torch.randn(2, 3, size, size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_vgg11_bn_at_32_pixels_is_refused_with_the_change_that_makes_it_work():
    model = random_model(tvm.vgg11_bn)
    refused = r"node 'avgpool' .*AdaptiveAvgPool2d.*1x1 to 7x7.*AdaptiveAvgPool2d\(1\)"
    with pytest.raises(ModelImportError, match=refused):
        import_model(model, 3, 32)
    model.avgpool = nn.AdaptiveAvgPool2d(1)           # the change the error names
    model.classifier[0] = nn.Linear(512, 4096)
    arch, built = import_model(model.eval(), 3, 32)
    student = set_widths(arch, half_widths(arch))
    assert count_params(student) < count_params(arch) == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert build_module(student).eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet18_blocks_shortcuts_stages_and_coupling_come_from_the_graph():
    arch, _ = import_model(random_model(tvm.resnet18), 3, 32)
    assert residual_blocks(arch) == tuple(f"layer{s}.{b}" for s in range(1, 5) for b in range(2))
    shortcuts = {n.name for n in arch.nodes if n.role == "shortcut"}
    assert shortcuts == {f"layer{s}.0.downsample.{i}" for s in (2, 3, 4) for i in (0, 1)}
    assert {n.stage for n in arch.nodes if n.block} == {"layer1", "layer2", "layer3", "layer4"}
    assert arch.node("layer1.0.relu_1").block == "layer1.0"      # the ReLU after the sum belongs to its block
    group = arch.group_of
    assert group["conv1"] == group["layer1.0.bn2"] == group["layer1.1.bn2"]           # identity shortcuts couple
    assert group["layer2.0.bn2"] == group["layer2.0.downsample.1"] == group["layer2.1.bn2"]
    assert group["layer2.0.bn1"] != group["layer2.0.bn2"]
    # block surgery works on the imported tags: a block's main path, a stage's later blocks
    assert student_problem(remove_block_paths(arch, ["layer3.1"])) is None
    assert student_problem(set_stage_depths(arch, {"layer2": 1})) is None
    assert "layer2.0.downsample.0" not in removable_layers(arch, "n2n")  # N2N never removes shortcut layers


def test_depthwise_and_shuffle_and_slices_are_read_as_ir_ops():
    mbv2, _ = import_model(random_model(tvm.mobilenet_v2), 3, 32)
    depthwise = [n for n in mbv2.nodes if n.op == "conv" and n.depthwise]
    assert len(depthwise) == 17 and all(n.groups == 1 for n in depthwise)
    assert mbv2.group_of[depthwise[3].name] == mbv2.group_of[mbv2.node(depthwise[3].inputs[0]).name]
    assert {n.op for n in mbv2.nodes} >= {"relu6", "add", "gap"}
    shuffle, _ = import_model(random_model(tvm.shufflenet_v2_x0_5), 3, 32)
    ops = [n.op for n in shuffle.nodes]
    assert ops.count("shuffle") == 16 and ops.count("slice") == 26 and ops.count("concat") == 16
    for node in shuffle.nodes:
        if node.op == "slice":  # a slice's input has fixed channel positions: it never shrinks
            assert not shuffle.group(shuffle.group_of[node.inputs[0]]).shrinkable


# ---------------------------------------------------------------------------- refusals name the node
class WithGelu(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.act = nn.GELU()
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


class Branchy(WithGelu):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:                         # data-dependent control flow: not traceable
            y = -y
        return self.fc(y.mean((2, 3)))


class SharedConv(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.conv(x)).mean((2, 3)))


class TwoOutputs(SharedConv):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x).mean((2, 3))
        return self.fc(y), y


class ScaledAdd(SharedConv):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((self.conv(x) + 0.5 * x).mean((2, 3)))


@pytest.mark.parametrize("cls, pattern", [
    (WithGelu, r"node 'act' \(call_module act \(GELU\)\).*no layer like GELU"),
    (Branchy, r"torch.fx cannot trace Branchy.*control flow"),
    (SharedConv, r"node 'conv_1' .*module conv is called twice"),
    (TwoOutputs, r"must return one tensor of logits"),
    (ScaledAdd, r"node 'mul' \(call_function mul\).*constant"),
])
def test_what_the_ir_cannot_express_is_refused_naming_the_node(cls, pattern):
    with pytest.raises(ModelImportError, match=pattern) as err:
        import_model(cls(), 3, 8)
    assert isinstance(err.value, UserError)            # the command line prints it as one line, exit code 2


def test_a_batchnorm_eps_other_than_the_irs_is_folded_exactly():
    model = random_model(tvm.mobilenet_v3_small)
    assert {m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-3}
    _, built = import_model(model, 3, 32)     # (import_model also checks the outputs agree)
    bn = built.get_submodule("features.0.1")
    assert bn.eps == 1e-5
    torch.testing.assert_close(bn.running_var, model.features[0][1].running_var + (1e-3 - 1e-5))


# ---------------------------------------------------------------------------- the teacher and the envs
class TinyResNet(nn.Module):
    """A small residual CNN written with functional calls, as a user's own model might be."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(x + self.bn2(self.conv2(y)))
        x = F.max_pool2d(F.relu6(self.down(x)), 2)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


TINY_REF = "tests.test_fx_import:TinyResNet"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A small image folder (3 classes) and a seeded TinyResNet state dict for it."""
    from tests.test_imagefolder import write_folder

    root = tmp_path_factory.mktemp("own")
    write_folder(root / "images", {"train": 10, "test": 3}, classes=("ant", "bee", "cat"))
    torch.manual_seed(3)
    torch.save(random_model(TinyResNet, seed=3, num_classes=3).state_dict(), root / "tiny.pt")
    return root


def own_env(space: str, folder: Path, **kw):
    import gymnasium as gym

    import envs  # noqa: F401

    return gym.make(f"netcomp/{space}-custom-imagefolder-v0", teacher_model=TINY_REF, teacher=str(folder / "tiny.pt"),
                    data_root=str(folder / "images"), dataset_kwargs={"image_size": 16}, fidelity="smoke",
                    disable_env_checker=True, **kw)


def test_the_teacher_is_the_users_model_with_its_weights(folder):
    from netcomp.data import DeviceLoader, load_dataset

    ds = load_dataset("imagefolder", root=folder / "images", image_size=16)
    teacher = imported_teacher(TINY_REF, ds, weights=folder / "tiny.pt")
    model = TinyResNet(num_classes=3)
    model.load_state_dict(torch.load(folder / "tiny.pt", weights_only=True))
    images, _ = next(iter(DeviceLoader(ds.val, 8, ds.mean, ds.std)))
    with torch.no_grad():
        torch.testing.assert_close(teacher.model(images), model.eval()(images))
    assert teacher.meta["model"] == TINY_REF and teacher.meta["trained"] and teacher.path == folder / "tiny.pt"
    assert teacher.arch.num_classes == 3                 # the callable was given the data's num_classes


@pytest.mark.parametrize("space", ["removal", "shrinkage", "channel-ratio", "ranking-affine"])
def test_every_space_compresses_the_imported_teacher(folder, space):
    env = own_env(space, folder, reward="accuracy")  # a random teacher may score 0: N2N's reward divides by it
    base = env.unwrapped
    assert base.arch.family == CUSTOM_ARCH and base.evaluator.teacher_params == count_params(base.arch)
    env.reset(seed=0)
    _, reward, done, _, info = env.step(base.sample_action(__import__("numpy").random.default_rng(1)))
    assert done and info["teacher_params"] == sum(p.numel() for p in TinyResNet(3).parameters())
    assert info["params"] <= info["teacher_params"] and (info["valid"] or info["invalid_reason"])
    env.close()


def test_teacher_model_goes_with_the_custom_arch_only(folder):
    import gymnasium as gym

    import envs  # noqa: F401

    kw = {"data_root": str(folder / "images"), "dataset_kwargs": {"image_size": 16}, "fidelity": "smoke",
          "disable_env_checker": True}
    with pytest.raises(UserError, match="--teacher-model MODULE:CALLABLE"):
        gym.make("netcomp/removal-custom-imagefolder-v0", **kw)
    with pytest.raises(UserError, match="goes with the 'custom' arch"):
        gym.make("netcomp/removal-resnet20-imagefolder-v0", teacher_model=TINY_REF, **kw)


def test_weights_that_do_not_fit_and_bad_references_are_user_errors(folder, tmp_path):
    from netcomp.data import load_dataset

    ds = load_dataset("imagefolder", root=folder / "images", image_size=16)
    torch.save(tvm.resnet18(num_classes=3).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(ModelImportError, match="does not fit TinyResNet: missing"):
        imported_teacher(TINY_REF, ds, weights=tmp_path / "r18.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ModelImportError, match="not a state dict"):
        imported_teacher(TINY_REF, ds, weights=tmp_path / "junk.pt")
    for ref, pattern in (("torchvision.models", "not MODULE:CALLABLE"), ("no_such_pkg:f", "cannot import"),
                         ("torchvision.models:nope", "has no 'nope'")):
        with pytest.raises(ModelImportError, match=pattern):
            load_callable(ref)
    with pytest.warns(UserWarning, match="UNTRAINED teacher"):
        untrained = imported_teacher(TINY_REF, ds)
    with pytest.warns(UserWarning, match="UNTRAINED teacher"):
        again = imported_teacher(TINY_REF, ds)
    assert torch.equal(untrained.model.fc.weight, again.model.fc.weight)  # seeded: every process builds it alike


# ---------------------------------------------------------------------------- the command line and the README
def test_a_run_resumes_and_validates_only_with_the_model_named_again(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--teacher-model", TINY_REF, "--data-root", folder / "images"]
    assert cli("--env", "channel-ratio-custom-imagefolder", "--agent", "random", "--budget", 2, "--fidelity", "smoke",
               "--teacher", folder / "tiny.pt", "--image-size", 16, "--threads", 1, "--out", "run", *common) == 0
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "teacher_model: null" in saved and "tests.test_fx_import" not in saved  # a run directory names no code
    assert cli("--resume", "run", "--budget", 3, "--data-root", folder / "images") == 2  # the model is asked for
    assert cli("--resume", "run", "--budget", 3, *common) == 0
    assert cli("--validate", "run", "--top", 1, *common) == 0


def readme_section() -> str:
    return README.read_text().split("## Compress your own model", 1)[1].split("\n## ", 1)[0]


def test_the_readme_section_runs_as_printed(tmp_path, monkeypatch):
    """The README's commands: a torchvision ResNet-18 on an image folder, smoke fidelity, ONNX export on."""
    import json

    from tests.test_imagefolder import write_folder

    monkeypatch.chdir(tmp_path)
    commands = [c.replace("\\\n", " ") for c in re.findall(r"```bash\n(.*?)```", readme_section(), re.S)[0]
                .split("\npython ")]
    write_folder(tmp_path / "my_images", {"train": 8, "val": 2, "test": 2}, classes=("ant", "bee"))
    torch.save(random_model(tvm.resnet18, num_classes=2).state_dict(), "resnet18.pt")  # "your trained weights"
    for command in commands:
        argv = shlex.split(command.strip().removeprefix("python "), comments=True)
        assert argv[0] == "run_agent.py"
        assert cli(*argv[1:]) == 0, command
    summary = json.loads((tmp_path / "runs" / "mine" / "summary.json").read_text())
    assert summary["evaluations"] >= 4 and summary["exported"]["onnx_max_abs_diff"] <= 1e-4
    assert (tmp_path / "runs" / "mine" / "best_student.onnx").exists()
