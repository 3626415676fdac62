"""Data sets, augmentation and mini-batching.

Every data set is read once into memory as uint8 tensors (`ImageSet`), so that shortcut markers
(`shortcuts.py`) and identically represented inputs (IRIs) can be written into the images directly,
and so that a whole set can live on the accelerator during training.

Data sets (FuLA paper, Sec. 3 and App. A.1):

* ``cifar10``        -- CIFAR-10, 3x32x32, the paper's main data set.
* ``ls_imagenet10``  -- "LS-ImageNet-10": 10 ImageNet classes at 32x32. The paper only says they were sampled
                        at random; we use the authors' ten (their ``data/ls_imagenet10.txt``), listed with
                        their devkit indices in ``ls_imagenet10_classes.txt``, and their downscaling of
                        full-size images (Resize(32), then CenterCrop(32)).
* ``fashion_mnist``  -- Fashion-MNIST, 1x28x28; an offline end-model task (readable from a Debian package).
* ``digits``         -- scikit-learn's 8x8 handwritten digits upsampled to 1x28x28; an offline, different
                        task for the front model in cross-task stitching into a Fashion-MNIST end model.
* ``synthetic``      -- a tiny generated set for unit tests.

Augmentation follows the paper's recipe (random crop with zero padding + random horizontal flip), run
batched on the device with per-sample random offsets drawn from a seeded generator. A set that carries
shortcut markers (`shortcuts.add_shortcut`) keeps its clean images too: `batches` augments the clean
images and then pastes freshly drawn markers, as the authors' data loaders do.
"""
from __future__ import annotations

import dataclasses
import gzip
import math
import os
import pathlib
import pickle
import re
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .shortcuts import MarkerSpec, draw_device, draw_marker_randomness, paste_markers

SPLITS = ("train", "test")

DATASET_INFO: dict[str, dict] = {
    # CIFAR-like 32px RGB: the paper's recipe, crop with 4-pixel padding + horizontal flips (App. A.1).
    "cifar10": dict(in_channels=3, image_size=32, num_classes=10, flip=True, crop_padding=4),
    "ls_imagenet10": dict(in_channels=3, image_size=32, num_classes=10, flip=True, crop_padding=4),
    # 28px grey sets: padding scaled down to 2 pixels. Clothes are mirror-symmetric classes (a flipped
    # shoe is still a shoe), so flips stay on; digits are not (a mirrored 2 or 7 is no longer a digit).
    "fashion_mnist": dict(in_channels=1, image_size=28, num_classes=10, flip=True, crop_padding=2),
    "digits": dict(in_channels=1, image_size=28, num_classes=10, flip=False, crop_padding=2),
    # The synthetic label is "which quadrant is bright": a flip would change the class, so no flips.
    "synthetic": dict(in_channels=3, image_size=16, num_classes=4, flip=False, crop_padding=2),
}

# Training images of a set's whole training split, for cost estimates (zoo, units); digits: scikit-learn's 1797
# images minus the 360 held out for testing. A set not listed counts as DEFAULT_TRAIN_IMAGES.
TRAIN_IMAGES = {"cifar10": 50000, "fashion_mnist": 60000, "digits": 1437}
DEFAULT_TRAIN_IMAGES = 60000


def train_images(dataset: str) -> int:
    """Images in `dataset`'s whole training split, as cost estimates count them."""
    return TRAIN_IMAGES.get(dataset, DEFAULT_TRAIN_IMAGES)


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Where the Debian package `dataset-fashion-mnist` installs the original idx.gz files.
FASHION_MNIST_SYSTEM_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
LS_IMAGENET10_CLASS_FILE = pathlib.Path(__file__).with_name("ls_imagenet10_classes.txt")


class DataNotFoundError(FileNotFoundError):
    """A data set's files are not on disk and could not be fetched; the message says where we looked
    and how to get them."""


class CorruptDataError(ValueError):
    """A data file that is there but damaged (truncated, not the expected format); the message names it and
    how to replace it."""


