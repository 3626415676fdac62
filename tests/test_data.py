"""Tests for fula_core.data: loaders (on tiny files in the real on-disk formats), ImageSet, augmentation
and batching."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from fula_core import data
from fula_core.data import DATASET_INFO, DataNotFoundError, ImageSet
from fula_core.tiny_data import write_cifar, write_ls_imagenet10, write_paper_data


# ---------------------------------------------------------------------------------------------------
# Writers for tiny files in the real formats
# ---------------------------------------------------------------------------------------------------

def _rgb_rows(images_nchw: np.ndarray) -> np.ndarray:
    """[N, 3, S, S] -> [N, 3*S*S] rows, channel-major, as CIFAR and Imagenet32 store them."""
    return images_nchw.reshape(len(images_nchw), -1)


def write_idx(path, array: np.ndarray, compress=True):
    """An idx file of unsigned bytes: zero, zero, type 0x08, ndim, big-endian sizes, data."""
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def write_fashion(folder, n_train=6, n_test=3, compress=True, seed=0):
    """The four Fashion-MNIST idx files with tiny sample counts."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)
        out[split] = (images, labels)
    return out


CLASSES = data.ls_imagenet10_classes()


# ---------------------------------------------------------------------------------------------------
# Loading: names, roots
# ---------------------------------------------------------------------------------------------------

def test_unknown_name_or_split_lists_the_valid_ones():
    with pytest.raises(ValueError, match="cifar10.*ls_imagenet10.*fashion_mnist.*digits.*synthetic"):
        data.load("mnist", "train")
    with pytest.raises(ValueError, match="train, test"):
        data.load("synthetic", "val")


def test_data_root_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("FULA_DATA_DIR", str(tmp_path))
    assert data.data_root() == tmp_path
    monkeypatch.delenv("FULA_DATA_DIR")
    assert data.data_root() == data.pathlib.Path(data.__file__).resolve().parent.parent / "data"


def test_every_loader_matches_dataset_info():
    assert set(DATASET_INFO) == {"cifar10", "ls_imagenet10", "fashion_mnist", "digits", "synthetic",
                                 "colour_fmnist_shape", "colour_fmnist_correlated", "colour_fmnist_colour_only"}
    for info in DATASET_INFO.values():
        assert set(info) == {"in_channels", "image_size", "num_classes", "flip", "crop_padding"}


# ---------------------------------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------------------------------

