import numpy as np
import pytest
import torch
from PIL import Image

from resnet_edge.data import CIFAR_MEAN, CIFAR_STD, Preprocess, batches, check_classes, open_data
from resnet_edge.errors import BadInput, DataWarning

PRE = Preprocess(input_size=32, resize=32, mean=CIFAR_MEAN, std=CIFAR_STD)


def test_digits_splits_are_fixed_disjoint_and_cover_the_set():
    splits = {s: open_data(f"digits:{s}") for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [1200, 200, 397]
    flat = {s: src.images.reshape(len(src), -1).numpy() for s, src in splits.items()}
    train_rows = {row.tobytes() for row in flat["train"]}
    # sklearn's digits has a few exact duplicates; the splits are disjoint by index, so at
    # most a handful of test images may coincide with training images.
    assert sum(row.tobytes() in train_rows for row in flat["test"]) < 5
    assert np.array_equal(open_data("digits:test").labels, splits["test"].labels)
    assert open_data("digits").spec == "digits" and len(open_data("digits")) == 397


def test_digits_batches_are_preprocessed_to_the_input_size():
    x, y = next(iter(batches(open_data("digits:val"), PRE, 64)))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (64,)
    # normalized with the card's mean/std: blank background maps to (0 - mean) / std
    assert x.min().item() == pytest.approx(min((0 - m) / s for m, s in zip(CIFAR_MEAN, CIFAR_STD)), abs=1e-4)


def _write_folder(root):
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8), mode="L").save(root / "cat/gray.png")
    Image.fromarray(rng.integers(0, 255, (40, 50, 4), dtype=np.uint8), mode="RGBA").save(root / "cat/rgba.png")
    Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).convert("P").save(root / "dog/pal.gif")
    Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(root / "dog/rgb.jpg")
    (root / "dog/notes.txt").write_text("not an image")
    (root / "dog/broken.jpg").write_bytes(b"\xff\xd8 truncated")


def test_imagefolder_converts_modes_and_counts_skipped_files(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "README.txt").write_text("beside the class folders")
    with pytest.warns(DataWarning) as said:
        source = open_data(f"imagefolder:{tmp_path}")
    assert source.class_names == ["cat", "dog"] and len(source) == 4
    words = "2 files skipped as not images (first: " + str(tmp_path / "dog/broken.jpg") + "), 1 file beside"
    assert words in source.summary and words in str(said[0].message)
    assert list(source.labels) == [0, 0, 1, 1]
    x, y = next(iter(batches(source, PRE, 8, workers=0)))
    assert x.shape == (4, 3, 32, 32) and torch.isfinite(x).all()


def test_npy_with_labels_and_shape_checks(tmp_path):
    arr = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", arr)
    np.save(tmp_path / "y.npy", np.arange(6) % 3)
    source = open_data(f"npy:{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}", input_shape=(3, 32, 32))
    x, y = next(iter(batches(source, PRE, 6)))
    assert np.array_equal(x.numpy(), arr) and list(y) == [0, 1, 2, 0, 1, 2]  # no re-preprocessing
    with pytest.raises(BadInput, match=r"the model takes \(3, 64, 64\)"):
        open_data(f"npy:{tmp_path / 'x.npy'}", input_shape=(3, 64, 64))
    np.save(tmp_path / "u8.npy", arr.astype(np.uint8))
    with pytest.raises(BadInput, match="expected float32"):
        open_data(f"npy:{tmp_path / 'u8.npy'}")


def test_random_is_seeded_unlabelled_and_made_on_demand():
    a = open_data("random:3", input_shape=(3, 32, 32))
    b = open_data("random:3", input_shape=(3, 32, 32))
    assert all(torch.equal(a.image(i), b.image(i)) for i in range(3)) and not a.has_labels
    assert not torch.equal(a.image(0), a.image(1))
    _, y = next(iter(batches(a, PRE, 3)))
    assert list(y) == [-1, -1, -1]
    huge = open_data("random:100000000", input_shape=(3, 32, 32))  # nothing made up front
    assert len(huge) == 100_000_000 and huge.image(99_999_999).shape == (3, 32, 32)