# ---------------------------------------------------------------------------------------------------
# The in-memory data set
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)  # eq=False: compare by identity, element-wise tensor == has no truth value
class ImageSet:
    """A whole data set as tensors: images uint8 [N, C, H, W], labels int64 [N].

    A set with shortcut markers (shortcuts.add_shortcut) also has `markers`, the MarkerSpec, and
    `clean_images`, the images before pasting. `images` then holds one fixed draw of the markers, which
    everything that reads images directly sees (evaluation, least-squares samples, IRI sources, figures),
    while `batches` draws new markers per batch onto the augmented clean images (training).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str  # "<data set>/<split>", with suffixes for derived sets, e.g. "cifar10/train+pixel(layout=0)(draws=0)"
    markers: MarkerSpec | None = None
    clean_images: torch.Tensor | None = None
    # crop/flip recipe {"crop_padding": int, "flip": bool} for batches(augment_data=True); None: the
    # registered recipe of the set's base name (DATASET_INFO). {"crop_padding": 0, "flip": False} = none.
    augmentation: dict | None = None

    def __post_init__(self):
        # Catch shape and dtype mistakes where the set is made, not deep inside a training loop.
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise TypeError(f"ImageSet {self.name!r}: images must be uint8 [N, C, H, W], "
                            f"got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise TypeError(f"ImageSet {self.name!r}: labels must be int64 [N], "
                            f"got {self.labels.dtype} {tuple(self.labels.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"ImageSet {self.name!r}: {len(self.images)} images but {len(self.labels)} labels")
        if self.images.device != self.labels.device:
            raise ValueError(f"ImageSet {self.name!r}: images on {self.images.device}, labels on {self.labels.device}")
        if (self.markers is None) != (self.clean_images is None):
            raise ValueError(f"ImageSet {self.name!r}: markers and clean_images go together (shortcuts.add_shortcut)")
        if self.clean_images is not None and (self.clean_images.shape != self.images.shape or
                                              self.clean_images.dtype != torch.uint8 or
                                              self.clean_images.device != self.images.device):
            raise ValueError(f"ImageSet {self.name!r}: clean_images must match images (uint8, same shape and device)")
        object.__setattr__(self, "classes", tuple(self.classes))

    @classmethod
    def from_tensors(cls, images: torch.Tensor, labels, classes=None, name: str = "custom", split: str = "train",
                     augmentation: dict | None = None) -> "ImageSet":
        """Your own images as an ImageSet: uint8 in 0..255 or float in [0, 1], [N, C, H, W] or [N, H, W]
        (one channel); labels 0..K-1. classes: names (default "0".."K-1"); augmentation: the crop/flip
        recipe for training, e.g. {"crop_padding": 4, "flip": True} (default: none)."""
        images = torch.as_tensor(images)
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if images.dtype != torch.uint8:
            if images.is_floating_point() and (images.min() < 0 or images.max() > 1):
                raise ValueError(f"float images must lie in [0, 1] (got {float(images.min()):.3g}..{float(images.max()):.3g}): "
                                 f"the library's models see images in [0, 1]; pass uint8 images or rescale first")
            images = images.float().mul(255).round().clamp(0, 255).to(torch.uint8)
        labels = torch.as_tensor(labels).long().view(-1)
        k = int(labels.max()) + 1 if len(labels) else 0
        classes = tuple(str(c) for c in (classes if classes is not None else range(k)))
        if len(labels) and k > len(classes):
            raise ValueError(f"label {k - 1} has no class name: got {len(classes)} classes")
        aug = dict(crop_padding=0, flip=False) if augmentation is None else _checked_augmentation(augmentation)
        return cls(images.contiguous(), labels, classes, f"{name}/{split}", augmentation=aug)

    @classmethod
    def from_dataset(cls, dataset, name: str = "custom", split: str = "train", classes=None,
                     augmentation: dict | None = None, limit: int | None = None) -> "ImageSet":
        """Any torchvision-style data set (items (image, label); PIL images, arrays or tensors, before any
        normalisation) read into memory; `limit` keeps the first items only. Class names from
        `dataset.classes` when it has them."""
        import numpy as np  # noqa: F811

        images, labels = [], []
        n = len(dataset) if limit is None else min(limit, len(dataset))
        for i in range(n):
            image, label = dataset[i]
            if not isinstance(image, torch.Tensor):
                image = torch.from_numpy(np.array(image))
                image = image.unsqueeze(0) if image.dim() == 2 else image.permute(2, 0, 1)  # HWC -> CHW
            images.append(image)
            labels.append(int(label))
        stacked = torch.stack(images)
        classes = classes if classes is not None else getattr(dataset, "classes", None)
        return cls.from_tensors(stacked, torch.tensor(labels), classes, name, split, augmentation)

    def __repr__(self) -> str:
        """A one-line summary instead of the tensors' contents."""
        markers = f", {self.markers}" if self.markers is not None else ""
        return (f"ImageSet({self.name!r}, images=uint8{list(self.images.shape)} on {self.images.device}, "
                f"{self.num_classes} classes{markers})")

    def __len__(self) -> int:
        """Number of samples."""
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """Number of classes of the task (the models' output size), whether or not all occur in this set."""
        return len(self.classes)

    @property
    def base_name(self) -> str:
        """The data set's name without split or suffixes, the key into DATASET_INFO."""
        return self.name.split("/")[0]

    def to(self, device) -> "ImageSet":
        """The same set with its tensors on `device`."""
        clean = self.clean_images.to(device) if self.clean_images is not None else None
        return dataclasses.replace(self, images=self.images.to(device), labels=self.labels.to(device),
                                   clean_images=clean)

    def _select(self, index: torch.Tensor, name: str) -> "ImageSet":
        """The samples at `index` (a bool mask or int indices), clean images and markers kept."""
        clean = self.clean_images[index] if self.clean_images is not None else None
        return dataclasses.replace(self, images=self.images[index], labels=self.labels[index], clean_images=clean,
                                   name=name)

    def take(self, n: int, seed: int = 0) -> "ImageSet":
        """A fixed random subset of `n` samples (kept in their original order); the whole set if n >= len."""
        if n < 1:
            raise ValueError(f"take(n={n}): n must be at least 1")
        if n >= len(self):
            return self
        chosen = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return self._select(chosen.to(self.labels.device), f"{self.name}[take={n},seed={seed}]")

    def first_classes(self, k: int) -> "ImageSet":
        """Only the samples of the first `k` classes (labels < k), for the class-subset testbed (paper
        Fig. 9: "CIFAR-k" holds the classes with label index < k). All K class names are kept, because
        the models still have K outputs; only samples are dropped."""
        if not 1 <= k <= self.num_classes:
            raise ValueError(f"first_classes(k={k}): k must be between 1 and {self.num_classes} "
                             f"(the number of classes of {self.name!r})")
        return self._select(self.labels < k, f"{self.name}[classes<{k}]")

    def with_images(self, images: torch.Tensor) -> "ImageSet":
        """The same labels and classes with new uint8 images of the same count (IRIs).

        The new images are taken as they are: a marker spec is not kept, because images made from a marked
        set (IRIs inverted from it) already carry what they carry, and pasting fresh markers over them in
        training would change them (the authors train on IRIs without their marker transform)."""
        if images.shape[0] != len(self):
            raise ValueError(f"with_images: got {images.shape[0]} images for the {len(self)} labels of {self.name!r}")
        return dataclasses.replace(self, images=images, markers=None, clean_images=None)


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------