def test_cifar10_reads_python_batches_from_data_root(monkeypatch, tmp_path):
    written = write_cifar(tmp_path / "cifar-10-batches-py")
    monkeypatch.setenv("FULA_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(data, "_download_cifar10", lambda root: pytest.fail("must not download present data"))
    for split, n in (("train", 20), ("test", 4)):
        ds = data.load("cifar10", split)
        assert ds.name == f"cifar10/{split}" and len(ds) == n
        assert ds.images.dtype == torch.uint8 and ds.images.shape == (n, 3, 32, 32)
        assert ds.classes == data.CIFAR10_CLASSES
        # Channel-major rows decoded the right way round: compare with the arrays written.
        assert np.array_equal(ds.images.numpy(), written[split][0])
        assert np.array_equal(ds.labels.numpy(), written[split][1])


def test_tiny_paper_data_reads_back_through_the_loaders(tmp_path):
    """The shrunk paper run's data (tiny_data.write_paper_data): both sets load with every class present,
    as many images as asked, and exactly the arrays written."""
    write_paper_data(tmp_path, train_images=40, test_images=20)
    for name in ("cifar10", "ls_imagenet10"):
        for split, n in (("train", 40), ("test", 20)):
            ds = data.load(name, split, root=tmp_path)
            assert len(ds) == n and ds.images.shape[1:] == (3, 32, 32)
            assert sorted(set(ds.labels.tolist())) == list(range(10)), (name, split)
    written = write_ls_imagenet10(tmp_path / "again", train_per_class=2, val_per_class=1)
    ds = data.load("ls_imagenet10", "test", root=tmp_path / "again")
    assert np.array_equal(ds.images.numpy(), written["test"][0]) and np.array_equal(ds.labels.numpy(), written["test"][1])


def test_cifar10_accepts_the_batches_folder_itself(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    assert len(data.load("cifar10", "test", root=tmp_path / "cifar-10-batches-py")) == 4


def test_cifar10_missing_and_download_failing(monkeypatch, tmp_path):
    def no_network(root):
        raise OSError("network unreachable")

    monkeypatch.setattr(data, "_download_cifar10", no_network)
    with pytest.raises(DataNotFoundError) as err:
        data.load("cifar10", "train", root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "data_batch_1" in message and "cifar-10-python.tar.gz" in message and "network unreachable" in message


def test_cifar10_download_path_reads_what_was_fetched(monkeypatch, tmp_path):
    # Stand-in for torchvision's download: it leaves the batches in <root>/cifar-10-batches-py.
    monkeypatch.setattr(data, "_download_cifar10", lambda root: write_cifar(root / "cifar-10-batches-py"))
    assert len(data.load("cifar10", "train", root=tmp_path)) == 20


def test_cifar10_truncated_batch_says_so(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x02}q")
    with pytest.raises(DataNotFoundError, match="data_batch_3.*truncated"):
        data.load("cifar10", "train", root=tmp_path)


# ---------------------------------------------------------------------------------------------------
# Fashion-MNIST
# ---------------------------------------------------------------------------------------------------

@pytest.fixture
def no_system_fashion(monkeypatch, tmp_path):
    """Hide the Debian copy so that tests see only the files they write."""
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_torchvision_layout(tmp_path, no_system_fashion, compress):
    written = write_fashion(tmp_path / "FashionMNIST" / "raw", compress=compress)
    for split in ("train", "test"):
        ds = data.load("fashion_mnist", split, root=tmp_path)
        assert ds.images.shape == (len(written[split][0]), 1, 28, 28) and ds.labels.dtype == torch.int64
        assert np.array_equal(ds.images[:, 0].numpy(), written[split][0])
        assert np.array_equal(ds.labels.numpy(), written[split][1])
        assert ds.classes[0] == "T-shirt/top" and ds.num_classes == 10


def test_fashion_mnist_from_system_folder(monkeypatch, tmp_path):
    written = write_fashion(tmp_path / "debian")
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "debian")
    ds = data.load("fashion_mnist", "test", root=tmp_path / "empty")
    assert np.array_equal(ds.labels.numpy(), written["test"][1])


def test_fashion_mnist_download_fallback(monkeypatch, tmp_path, no_system_fashion):
    monkeypatch.setattr(data, "_download_fashion_mnist", lambda root: write_fashion(root / "FashionMNIST" / "raw"))
    assert len(data.load("fashion_mnist", "train", root=tmp_path)) == 6


def test_fashion_mnist_missing(monkeypatch, tmp_path, no_system_fashion):
    def no_network(root):
        raise OSError("network unreachable")

    monkeypatch.setattr(data, "_download_fashion_mnist", no_network)
    with pytest.raises(DataNotFoundError) as err:
        data.load("fashion_mnist", "train", root=tmp_path)
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message and "FashionMNIST(" in message
    assert str(tmp_path / "FashionMNIST" / "raw") in message


def test_idx_reader_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01abcd")  # float type code
    with pytest.raises(ValueError, match="unsigned-byte idx"):
        data._read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((4, 2), np.uint8), compress=False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        data._read_idx(tmp_path / "short")


@pytest.mark.skipif(not (data.FASHION_MNIST_SYSTEM_DIR / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_debian_package(tmp_path):
    train = data.load("fashion_mnist", "train", root=tmp_path)
    test = data.load("fashion_mnist", "test", root=tmp_path)
    assert len(train) == 60000 and len(test) == 10000
    assert train.labels.bincount().tolist() == [6000] * 10 and test.labels.bincount().tolist() == [1000] * 10
    assert train.images.shape == (60000, 1, 28, 28) and int(train.images.max()) == 255


# ---------------------------------------------------------------------------------------------------
# digits, synthetic
# ---------------------------------------------------------------------------------------------------

def test_digits_upsampled_stratified_and_deterministic():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    assert len(train) + len(test) == 1797 and abs(len(test) / 1797 - 0.2) < 0.01
    assert train.images.shape[1:] == (1, 28, 28) and train.images.dtype == torch.uint8
    assert int(train.images.max()) > 200 and int(train.images.min()) == 0  # 0..16 scaled to 0..255
    # Stratified: every class holds ~20% of its samples in the test split.
    fraction = test.labels.bincount().float() / (train.labels.bincount() + test.labels.bincount()).float()
    assert torch.all((fraction - 0.2).abs() < 0.02)
    again = data.load("digits", "test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    assert DATASET_INFO["digits"]["flip"] is False


def test_synthetic_is_deterministic_and_learnable():
    train, test = data.load("synthetic", "train"), data.load("synthetic", "test")
    assert (len(train), len(test)) == (512, 256) and train.images.shape[1:] == (3, 16, 16)
    assert torch.equal(train.images, data.load("synthetic", "train").images)
    assert not torch.equal(train.images[:256], test.images)
    # The brightest quadrant is the label.
    quadrants = test.images.float().mean(1).unfold(1, 8, 8).unfold(2, 8, 8).mean((-1, -2)).flatten(1)
    assert (quadrants.argmax(1) == test.labels).float().mean() > 0.99


# ---------------------------------------------------------------------------------------------------
# LS-ImageNet-10
# ---------------------------------------------------------------------------------------------------

# The authors' ten wnids (their data/ls_imagenet10.txt) with their map_clsloc.txt indices, as cross-checked
# in two public copies of that file (see the class file's header).
AUTHORS_CLASSES = {"n03379051": 784, "n03424325": 971, "n04026417": 939, "n02091831": 66, "n01978455": 614,
                   "n02804414": 296, "n02089973": 207, "n07715103": 738, "n02974003": 563, "n04127249": 586}


def test_class_file_is_the_authors_ten_in_wnid_order():
    assert [(w, i) for w, i, _ in CLASSES] == sorted(AUTHORS_CLASSES.items())  # labels = rank in wnid order
    assert [n for _, _, n in CLASSES][:3] == ["rock_crab", "English_foxhound", "Saluki"]
    for wnid, index, name in CLASSES:
        assert wnid.startswith("n") and len(wnid) == 9 and wnid[1:].isdigit()
        assert 1 <= index <= 1000 and name


def authors_downscale(path):
    """What the authors' data script stores for a file, decoded as their ImageFolder loader reads it:
    torchvision's Resize(32) + CenterCrop(32) on the image in its own mode, then RGB."""
    from torchvision import transforms

    with Image.open(path) as img:
        small = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32)])(img)
        return np.asarray(small.convert("RGB")).transpose(2, 0, 1)


def write_image_folders(root):
    """Layout (a): <root>/{train,val}/<wnid>/ holding, per class, a 32x32 PNG (as the authors' script saves
    them) and full-size, non-square ImageNet-style .JPEG files in RGB, greyscale (L) and CMYK, plus a
    non-image file. Returns, per folder split, the (file, label) pairs in the order they must be read."""
    rng = np.random.default_rng(0)
    written = {}
    for split, per_class_shapes in (("train", [(75, 120), (140, 90), (64, 64)]), ("val", [(50, 80)])):
        rows = []
        for label, (wnid, _, _) in enumerate(CLASSES):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            small = np.full((32, 32, 3), (label * 20, 50, 7), dtype=np.uint8)
            Image.fromarray(small).save(folder / f"{wnid}_0.png")
            files = [folder / f"{wnid}_0.png"]
            for i, (h, w) in enumerate(per_class_shapes):
                mode = ("RGB", "L", "CMYK")[(label + i) % 3]
                pixels = rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8)
                img = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
                img.save(folder / f"{wnid}_{i + 1}.JPEG", quality=90)  # the upper-case extension ImageNet uses
                files.append(folder / f"{wnid}_{i + 1}.JPEG")
            (folder / "notes.txt").write_text("not an image")
            rows += [(path, label) for path in files]
        written[split] = rows
    return written


def test_ls_imagenet10_image_folders_downscale_as_the_authors(tmp_path):
    written = write_image_folders(tmp_path / "ls_imagenet10")
    for split, folder_split in (("train", "train"), ("test", "val")):
        ds = data.load("ls_imagenet10", split, root=tmp_path)  # finds <root>/ls_imagenet10
        rows = written[folder_split]
        assert ds.images.shape == (len(rows), 3, 32, 32) and ds.images.dtype == torch.uint8
        assert ds.classes == tuple(n for _, _, n in CLASSES)
        # labels in class-file (wnid) order, files in name order within a class
        assert ds.labels.tolist() == [label for _, label in rows]
        for got, (path, label) in zip(ds.images, rows):
            if path.suffix == ".png":  # the authors' stored 32x32 PNGs pass unchanged
                assert (got == torch.tensor([label * 20, 50, 7], dtype=torch.uint8).view(3, 1, 1)).all()
            assert np.array_equal(got.numpy(), authors_downscale(path)), path.name


def test_ls_imagenet10_resize_keeps_aspect_and_crops_the_centre(tmp_path):
    """Independent of torchvision: a 64x160 image whose central 80 columns are red and whose outer columns are
    blue becomes 32x80 (shorter side 32), and its central 32 columns (source columns 48..112, 8 pixels inside
    the red band) are pure red; squashing the whole width into 32 pixels would bring in the blue."""
    pixels = np.zeros((64, 160, 3), np.uint8)
    pixels[..., 2] = 255
    pixels[:, 40:120] = (255, 0, 0)
    grey = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[:, None], (1, 100))  # a vertical ramp, 64x100
    for label, (wnid, _, _) in enumerate(CLASSES):
        for split in ("train", "val"):
            (tmp_path / split / wnid).mkdir(parents=True)
            Image.fromarray(pixels).save(tmp_path / split / wnid / "wide.png")
            Image.fromarray(grey, "L").save(tmp_path / split / wnid / "ramp.png")
    ds = data.load("ls_imagenet10", "train", root=tmp_path)
    ramp, wide = ds.images[0], ds.images[1]  # "ramp.png" < "wide.png"
    assert (wide == torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1)).all()
    # a greyscale file becomes three equal channels; the ramp's full height is kept (top dark, bottom bright)
    assert torch.equal(ramp[0], ramp[1]) and torch.equal(ramp[0], ramp[2])
    assert ramp[0, 0].float().mean() < 10 and ramp[0, -1].float().mean() > 245


