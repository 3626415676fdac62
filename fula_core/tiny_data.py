"""Tiny data sets in the real on-disk formats, for tests and for the shrunk paper run (`--shrink`).

The paper profile reads CIFAR-10 (the python pickle batches, `cifar-10-batches-py`) and LS-ImageNet-10 (an
image folder per wnid, `ls_imagenet10/{train,val}/<wnid>/`). These writers produce both with a handful of
images, so that data.py's own loaders read them exactly as they read the real files; nothing downstream can
tell them apart except by size. Labels go round-robin, so every class is present in any prefix of ten
images, and each class has its own mean colour under the noise, so a model can learn something.

    python -m fula_core.tiny_data DIR     # writes DIR/cifar-10-batches-py and DIR/ls_imagenet10
"""
from __future__ import annotations

import argparse
import pathlib
import pickle

import numpy as np

from . import data

CIFAR_FOLDER = "cifar-10-batches-py"
LS_IMAGENET10_FOLDER = "ls_imagenet10"


def _class_images(labels: np.ndarray, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """uint8 [N, 3, size, size]: a class colour (a fixed hue per label) plus uniform noise."""
    colours = np.stack([(np.arange(10) * 25) % 256, (np.arange(10) * 77 + 40) % 256,
                        (255 - np.arange(10) * 25) % 256], axis=1)  # [10, 3]
    noise = rng.integers(-60, 61, (len(labels), 3, size, size))
    return np.clip(colours[labels][:, :, None, None] + noise, 0, 255).astype(np.uint8)


def write_cifar(folder, per_batch: int = 4, seed: int = 0, test_size: int | None = None) -> dict:
    """A miniature cifar-10-batches-py folder: 5 train batches of `per_batch` images, a test batch
    (`test_size`, default `per_batch`) and batches.meta, pickled dicts with the keys of the real files.
    Returns the train and test arrays written: {"train": (images, labels), "test": (...)}."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    written = {"train": ([], []), "test": ([], [])}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = per_batch if name != "test_batch" or test_size is None else test_size
        labels = (np.arange(n) + rng.integers(0, 10)) % 10
        images = _class_images(labels, rng)
        batch = {"batch_label": f"{name} of 5", "labels": labels.tolist(),
                 "data": images.reshape(n, -1),  # one row per image, channel-major: 1024 R, 1024 G, 1024 B
                 "filenames": [f"img_{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        split = "test" if name == "test_batch" else "train"
        written[split][0].append(images)
        written[split][1].extend(labels.tolist())
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": per_batch, "label_names": list(data.CIFAR10_CLASSES),
                     "num_vis": 3072}, f, protocol=2)
    return {s: (np.concatenate(imgs), np.array(lbls)) for s, (imgs, lbls) in written.items()}


def write_ls_imagenet10(root, train_per_class: int = 2, val_per_class: int = 1, seed: int = 0) -> dict:
    """LS-ImageNet-10's layout (a): <root>/{train,val}/<wnid>/<wnid>_<i>.png, 32x32 RGB PNGs (as the authors'
    data script saves them) for the authors' ten wnids (data.ls_imagenet10_classes). Returns, per data split
    ("train", "test"), the images and labels in the order the loader reads them."""
    from PIL import Image

    root = pathlib.Path(root)
    rng = np.random.default_rng(seed)
    written = {}
    for split, folder_split, per_class in (("train", "train", train_per_class), ("test", "val", val_per_class)):
        images, labels = [], []
        for label, (wnid, _, _) in enumerate(data.ls_imagenet10_classes()):
            folder = root / folder_split / wnid
            folder.mkdir(parents=True)
            pixels = _class_images(np.full(per_class, label), rng)
            for i, img in enumerate(pixels):
                Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"{wnid}_{i}.png")
            images.append(pixels)
            labels += [label] * per_class
        written[split] = (np.concatenate(images), np.array(labels))
    return written


def write_paper_data(root, train_images: int = 200, test_images: int = 100, seed: int = 0) -> pathlib.Path:
    """Both data sets of the paper profile under `root` (point FULA_DATA_DIR at it): CIFAR-10 with
    `train_images` / `test_images` images, LS-ImageNet-10 with as many (rounded to whole classes).
    The shrunk paper profile (config.shrink) takes at most 128 training and 64 test images per set."""
    root = pathlib.Path(root)
    write_cifar(root / CIFAR_FOLDER, per_batch=-(-train_images // 5), seed=seed, test_size=test_images)
    write_ls_imagenet10(root / LS_IMAGENET10_FOLDER, train_per_class=-(-train_images // 10),
                        val_per_class=-(-test_images // 10), seed=seed + 1)
    return root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=pathlib.Path, help="folder to write into (must not hold the data sets yet)")
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument("--test-images", type=int, default=100)
    args = parser.parse_args(argv)
    write_paper_data(args.root, args.train_images, args.test_images)
    print(f"wrote tiny CIFAR-10 and LS-ImageNet-10 under {args.root}; set FULA_DATA_DIR={args.root}")


if __name__ == "__main__":
    main()