def data_root() -> pathlib.Path:
    """Where data sets live: $FULA_DATA_DIR if set, else `data/` in the repository (beside fula_core)."""
    env = os.environ.get("FULA_DATA_DIR")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path(__file__).resolve().parent.parent / "data"


_REGISTERED: dict[str, dict[str, ImageSet]] = {}


def register(name: str, train: ImageSet, test: ImageSet | None = None) -> str:
    """Make your own data usable wherever the library takes a data set name (load, experiments.DataSpec,
    the cached runner). Returns the name to use: `name` plus a fingerprint of the images and labels, so
    that cached results of different data never share a key."""
    import hashlib

    digest = hashlib.sha256()
    for part in (train, test):
        if part is not None:
            digest.update(part.images.cpu().numpy().tobytes()), digest.update(part.labels.cpu().numpy().tobytes())
    key = f"{name}@{digest.hexdigest()[:10]}"
    splits = {"train": train} if test is None else {"train": train, "test": test}
    _REGISTERED[key] = {s: dataclasses.replace(d, name=f"{key}/{s}") for s, d in splits.items()}
    return key


def load(name: str, split: str, root=None, device="cpu") -> ImageSet:
    """Read a whole split of a data set into memory.

    name: one of DATASET_INFO ("cifar10", "ls_imagenet10", "fashion_mnist", "digits", "synthetic").
    split: "train" or "test" (for LS-ImageNet-10 "test" is ImageNet's validation set).
    root: the folder to read from (default `data_root()`); see each loader for the layout it expects.
    """
    if name in _REGISTERED:
        if split not in _REGISTERED[name]:
            raise ValueError(f"data set {name!r} was registered without a {split!r} split")
        return _REGISTERED[name][split].to(device)
    if name not in _LOADERS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join([*_LOADERS, *_REGISTERED])} "
                         f"(your own data: data.register(name, ImageSet.from_tensors(...)))")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for {name!r}; valid splits: {', '.join(SPLITS)}")
    root = pathlib.Path(root).expanduser() if root is not None else data_root()
    images, labels, classes = _LOADERS[name](root, split)
    data = ImageSet(images=images, labels=labels, classes=tuple(classes), name=f"{name}/{split}")
    _check_against_info(data)
    return data.to(device)


def _check_against_info(data: ImageSet) -> None:
    """Every loader must deliver what DATASET_INFO promises, since the models are built from it."""
    info = DATASET_INFO[data.base_name]
    expected = (info["in_channels"], info["image_size"], info["image_size"])
    if tuple(data.images.shape[1:]) != expected or data.num_classes != info["num_classes"]:
        raise ValueError(f"{data.name}: loaded images {tuple(data.images.shape[1:])} with {data.num_classes} "
                         f"classes, expected {expected} with {info['num_classes']}")
    if len(data) and int(data.labels.max()) >= data.num_classes:
        raise ValueError(f"{data.name}: label {int(data.labels.max())} out of range for {data.num_classes} classes")


# --- CIFAR-10 ----------------------------------------------------------------------------------------

