"""The ImageNet validation images both ImageNet benchmarks share, in torchvision's `ImageNet` layout.

    <imagenet>/val/<wnid>/*.JPEG      1,000 class folders; class i is the i-th wnid in sorted order

That sorted-wnid order is the class index CLIP_benchmark's class-name lists and Babel-ImageNet's class ids refer
to. Where the folder is: the benchmark's `images` option, else `<benchmark folder>/val`, else
`<data_root>/imagenet/val` or `<data_root>/imagenet1k/val`, so both benchmarks can use one copy of ImageNet.
"""

from __future__ import annotations

from pathlib import Path

from altclip_train.evaluate.sources import ImageFolder


def locate_val_folder(name: str, directory: Path, data_root, images) -> Path:
    if images:
        candidates = [Path(images).expanduser()]
    else:
        candidates = [directory / "val"]
        if data_root is not None:
            candidates += [Path(data_root).expanduser() / sub / "val" for sub in ("imagenet", "imagenet1k")]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"benchmark {name}: no ImageNet val folder (<wnid>/*.JPEG) at {' or '.join(map(str, candidates))}; "
        f"set benchmark_options.{name}.images"
    )


def labelled_images(folder: Path, num_classes: int, name: str, exact: bool) -> list[tuple[Path, int]]:
    """(file, class index) for every image. The folder must hold `num_classes` class folders (`exact`), or at
    least that many: otherwise the class names would be matched to the wrong folders."""
    images = ImageFolder(folder)
    if images.num_classes < num_classes or (exact and images.num_classes != num_classes):
        raise ValueError(
            f"benchmark {name}: {folder} has {images.num_classes} class folders but the class names "
            f"{'name' if exact else 'refer to'} {num_classes} classes"
        )
    return list(images.samples)