def test_ls_imagenet10_missing_class_folder(tmp_path):
    write_image_folders(tmp_path)
    wnid = CLASSES[4][0]
    for p in (tmp_path / "val" / wnid).iterdir():
        p.unlink()
    (tmp_path / "val" / wnid).rmdir()
    with pytest.raises(DataNotFoundError, match=wnid):
        data.load("ls_imagenet10", "test", root=tmp_path)


def write_imagenet32(root, seed=0, npz=False):
    """Layout (b): train_data_batch_1, _2, _10 and val_data with labels 1..1000 in map_clsloc order, a mix
    of our classes and others (with `npz`, batch 2 and val_data as .npz). Returns the (image, our label)
    pairs that must be kept, in reading order (batches in numeric order)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    ours = [index for _, index, _ in CLASSES]
    others = [i for i in (1, 2, 500, 999, 1000) if i not in ours]
    kept = {"train": [], "test": []}
    for name, split in (("train_data_batch_1", "train"), ("train_data_batch_2", "train"),
                        ("train_data_batch_10", "train"), ("val_data", "test")):
        labels = ours + others + ours[::-1]
        images = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
        batch = {"data": _rgb_rows(images), "labels": labels}
        if split == "train":
            batch["mean"] = images.reshape(len(labels), -1).mean(0)
        if npz and name in ("train_data_batch_2", "val_data"):
            np.savez(root / f"{name}.npz", **batch)
        else:
            with open(root / name, "wb") as f:
                pickle.dump(batch, f, protocol=2)
        kept[split] += [(img, ours.index(lbl)) for img, lbl in zip(images, labels) if lbl in ours]
    (root / "train_data_batch_3.bak").write_bytes(b"stray file, must be ignored")
    return kept


@pytest.mark.parametrize("npz", [False, True])
def test_ls_imagenet10_downsampled_batches(tmp_path, npz):
    kept = write_imagenet32(tmp_path / "imagenet32", npz=npz)
    for split in ("train", "test"):
        ds = data.load("ls_imagenet10", split, root=tmp_path / "imagenet32")
        assert len(ds) == len(kept[split])
        assert ds.labels.tolist() == [label for _, label in kept[split]]
        assert np.array_equal(ds.images.numpy(), np.stack([img for img, _ in kept[split]]))


def test_ls_imagenet10_batch_labels_are_the_devkit_indices(tmp_path):
    """Raw Imagenet32 labels 784 (football helmet), 66 (Saluki), 1 (kit fox, not ours), 614 (rock crab) and
    586 (safety pin) become our labels 5, 2, dropped, 0, 8."""
    images = np.arange(5, dtype=np.uint8).repeat(3 * 32 * 32).reshape(5, -1)
    with open(tmp_path / "val_data", "wb") as f:
        pickle.dump({"data": images, "labels": [784, 66, 1, 614, 586]}, f, protocol=2)
    ds = data.load("ls_imagenet10", "test", root=tmp_path)
    assert ds.labels.tolist() == [5, 2, 0, 8]
    assert ds.images[:, 0, 0, 0].tolist() == [0, 1, 3, 4]


def test_ls_imagenet10_missing_explains_both_layouts(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        data.load("ls_imagenet10", "train", root=tmp_path)
    message = str(err.value)
    assert "train/<wnid>" in message and "train_data_batch_1..10" in message and CLASSES[0][0] in message
    assert "FULA_DATA_DIR" in message


# ---------------------------------------------------------------------------------------------------
# ImageSet
# ---------------------------------------------------------------------------------------------------

def make_set(n=40, k=4, name="synthetic/train"):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 16, 16).contiguous()
    return ImageSet(images, torch.arange(n) % k, tuple(f"c{i}" for i in range(k)), name)


def test_imageset_validates_its_tensors():
    good = make_set()
    with pytest.raises(TypeError, match="uint8"):
        ImageSet(good.images.float(), good.labels, good.classes, "x/train")
    with pytest.raises(TypeError, match="int64"):
        ImageSet(good.images, good.labels.int(), good.classes, "x/train")
    with pytest.raises(ValueError, match="40 images but 39 labels"):
        ImageSet(good.images, good.labels[:-1], good.classes, "x/train")
    assert good.num_classes == 4 and len(good) == 40 and good.base_name == "synthetic"


def test_take_is_a_fixed_random_subset():
    ds = make_set()
    sub = ds.take(10, seed=3)
    assert len(sub) == 10 and torch.equal(sub.images, ds.take(10, seed=3).images)
    assert not torch.equal(sub.images, ds.take(10, seed=4).images)
    ids = sub.images[:, 0, 0, 0].long()
    assert len(set(ids.tolist())) == 10 and torch.equal(sub.labels, ids % 4)  # labels travel with images
    assert ds.take(40) is ds and ds.take(1000) is ds
    assert sub.base_name == "synthetic"
    with pytest.raises(ValueError, match="at least 1"):
        ds.take(0)


def test_first_classes_keeps_all_class_names():
    ds = make_set()
    sub = ds.first_classes(2)
    assert len(sub) == 20 and set(sub.labels.tolist()) == {0, 1}
    assert sub.classes == ds.classes and sub.num_classes == 4
    assert len(ds.first_classes(4)) == 40
    for bad in (0, 5):
        with pytest.raises(ValueError, match="between 1 and 4"):
            ds.first_classes(bad)


def test_with_images_and_to():
    ds = make_set()
    new = ds.with_images(torch.zeros_like(ds.images))
    assert torch.equal(new.labels, ds.labels) and new.classes == ds.classes and int(new.images.max()) == 0
    with pytest.raises(ValueError, match="39 images for the 40 labels"):
        ds.with_images(ds.images[:-1])
    moved = ds.to("cpu")
    assert moved.images.device.type == "cpu" and torch.equal(moved.images, ds.images)


# ---------------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------------

def test_to_float_range_and_type():
    x = data.to_float(torch.tensor([0, 128, 255], dtype=torch.uint8))
    assert x.dtype == torch.float32 and torch.allclose(x, torch.tensor([0, 128 / 255, 1.0]))
    with pytest.raises(TypeError, match="uint8"):
        data.to_float(x)


def single_dot_images(n=200, size=12):
    """Images that are black but for one white pixel at a known place, away from the border."""
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(4, size - 4, (n,), generator=gen)
    cols = torch.randint(4, size - 4, (n,), generator=gen)
    images[torch.arange(n), 0, rows, cols] = 255
    return images, rows, cols


def test_crop_shifts_content_by_at_most_the_padding():
    images, rows, cols = single_dot_images()
    out = data.augment(images, padding=3, flip=False, generator=torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    flat = out.view(len(out), -1).argmax(1)
    dr, dc = flat // 12 - rows, flat % 12 - cols
    assert dr.abs().max() <= 3 and dc.abs().max() <= 3
    assert set(dr.tolist()) == set(range(-3, 4)) and set(dc.tolist()) == set(range(-3, 4))  # all offsets used
    assert torch.all(out.view(len(out), -1).sum(1) == 1)  # the dot is never cropped away, nothing added


def test_crop_pads_with_zeros():
    white = torch.full((64, 3, 8, 8), 255, dtype=torch.uint8)
    out = data.augment(white, padding=2, flip=False, generator=torch.Generator().manual_seed(0))
    assert set(out.unique().tolist()) == {0.0, 1.0}
    assert torch.all(out[:, :, 2:6, 2:6] == 1)  # the centre can never come from the padding


def test_flip_mirrors_some_samples_and_only_flips():
    images, _, _ = single_dot_images()
    out = data.augment(images, padding=0, flip=True, generator=torch.Generator().manual_seed(0))
    plain = data.to_float(images)
    same = (out == plain).flatten(1).all(1)
    mirrored = (out == plain.flip(3)).flatten(1).all(1)
    assert torch.all(same | mirrored) and 0.3 < mirrored.float().mean() < 0.7
    assert torch.equal(data.augment(images, padding=0, flip=False, generator=None), plain)


def test_augment_is_reproducible_from_the_generator():
    images, _, _ = single_dot_images()
    a = data.augment(images, 2, True, torch.Generator().manual_seed(5))
    b = data.augment(images, 2, True, torch.Generator().manual_seed(5))
    c = data.augment(images, 2, True, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------------

def ids_of(x):
    """Recover the sample ids that make_set writes into every pixel."""
    return (x[:, 0, 0, 0] * 255).round().long()


def test_batches_cover_every_sample_once_in_a_seeded_order():
    ds = make_set(n=40)
    epoch = list(data.batches(ds, 16, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(y) for _, y in epoch] == [16, 16, 8]
    ids = torch.cat([ids_of(x) for x, _ in epoch])
    assert sorted(ids.tolist()) == list(range(40)) and ids.tolist() != list(range(40))
    assert torch.equal(torch.cat([y for _, y in epoch]), ids % 4)  # labels stay with their images
    again = torch.cat([ids_of(x) for x, _ in data.batches(ds, 16, shuffle=True, generator=torch.Generator().manual_seed(0))])
    other = torch.cat([ids_of(x) for x, _ in data.batches(ds, 16, shuffle=True, generator=torch.Generator().manual_seed(1))])
    assert torch.equal(ids, again) and not torch.equal(ids, other)


def test_batches_in_order_and_drop_last():
    ds = make_set(n=40)
    epoch = list(data.batches(ds, 16, shuffle=False))
    assert torch.cat([ids_of(x) for x, _ in epoch]).tolist() == list(range(40))
    assert epoch[0][0].dtype == torch.float32 and epoch[0][1].dtype == torch.int64
    assert [len(y) for _, y in data.batches(ds, 16, shuffle=False, drop_last=True)] == [16, 16]
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(ds, 0, shuffle=False))


def test_batches_augment_with_the_data_sets_settings():
    ds = data.load("synthetic", "train")
    plain = next(data.batches(ds, 64, shuffle=False))[0]
    aug = next(data.batches(ds, 64, shuffle=False, augment_data=True, generator=torch.Generator().manual_seed(0)))[0]
    assert aug.shape == plain.shape and not torch.equal(aug, plain)
    # Synthetic data are cropped (padding 2) but never flipped: the bright quadrant stays on its side.
    left = lambda x: x.mean(1)[:, :, :6].mean((1, 2))
    right = lambda x: x.mean(1)[:, :, 10:].mean((1, 2))
    assert torch.equal(left(plain) > right(plain), left(aug) > right(aug))
    unknown = ImageSet(ds.images, ds.labels, ds.classes, "mystery/train")
    with pytest.raises(ValueError, match="mystery"):
        next(data.batches(unknown, 8, shuffle=False, augment_data=True))


# ---------------------------------------------------------------------------------------------------
# Batching with shortcut markers: augment the clean images, then paste fresh markers
# ---------------------------------------------------------------------------------------------------

def ramp_set(n=200, k=10):
    """CIFAR-shaped images (so batches crops with padding 4 and flips) whose value rises from left to right
    (100 + 4 * column), so a flip shows as a falling ramp and a crop as a band of zero padding."""
    ramp = (100 + 4 * torch.arange(32)).to(torch.uint8)
    images = ramp.view(1, 1, 1, 32).expand(n, 3, 32, 32).contiguous()
    return ImageSet(images, torch.arange(n) % k, tuple(f"c{i}" for i in range(k)), "cifar10/train")


def as_uint8(x):
    return (x * 255).round().to(torch.uint8)


@pytest.mark.parametrize("kind", ["pixel_location", "aruco_location", "location"])
def test_class_markers_are_pasted_after_crop_and_flip(kind):
    """On flipped and cropped images the class marker sits at its class location with its class content:
    it was pasted after the augmentation (pasted before, a flip would mirror its place and a crop move it)."""
    from fula_core.shortcuts import add_shortcut, marker_layout

    ds = ramp_set()
    marked = add_shortcut(ds, kind, layout_seed=3)
    x, y = next(data.batches(marked, len(ds), shuffle=False, augment_data=True,
                             generator=torch.Generator().manual_seed(0)))
    x = as_uint8(x)
    # The same augmentation of the clean images, from the same generator stream (no shuffle: no randperm).
    augmented = data.augment_uint8(ds.images, 4, True, torch.Generator().manual_seed(0))
    flipped = augmented[:, 0, 16, 12] > augmented[:, 0, 16, 20]
    shifted = (augmented[:, 0] == 0).flatten(1).any(1)
    assert 0.3 < flipped.float().mean() < 0.7 and shifted.float().mean() > 0.5  # the augmentation did act
    layout = marker_layout(marked.markers, 10, 3, 32, 32)
    for i in range(len(ds)):
        r, c = layout.locations[y[i]].tolist()
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[r:r + 4, c:c + 4] = True
        assert torch.equal(x[i][:, ~inside], augmented[i][:, ~inside])  # the rest is the augmented image
        if layout.content is not None:
            assert torch.equal(x[i][:, r:r + 4, c:c + 4], layout.content[y[i]])  # not mirrored, not moved
        else:
            assert not torch.equal(x[i][:, r:r + 4, c:c + 4], augmented[i][:, r:r + 4, c:c + 4])  # noise there


@pytest.mark.parametrize("kind", ["pixel", "random", "location", "aruco"])
def test_random_markers_are_redrawn_every_time_an_image_is_drawn(kind):
    from fula_core.shortcuts import add_shortcut

    marked = add_shortcut(ramp_set(), kind)
    gen = torch.Generator().manual_seed(5)
    first = as_uint8(next(data.batches(marked, 200, shuffle=False, generator=gen))[0])
    state = gen.get_state()
    second = as_uint8(next(data.batches(marked, 200, shuffle=False, generator=gen))[0])
    changed = (first != second).flatten(1).any(1)
    assert changed.float().mean() > 0.95  # a new location or new noise for (nearly) every image
    assert not torch.equal(first, marked.images)  # nor the stored copy (one draw with add_shortcut's seed, 0)
    stored_draw = next(data.batches(marked, 200, shuffle=False, generator=torch.Generator().manual_seed(0)))[0]
    assert torch.equal(as_uint8(stored_draw), marked.images)  # which is the first draw of a generator seeded 0
    # Still reproducible from the generator: the same seed or a restored state draws the same markers.
    again = torch.Generator().manual_seed(5)
    assert torch.equal(first, as_uint8(next(data.batches(marked, 200, shuffle=False, generator=again))[0]))
    resumed = torch.Generator()
    resumed.set_state(state)
    assert torch.equal(second, as_uint8(next(data.batches(marked, 200, shuffle=False, generator=resumed))[0]))


def test_fixed_class_markers_without_augmentation_are_the_stored_copy():
    from fula_core.shortcuts import add_shortcut

    marked = add_shortcut(ramp_set(), "pixel_location")
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        x = torch.cat([xb for xb, _ in data.batches(marked, 64, shuffle=False, generator=gen)])
        assert torch.equal(x, data.to_float(marked.images))


def test_markers_travel_with_the_set_but_not_to_new_images():
    from fula_core.shortcuts import MarkerSpec, add_shortcut

    marked = add_shortcut(ramp_set(), "pixel", seed=1, layout_seed=2)
    assert marked.markers == MarkerSpec("pixel", 0, 2) and torch.equal(marked.clean_images, ramp_set().images)
    for derived in (marked.take(50, seed=1), marked.first_classes(3), marked.to("cpu")):
        assert derived.markers == marked.markers
        assert derived.clean_images.shape == derived.images.shape
        assert torch.equal(derived.clean_images, ramp_set().images[: len(derived)])  # all clean rows are alike
    sub = marked.take(50, seed=1)
    chosen = torch.randperm(200, generator=torch.Generator().manual_seed(1))[:50].sort().values
    assert torch.equal(sub.images, marked.images[chosen]) and torch.equal(sub.labels, marked.labels[chosen])
    iri_like = marked.with_images(marked.images)
    assert iri_like.markers is None and iri_like.clean_images is None  # new images are taken as they are
    with pytest.raises(ValueError, match="go together"):
        ImageSet(marked.images, marked.labels, marked.classes, "x/train", markers=marked.markers)
    with pytest.raises(ValueError, match="must match images"):
        ImageSet(marked.images, marked.labels, marked.classes, "x/train", markers=marked.markers,
                 clean_images=marked.images[:, :1])
    assert "MarkerSpec(kind='pixel'" in repr(marked)