_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _load_cifar10(root: pathlib.Path, split: str):
    """CIFAR-10 from `<root>/cifar-10-batches-py` (the python version of the data set, torchvision's layout).

    When the files are missing, torchvision downloads (and md5-checks) them into `root`; the batches are then
    read here in both cases, so a present copy is read the same way whether it was downloaded or copied in.
    """
    folder = root if root.name == _CIFAR_FOLDER else root / _CIFAR_FOLDER
    wanted = _CIFAR_FILES[split] + ["batches.meta"]
    if any(not (folder / f).is_file() for f in wanted):
        try:
            _download_cifar10(folder.parent)
        except Exception as err:  # no network, proxy, disk full...: all end in the same advice
            missing = [f for f in wanted if not (folder / f).is_file()]
            raise DataNotFoundError(
                f"CIFAR-10 not found: {folder} lacks {', '.join(missing)}, and downloading it failed "
                f"({type(err).__name__}: {err}). Get 'CIFAR-10 python version' (cifar-10-python.tar.gz, "
                f"from the CIFAR-10 page or with torchvision.datasets.CIFAR10(root, download=True) on a machine "
                f"with internet), unpack it so that {folder} holds data_batch_1..5, test_batch and batches.meta, "
                f"or point FULA_DATA_DIR / root at the folder that contains {_CIFAR_FOLDER}.") from err
    meta = _read_pickle(folder / "batches.meta")
    images, labels = [], []
    for f in _CIFAR_FILES[split]:
        batch = _read_pickle(folder / f)
        # Each row is one image stored channel-major: 1024 red, 1024 green, then 1024 blue values.
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch["labels"], dtype=np.int64))
    return (torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)),
            tuple(meta["label_names"]))


def _download_cifar10(root: pathlib.Path) -> None:
    """Let torchvision fetch and verify CIFAR-10 into `root` (separate so tests can simulate no network)."""
    import torchvision

    torchvision.datasets.CIFAR10(str(root), train=True, download=True)


def _read_pickle(path: pathlib.Path) -> dict:
    """Unpickle a CIFAR / downsampled-ImageNet batch; these were written by Python 2, hence latin1."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as err:
        raise DataNotFoundError(f"{path} exists but cannot be read as a pickled batch ({type(err).__name__}: "
                                f"{err}); the file is probably truncated: delete it and fetch it again.") from err


# --- Fashion-MNIST -------------------------------------------------------------------------------------

_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _load_fashion_mnist(root: pathlib.Path, split: str):
    """Fashion-MNIST from the original idx files, looked for in order in `<root>/FashionMNIST/raw`
    (torchvision's layout), in FASHION_MNIST_SYSTEM_DIR (Debian package `dataset-fashion-mnist`), and
    finally downloaded by torchvision into `<root>/FashionMNIST/raw`."""
    folders = [root / "FashionMNIST" / "raw", FASHION_MNIST_SYSTEM_DIR]
    for folder in folders:
        found = _find_idx_pair(folder, split)
        if found:
            break
    else:
        try:
            _download_fashion_mnist(root)
        except Exception as err:
            raise DataNotFoundError(
                f"Fashion-MNIST not found: none of {', '.join(map(str, folders))} holds "
                f"{' and '.join(_IDX_FILES[split])} (.gz or unpacked), and downloading it failed "
                f"({type(err).__name__}: {err}). Install it with `apt-get install dataset-fashion-mnist`, "
                f"or run torchvision.datasets.FashionMNIST('{root}', download=True) where there is internet, "
                f"or copy the four idx files into {folders[0]}.") from err
        found = _find_idx_pair(folders[0], split)
        if not found:
            raise DataNotFoundError(f"torchvision reported a download of Fashion-MNIST, but {folders[0]} still "
                                    f"lacks {' and '.join(_IDX_FILES[split])}.")
    images = _read_idx(found[0])
    labels = _read_idx(found[1])
    return (torch.from_numpy(images.astype(np.uint8)).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)), FASHION_MNIST_CLASSES)


def _download_fashion_mnist(root: pathlib.Path) -> None:
    """Let torchvision fetch Fashion-MNIST into `<root>/FashionMNIST/raw` (separate so tests can fake it)."""
    import torchvision

    torchvision.datasets.FashionMNIST(str(root), train=True, download=True)


def _find_idx_pair(folder: pathlib.Path, split: str):
    """Paths of the (images, labels) idx files of `split` in `folder`, gzipped or not; None if incomplete."""
    found = []
    for stem in _IDX_FILES[split]:
        candidates = [folder / (stem + ".gz"), folder / stem]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found


def _read_idx(path: pathlib.Path) -> np.ndarray:
    """Read an idx file (the MNIST format): 2 zero bytes, a type code, the number of dimensions, then the
    big-endian int32 sizes and the raw data. Only unsigned-byte data (type 0x08) occurs in (Fashion-)MNIST."""
    fix = _IDX_FIX.format(path=path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, OSError, zlib.error) as err:  # a truncated .gz (EOFError), not gzip at all (BadGzipFile)...
        raise CorruptDataError(f"{path} cannot be read ({type(err).__name__}: {err}): the file is damaged or "
                                f"truncated. {fix}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise CorruptDataError(f"{path} is not an unsigned-byte idx file (header {raw[:4].hex()}). {fix}")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise CorruptDataError(f"{path} ends inside its header: the file is truncated. {fix}")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise CorruptDataError(f"{path}: header promises {shape} = {math.prod(shape)} values, file holds "
                                f"{data.size}; the file is truncated. {fix}")
    return data.reshape(shape)


_IDX_FIX = ("Delete {path} and fetch it again (torchvision.datasets.FashionMNIST(root, download=True)), or "
            "reinstall the Debian package (apt-get install --reinstall dataset-fashion-mnist) if it is one of its files.")


# --- scikit-learn digits ------------------------------------------------------------------------------

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


def _load_digits(root: pathlib.Path, split: str):
    """scikit-learn's 1797 handwritten 8x8 digits (values 0..16, shipped with the package, so always
    offline), scaled to 0..255 and upsampled to 28x28 with bilinear interpolation so that they have the
    Fashion-MNIST geometry; a stratified 80/20 train/test split with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    small = torch.from_numpy(digits.images).float().unsqueeze(1) * (255.0 / 16.0)
    big = F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
    images = big.round().clamp(0, 255).to(torch.uint8)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION,
                                           stratify=digits.target, random_state=DIGITS_SPLIT_SEED)
    idx = torch.from_numpy(np.sort(train_idx if split == "train" else test_idx))
    return images[idx], labels[idx], tuple(str(d) for d in range(10))


