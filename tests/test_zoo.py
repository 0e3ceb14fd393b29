import pickle

import pytest
import torch
import torchvision
from PIL import Image

from resnet_edge import zoo
from resnet_edge.data import Preprocess
from resnet_edge.errors import BadInput

BIG = {"resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2", "resnext101_32x8d",
       "resnext101_64x4d", "resnet110"}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in zoo.VARIANTS])
def test_every_zoo_name_builds_and_runs(name):
    model, card = zoo.load_model(name, weights="none")
    x = torch.randn(1, *card.preprocess.input_shape)
    with torch.inference_mode():
        logits = model(x)
    assert logits.shape == (1, card.num_classes)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name,blocks,params_m", [("resnet20", 9, 0.27), ("resnet56", 27, 0.85)])
def test_cifar_resnets_follow_the_paper(name, blocks, params_m):
    # He et al. 2015, Table 6: ResNet-20 has 0.27M parameters, ResNet-56 0.85M.
    model, _ = zoo.load_model(name)
    n_blocks = sum(isinstance(m, torchvision.models.resnet.BasicBlock) for m in model.modules())
    assert n_blocks == blocks
    assert model.conv1.kernel_size == (3, 3)
    assert [model.layer1[0].conv1.out_channels, model.layer2[0].conv1.out_channels,
            model.layer3[0].conv1.out_channels] == [16, 32, 64]
    assert zoo.parameter_count(zoo.VARIANTS[name]) / 1e6 == pytest.approx(params_m, abs=0.01)


def test_random_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, _ = zoo.load_model("resnet20", weights="none")
    after = torch.rand(1)
    b, _ = zoo.load_model("resnet20", weights="none")
    assert torch.equal(before, after)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_preprocess_equals_torchvision_weights_transforms():
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    pre = Preprocess.from_torchvision(weights.transforms())
    assert (pre.resize, pre.input_size) == (232, 224)
    image = Image.fromarray(torch.randint(0, 255, (300, 400, 3), dtype=torch.uint8).numpy())
    assert torch.equal(pre(image), weights.transforms()(image))
    assert Preprocess.from_dict(pre.to_dict()) == pre


def test_weights_names_resolve_and_bad_names_list_choices():
    v = zoo.variant("resnet50")
    assert v.resolve_weights("IMAGENET1K_V1").name == "IMAGENET1K_V1"
    assert v.resolve_weights("DEFAULT") is torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    with pytest.raises(BadInput, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        v.resolve_weights("IMAGENET1K_V9")
    with pytest.raises(BadInput, match="no published weights"):
        zoo.variant("resnet20").resolve_weights("DEFAULT")


def test_unknown_name_lists_close_matches():
    with pytest.raises(BadInput, match="did you mean.*resnet50"):
        zoo.variant("resnet05")


def test_own_checkpoint_round_trips_card(tmp_path):
    model, card = zoo.load_model("resnet20", num_classes=7)
    card.class_names = [f"c{i}" for i in range(7)]
    zoo.save_checkpoint(tmp_path / "m.pt", model, card)
    loaded, loaded_card = zoo.load_model(str(tmp_path / "m.pt"))
    assert loaded_card.arch == "resnet20" and loaded_card.num_classes == 7
    assert loaded_card.class_names == card.class_names
    assert loaded_card.preprocess == card.preprocess
    assert loaded_card.weights_sha256 is not None
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])


def test_plain_state_dict_infers_classes_and_strips_ddp_prefix(tmp_path):
    model, _ = zoo.load_model("resnet18", weights="none", num_classes=10)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "plain.pth")
    loaded, card = zoo.load_model(str(tmp_path / "plain.pth"), arch="resnet18")
    assert card.num_classes == 10 and card.weights == "checkpoint:plain.pth"
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))


def test_plain_state_dict_needs_arch(tmp_path):
    model, _ = zoo.load_model("resnet20")
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    with pytest.raises(BadInput, match="--arch"):
        zoo.load_model(str(tmp_path / "plain.pth"))


class NotAllowed:  # a class weights_only unpickling must refuse
    pass


def test_unsafe_pickle_is_refused_not_retried(tmp_path):
    torch.save({"fc.weight": torch.zeros(2, 2), "x": NotAllowed()}, tmp_path / "evil.pt")
    with pytest.raises(BadInput, match="refused as unsafe"):
        zoo.read_checkpoint(tmp_path / "evil.pt")


def test_bad_checkpoint_files(tmp_path):
    model, _ = zoo.load_model("resnet20")
    torch.save(model.state_dict(), tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pt").write_text("hello, I am not a checkpoint\n")
    (tmp_path / "pickle.pt").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(BadInput, match="truncated"):
        zoo.read_checkpoint(tmp_path / "trunc.pt")
    with pytest.raises(BadInput, match="not a PyTorch checkpoint"):
        zoo.read_checkpoint(tmp_path / "text.pt")
    with pytest.raises(BadInput, match="not a state dict|not a PyTorch checkpoint"):
        zoo.read_checkpoint(tmp_path / "pickle.pt")
    with pytest.raises(BadInput, match="not found"):
        zoo.read_checkpoint(tmp_path / "missing.pt")
