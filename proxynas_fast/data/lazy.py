"""A folder of equally sized images that decodes only the examples asked for.

`load_dataset(..., lazy=True)` returns a `LazyImageDataset` for the image-folder layouts of CIFAR-10/100: it
knows every file and label (position i is example index i) but decodes nothing until `images_of(indices)` or
`subset(indices)` asks, and then only those files. A search that selects its proxy from an entropy file needs
the labels of all 50,000 CIFAR-10 images but the pixels of only the ~1,000 it selected.

Each decoded selection is cached by `image_cache` under its own key (`cache_key` of the selected files, in the
order asked for), so a second run with the same proxy decodes nothing; `decoded()` (the eager path) decodes
everything under the key of all the files, the entry `load_dataset` has always used.

A file that cannot be decoded raises a one-line `DatasetError` naming it when it is among those asked for; a
corrupt file among the others is never read, so it goes unnoticed until a selection includes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union

import numpy as np

from .base import ArrayDataset, DatasetError, FileDataset, LabelledFiles
from .image_cache import entry_path, load_entry, store_entry
from .readers import cache_key, decode_images


@dataclass
class LazyImageDataset(LabelledFiles):
    """Image files of one size (`image_size`, H x W) and their labels; pixels are decoded on demand."""

    image_size: Tuple[int, int]
    source: str = ""

    def images_of(self, indices: Sequence[int]) -> np.ndarray:
        """uint8 [len(indices), H, W, 3]: the images of those examples, in that order (decoded, or read from the
        cache entry of exactly those files)."""
        idx = self._positions(indices)
        return self._decode_cached([self.files[i] for i in idx.tolist()])

    def subset(self, indices: Sequence[int]) -> ArrayDataset:
        """Those examples, decoded, as an in-memory `ArrayDataset` (position j is example indices[j])."""
        idx = self._positions(indices)
        return self._arrays(self.images_of(idx), self.labels[idx])

    def decoded(self) -> ArrayDataset:
        """Every example decoded (cached under the key of all the files): what the eager `load_dataset` returns."""
        return self._arrays(self._decode_cached(self.files), self.labels)

    def _positions(self, indices: Sequence[int]) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self.files)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise DatasetError(f"{self.source}: example indices must lie in [0, {n}), got [{idx.min()}, {idx.max()}]")
        return idx % n if idx.size else idx

    def _decode_cached(self, files: List[str]) -> np.ndarray:
        cache = entry_path(self.name, self.split, cache_key(files))
        images = load_entry(cache, (len(files), *self.image_size, 3))
        if images is None:
            images = decode_images(files, self.image_size)
            store_entry(cache, images)
        return images

    def _arrays(self, images: np.ndarray, labels: np.ndarray) -> ArrayDataset:
        return ArrayDataset(self.name, self.split, images, labels, self.classes, self.mean, self.std, self.source)


AnyDataset = Union[ArrayDataset, FileDataset, LazyImageDataset]


def materialize(dataset: AnyDataset) -> Union[ArrayDataset, FileDataset]:
    """The data set as `load_dataset` returns it eagerly: a `LazyImageDataset` decoded whole, others as they are."""
    return dataset.decoded() if isinstance(dataset, LazyImageDataset) else dataset