# --- LS-ImageNet-10 --------------------------------------------------------------------------------------

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
_FOLDER_SPLIT = {"train": "train", "test": "val"}


def ls_imagenet10_classes() -> list[tuple[str, int, str]]:
    """The 10 LS-ImageNet-10 classes as (wnid, 1-based ILSVRC map_clsloc index, name), in label order."""
    rows = []
    for line in LS_IMAGENET10_CLASS_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            wnid, index, label = line.split()
            rows.append((wnid, int(index), label))
    return rows


def _load_ls_imagenet10(root: pathlib.Path, split: str):
    """Ten ImageNet classes at 32x32 RGB, from either of two layouts under the data set folder, which is
    `root` itself or `root/ls_imagenet10`:

    (a) image folders `train/<wnid>/*.{png,jpg,jpeg}` and `val/<wnid>/...`: full-size ImageNet files or
        the authors' 32x32 PNGs, any size and mode, brought to 32x32 RGB as the authors' data script does
        (`_downscale_as_authors`);
    (b) downsampled ImageNet ("Imagenet32", Chrabaszcz et al. 2017) batches `train_data_batch_1..10` and
        `val_data`: pickled dicts (or .npz) with 'data' uint8 [N, 3*32*32] channel-major and 'labels'
        1-based in the ILSVRC map_clsloc.txt order; only our 10 classes are kept.
    Image folders win when both are present.
    """
    classes = ls_imagenet10_classes()
    candidates = [root, root / "ls_imagenet10"]
    for folder in candidates:
        if (folder / _FOLDER_SPLIT[split]).is_dir():
            return _read_image_folders(folder / _FOLDER_SPLIT[split], classes)
        batch_files = _imagenet32_batch_files(folder, split)
        if batch_files:
            return _read_imagenet32_batches(batch_files, classes)
    raise DataNotFoundError(
        f"LS-ImageNet-10 ({split}) not found in {' or '.join(map(str, candidates))}. Provide either "
        f"(a) image folders {_FOLDER_SPLIT[split]}/<wnid>/*.png|jpg|jpeg for the wnids "
        f"{', '.join(w for w, _, _ in classes)} (for example copied from the ILSVRC-2012 train/val sets), or "
        f"(b) the downsampled ImageNet 32x32 files ('Imagenet32_train' / 'Imagenet32_val' from image-net.org: "
        f"train_data_batch_1..10 and val_data) unpacked into that folder. Set FULA_DATA_DIR or pass root "
        f"to point at it; the class list is {LS_IMAGENET10_CLASS_FILE}.")