@pytest.mark.parametrize("spec,message", [
    ("mnist", "unknown data spec 'mnist'; use one of digits[:train|val|test]"),
    ("digits:holdout", "digits has no split 'holdout'; choose one of train, val, test"),
    ("cifar10:val", "cifar10 has no split 'val'"),
    ("imagefolder:/nonexistent/folder", "image folder /nonexistent/folder not found"),
    ("random:zero", "random:N needs a count from 1"),
    ("random:²", "random:N needs a count from 1"),  # isdigit() takes it, int() refuses it
    ("random:１２", "random:N needs a count from 1"),
])
def test_bad_specs(spec, message):
    with pytest.raises(BadInput, match=message.replace("[", r"\[").replace("|", r"\|").replace("(", r"\(")):
        open_data(spec, input_shape=(3, 32, 32))


def test_empty_imagefolder_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("x")
    with pytest.raises(BadInput, match="has no images"):
        open_data(f"imagefolder:{tmp_path}")


def test_cifar10_offline_says_what_to_do(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("RESNET_EDGE_DATA", str(tmp_path))
    with pytest.raises(BadInput, match="cannot be downloaded.*--data digits"):
        open_data("cifar10:test")


def test_class_count_mismatch_names_both_numbers(tmp_path):
    _write_folder(tmp_path)
    with pytest.raises(BadInput, match="has 2 classes but the model has 10"):
        check_classes(open_data(f"imagefolder:{tmp_path}"), 10)


def test_an_imagenet_copy_maps_its_wordnet_folders_to_the_class_indices(tmp_path):
    """README's layout: folders named by WordNet ID, any subset of the 1000. Two of them are the
    classes ImageNet's own word lists name alike ("crane": the bird, 134, and the machine, 517),
    which torchvision's names tell apart only since it renamed one."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES
    from resnet_edge.data import imagenet_synsets, match_classes
    synsets = imagenet_synsets()
    assert len(synsets) == 1000 and list(synsets) == sorted(synsets)  # the sorted order is the index
    folders = {"n01440764": 0, "n02012849": 134, "n03126707": 517}
    rng = np.random.default_rng(0)
    for wnid in folders:
        (tmp_path / wnid).mkdir()
        Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(tmp_path / wnid / "ILSVRC2012_val.JPEG")
    assert "crane" in _IMAGENET_CATEGORIES[134] and _IMAGENET_CATEGORIES[517] == "crane"
    for names in (list(_IMAGENET_CATEGORIES), None):  # a zoo card, or a model without names
        source = open_data(f"imagefolder:{tmp_path}")
        match_classes(source, 1000, names, "resnet50")
        assert list(source.labels) == [0, 134, 517]
    # a model of other classes is not ImageNet's: refused, as before
    with pytest.raises(BadInput, match="match neither the class names"):
        match_classes(open_data(f"imagefolder:{tmp_path}"), 10, [str(i) for i in range(10)], "resnet20")


@pytest.mark.parametrize("folders", [["²", "1"], ["٣", "1"], ["１", "2"], ["00", "1"]])
def test_class_folders_are_indices_only_in_plain_ascii_digits(folders, tmp_path):
    """`²` crashed parity, calibrate and eval (int() of what isdigit() takes); `٣`, `１` and
    `00` were silently classes 3, 1 and 0."""
    from resnet_edge.data import match_classes
    rng = np.random.default_rng(0)
    for name in folders:
        (tmp_path / name).mkdir()
        Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(tmp_path / name / "a.png")
    with pytest.raises(BadInput, match="match neither the class names"):
        match_classes(open_data(f"imagefolder:{tmp_path}"), 10, None, "resnet20")
    plain = tmp_path / "plain"
    for name in ("0", "7"):
        (plain / name).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(plain / name / "a.png")
    source = open_data(f"imagefolder:{plain}")
    match_classes(source, 10, None, "resnet20")
    assert list(source.labels) == [0, 7]