def _downscale_as_authors(img):
    """One PIL image -> uint8 [3, 32, 32], as the authors' data/generate_ls_imagenet.py makes LS-ImageNet:
    Resize(32) (shorter side to 32 pixels, aspect ratio kept, bilinear with PIL's antialiasing), then
    CenterCrop(32). Their script resizes each file in its own mode and only afterwards goes to RGB (CMYK in
    the script, greyscale when their ImageFolder loader reads the saved PNG), so we resize greyscale and CMYK
    files as such too. Palette and 1-bit files are converted to RGB first, because PIL would resize them by
    nearest neighbour only (a case the ImageNet JPEGs do not raise). A 32x32 file, e.g. one of the authors'
    saved PNGs, passes unchanged (PIL returns a copy when the size already matches)."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Resize

    if img.mode in ("P", "PA", "1"):
        img = img.convert("RGB")
    small = Compose([Resize(32, interpolation=InterpolationMode.BILINEAR), CenterCrop(32)])(img).convert("RGB")
    return np.asarray(small, dtype=np.uint8).transpose(2, 0, 1)


def _read_image_folders(split_dir: pathlib.Path, classes):
    """Layout (a): one folder per wnid; labels follow the class file's (wnid-sorted) order, files are read in
    name order within a class."""
    from PIL import Image

    images, labels = [], []
    missing = [w for w, _, _ in classes if not (split_dir / w).is_dir()]
    if missing:
        raise DataNotFoundError(f"{split_dir} lacks the class folders {', '.join(missing)} "
                                f"(LS-ImageNet-10 needs one folder per wnid in {LS_IMAGENET10_CLASS_FILE})")
    for label, (wnid, _, _) in enumerate(classes):
        files = sorted(p for p in (split_dir / wnid).iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            raise DataNotFoundError(f"{split_dir / wnid} holds no .png/.jpg/.jpeg images")
        for path in files:
            with Image.open(path) as img:
                images.append(_downscale_as_authors(img))
            labels.append(label)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64), [n for _, _, n in classes]


def _imagenet32_batch_files(folder: pathlib.Path, split: str) -> list[pathlib.Path]:
    """Layout (b) files of `split` in `folder` (pickles, or .npz as some copies ship them), train batches in
    numeric order and one file per batch number; [] if there are none."""
    if not folder.is_dir():
        return []
    if split == "test":
        return [p for p in (folder / "val_data", folder / "val_data.npz") if p.is_file()][:1]
    by_number = {}
    for path in sorted(folder.iterdir()):  # "..._1" sorts before "..._1.npz": the pickle wins a tie
        match = re.fullmatch(r"train_data_batch_(\d+)(\.npz)?", path.name)
        if match and path.is_file():
            by_number.setdefault(int(match.group(1)), path)
    return [by_number[k] for k in sorted(by_number)]


def _read_imagenet32_batches(files, classes):
    """Layout (b): read each batch, keep our classes, relabel them 0..9 in class-file order."""
    to_label = torch.full((1001,), -1, dtype=torch.int64)  # map_clsloc index (1..1000) -> our label
    for label, (_, index, _) in enumerate(classes):
        to_label[index] = label
    images, labels = [], []
    for path in files:
        batch = dict(np.load(path)) if path.suffix == ".npz" else _read_pickle(path)
        ours = to_label[torch.as_tensor(np.asarray(batch["labels"], dtype=np.int64))]
        keep = ours >= 0
        data = torch.from_numpy(np.asarray(batch["data"], dtype=np.uint8))[keep]
        side = math.isqrt(data.shape[1] // 3)
        images.append(data.reshape(-1, 3, side, side))
        labels.append(ours[keep])
    images = torch.cat(images)
    if images.shape[-1] != 32:  # the Imagenet64/16 variants share the format; bring them to 32x32
        images = F.interpolate(images.float(), size=(32, 32), mode="bilinear", antialias=True)
        images = images.round().clamp(0, 255).to(torch.uint8)
    return images, torch.cat(labels), [n for _, _, n in classes]


# --- synthetic ----------------------------------------------------------------------------------------

SYNTHETIC_SIZES = {"train": 512, "test": 256}


def _load_synthetic(root: pathlib.Path, split: str):
    """A tiny learnable set for tests: 3x16x16 noise images where the class (0..3) is the quadrant that is
    brightened (top-left, top-right, bottom-left, bottom-right). Generated from a fixed seed, no files."""
    n = SYNTHETIC_SIZES[split]
    gen = torch.Generator().manual_seed({"train": 0, "test": 1}[split])
    labels = torch.randint(0, 4, (n,), generator=gen)
    images = torch.randint(0, 96, (n, 3, 16, 16), generator=gen)
    rows, cols = torch.arange(16).view(16, 1), torch.arange(16).view(1, 16)
    quadrant = (rows >= 8).long() * 2 + (cols >= 8).long()  # [16, 16] quadrant index of every pixel
    bright = quadrant.unsqueeze(0) == labels.view(n, 1, 1)  # [n, 16, 16]
    images = images + 128 * bright.unsqueeze(1)
    return images.clamp(0, 255).to(torch.uint8), labels, ("top_left", "top_right", "bottom_left", "bottom_right")


_LOADERS = {
    "cifar10": _load_cifar10,
    "ls_imagenet10": _load_ls_imagenet10,
    "fashion_mnist": _load_fashion_mnist,
    "digits": _load_digits,
    "synthetic": _load_synthetic,
}


# ---------------------------------------------------------------------------------------------------
# Augmentation and batching
# ---------------------------------------------------------------------------------------------------

def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] (the models' input range)."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 images, got {images_uint8.dtype}")
    return images_uint8.float().div_(255.0)


def augment(images_uint8: torch.Tensor, padding: int, flip: bool,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding `padding` plus (if `flip`) a random horizontal flip with probability
    1/2, independently per sample; returns float images in [0, 1] on the images' device (see augment_uint8)."""
    return to_float(augment_uint8(images_uint8, padding, flip, generator))


def draw_augmentation(n: int, padding: int, generator: torch.Generator | None = None):
    """The random numbers of one augment_uint8 call, in its order, on the generator's device (CPU by
    default): row offsets dy int64 [n], then column offsets dx int64 [n], each uniform in 0..2*padding, then
    the flips bool [n] (a uniform draw < 1/2; drawn even where flips are off, so the stream does not depend
    on the recipe)."""
    draw_on = draw_device(generator)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=draw_on)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=draw_on)
    flipped = torch.rand(n, generator=generator, device=draw_on) < 0.5
    return dy, dx, flipped


def augment_uint8(images_uint8: torch.Tensor, padding: int, flip: bool,
                  generator: torch.Generator | None = None, *, draws=None) -> torch.Tensor:
    """Random crop with zero padding `padding` plus (if `flip`) a random horizontal flip with probability
    1/2, independently per sample; returns uint8 images on the images' device.

    All samples are cropped in one gather: output pixel (i, j) of sample n is padded pixel
    (dy_n + i, dx_n + j), with j mirrored for flipped samples. Random numbers come from `generator`
    (on its own device, CPU by default) so a seed fixes the augmentation; or, as `draws`, the
    (dy, dx, flipped) of draw_augmentation drawn before (best on the images' device: data.batches draws
    a whole epoch's worth at once).
    """
    n, _, h, w = images_uint8.shape
    device = images_uint8.device
    if draws is None:
        draws = draw_augmentation(n, padding, generator)
    dy, dx, flipped = (t.to(device) for t in draws)
    if dy.shape != (n,) or dx.shape != (n,) or flipped.shape != (n,):
        raise ValueError(f"augment_uint8: draws for {dy.shape[0]} images, but there are {n}")
    if not flip:
        flipped = torch.zeros_like(flipped)
    padded = F.pad(images_uint8, (padding, padding, padding, padding))  # zeros around every image
    cols = torch.arange(w, device=device)
    cols = torch.where(flipped.view(n, 1), w - 1 - cols, cols)  # [n, w]
    c = images_uint8.shape[1]
    row_idx = (dy.view(n, 1) + torch.arange(h, device=device)).view(n, 1, h, 1)
    col_idx = (dx.view(n, 1) + cols).view(n, 1, 1, w)
    batch_idx = torch.arange(n, device=device).view(n, 1, 1, 1)
    chan_idx = torch.arange(c, device=device).view(1, c, 1, 1)
    # Index all four dims so the result is laid out [n, c, h, w] with standard strides. (Permuting an
    # [n, h, w, 1] result gives a "contiguous" tensor with strides (hw, 1, w, 1), on which torch 2.14's
    # CPU convolution backward corrupts memory.)
    return padded[batch_idx, chan_idx, row_idx, col_idx]


def batches(data: ImageSet, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
            augment_data: bool = False, drop_last: bool = False, draw_per_epoch: bool | None = None):
    """Yield (x float [B, C, H, W] in [0, 1], y int64 [B]) over one epoch of `data`, on data's device.

    shuffle: visit the samples in the order of torch.randperm(N, generator) (drawn on the generator's
      device, CPU by default, then moved), so a seeded generator fixes the order.
    augment_data: crop/flip as DATASET_INFO says for the set's base name, with offsets from `generator`.
    drop_last: skip a final batch smaller than batch_size (keeps BatchNorm statistics well defined).
    draw_per_epoch: draw every random number of the epoch (order, crops, flips, markers) from `generator`
      when the epoch starts, in the same calls and order as batch by batch, and move them to the data's
      device in one transfer, instead of several small copies per batch. The numbers, the batches and the
      generator's state after the epoch are the same either way (tests/test_data.py); only a loop that stops
      in the middle of an epoch leaves the generator further on. None (default): per epoch when the data live
      on another device than the generator (a CUDA set with a CPU generator), where it saves the copies.

    Shortcut markers: when `data.markers` is set, every batch starts from the clean images, is augmented
    (if asked), and then gets markers pasted with fresh random locations and noise from `generator`
    (shortcuts.paste_markers), so class locations stay put under crops and flips and every draw of an
    image has a new random marker, as in the authors' loaders; a seeded generator still fixes it all
    (and a checkpointed generator state resumes it exactly).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    info = augmentation_of(data) if augment_data else {}
    n = len(data)
    device = data.labels.device
    draw_on = draw_device(generator)
    if draw_per_epoch is None:
        draw_per_epoch = draw_on != device
    stop = n - n % batch_size if drop_last else n
    source = data.images if data.markers is None else data.clean_images
    augmenting = augment_data and bool(info["crop_padding"] or info["flip"])
    if draw_per_epoch:
        order, aug_draws, marker_draws = _epoch_draws(data, source, batch_size, stop, shuffle, generator,
                                                      info.get("crop_padding", 0) if augmenting else None)
    elif shuffle:
        order = torch.randperm(n, generator=generator, device=draw_on).to(device)
    if not shuffle:
        order = torch.arange(n, device=device)
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        images, labels = source[idx], data.labels[idx]
        part = slice(start, start + len(idx))
        if augmenting:
            draws = tuple(t[part] for t in aug_draws) if draw_per_epoch else None
            images = augment_uint8(images, info["crop_padding"], info["flip"], generator, draws=draws)
        if data.markers is not None:
            draws = tuple(t[part] for t in marker_draws) if draw_per_epoch else None
            images = paste_markers(images, labels, data.markers, data.num_classes, generator, draws=draws)
        yield to_float(images), labels


def _epoch_draws(data: ImageSet, source: torch.Tensor, batch_size: int, stop: int, shuffle: bool, generator,
                 padding: int | None):
    """batches(draw_per_epoch=True): the epoch's random numbers drawn from `generator` in the order the batch
    loop would draw them (the order, then per batch the crop/flip draws, then the marker draws), packed into
    one byte buffer that goes to the data's device in one transfer, and unpacked there into per-epoch tensors
    that the loop slices batch by batch: (order or None, (dy, dx, flipped) or None, (rows, cols, noise) or None)."""
    device = data.labels.device
    draw_on = draw_device(generator)
    order = torch.randperm(len(data), generator=generator, device=draw_on) if shuffle else None
    aug, marks = [], []
    _, channels, height, width = source.shape
    for start in range(0, stop, batch_size):
        b = min(batch_size, stop - start)
        if padding is not None:
            aug.append(draw_augmentation(b, padding, generator))
        if data.markers is not None:
            marks.append(draw_marker_randomness(b, channels, height, width, data.markers.patch, generator))
    dy, dx, flipped = (torch.cat(t) for t in zip(*aug)) if aug else (None,) * 3
    rows, cols, noise = (torch.cat(t) for t in zip(*marks)) if marks else (None,) * 3
    # one byte buffer, the int64 parts first (so each starts 8-byte aligned), then flips (bool) and noise (uint8)
    drawn = [order, dy, dx, rows, cols, flipped, noise]
    present = [t for t in drawn if t is not None]
    if not present:
        return None, None, None
    buffer = torch.cat([t.reshape(-1).view(torch.uint8) for t in present]).to(device)
    moved, offset = [], 0
    for t in drawn:
        if t is None:
            moved.append(None)
            continue
        size = t.numel() * t.element_size()
        moved.append(buffer[offset:offset + size].view(t.dtype).view(t.shape))
        offset += size
    order, dy, dx, rows, cols, flipped, noise = moved
    return order, (dy, dx, flipped) if aug else None, (rows, cols, noise) if marks else None


def _checked_augmentation(aug: dict) -> dict:
    unknown = set(aug) - {"crop_padding", "flip"}
    if unknown or int(aug.get("crop_padding", 0)) < 0:
        raise ValueError(f"augmentation is {{'crop_padding': int >= 0, 'flip': bool}}, got {aug}")
    return {"crop_padding": int(aug.get("crop_padding", 0)), "flip": bool(aug.get("flip", False))}


def augmentation_of(data: ImageSet) -> dict:
    """The crop/flip recipe of `data`: its own, else its data set's registered one."""
    if data.augmentation is not None:
        return _checked_augmentation(data.augmentation)
    if data.base_name in DATASET_INFO:
        info = DATASET_INFO[data.base_name]
        return {"crop_padding": info["crop_padding"], "flip": info["flip"]}
    raise ValueError(f"no augmentation settings for {data.name!r}: its base name {data.base_name!r} is none of "
                     f"{', '.join(DATASET_INFO)}; give the set its own, e.g. dataclasses.replace(data, "
                     f"augmentation={{'crop_padding': 4, 'flip': True}}), or train with augment=False")


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per epoch (training drops the ragged last batch: a batch of one breaks BatchNorm)."""
    if n < batch_size:
        raise ValueError(f"only {n} training images for batch size {batch_size}: use a smaller batch or more data")
    return n // batch_size
