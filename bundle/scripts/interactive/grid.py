"""In-plane mapping between a volume's own voxel grid and the network grid of the bundle's preprocessing.

The preprocessing (``configs/inference.json``) resamples each short-axis slice in-plane to the bundle's pixel
spacing and keeps the slices (``pixdim`` -1 on the slice axis), so slice ``k`` of the volume is slice ``k`` of the
network grid and the two grids differ by an in-plane scaling and shift, read from their affines.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["SliceGrid"]


class SliceGrid:
    """Maps labels, points and probabilities of one slice between the native ``H, W`` grid and the network
    ``Hn, Wn`` grid.

    Args:
        native_affine: the volume's 4 x 4 voxel-to-world affine.
        network_affine: the preprocessed volume's affine (same world frame).
        native_shape: ``H, W``.
        network_shape: ``Hn, Wn``.
    """

    def __init__(
        self,
        native_affine: np.ndarray,
        network_affine: np.ndarray,
        native_shape: tuple[int, int],
        network_shape: tuple[int, int],
    ) -> None:
        to_network = np.linalg.solve(np.asarray(network_affine, float), np.asarray(native_affine, float))
        if not np.allclose(to_network[2], [0, 0, 1, 0], atol=1e-3) or not np.allclose(to_network[:2, 2], 0, atol=1e-3):
            raise ValueError("the network grid must keep the slices of the volume (in-plane resampling only).")
        self.to_network = to_network[np.ix_([0, 1], [0, 1, 3])]  # 2 x 3: (i, j, 1) native -> network
        self.to_native = np.linalg.inv(to_network)[np.ix_([0, 1], [0, 1, 3])]
        self.native_shape = tuple(int(s) for s in native_shape)
        self.network_shape = tuple(int(s) for s in network_shape)

    @staticmethod
    def _coords(matrix: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """``2, *shape``: for each pixel of a grid of ``shape``, its coordinates on the other grid."""
        ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
        flat = matrix @ np.stack([ii.ravel(), jj.ravel(), np.ones(ii.size)])
        return flat.reshape(2, *shape)

    def labels_to_network(self, labels: np.ndarray, fill: int = 0) -> np.ndarray:
        """Nearest-neighbour resampling of a native ``H, W`` label map onto the network grid (``fill`` outside)."""
        coords = self._coords(self.to_native, self.network_shape)
        return ndimage.map_coordinates(labels, coords, order=0, mode="constant", cval=fill).astype(labels.dtype)

    def labels_to_native(self, labels: np.ndarray, fill: int = 0) -> np.ndarray:
        """Nearest-neighbour resampling of a network-grid label map onto the native grid (``fill`` outside)."""
        coords = self._coords(self.to_network, self.native_shape)
        return ndimage.map_coordinates(labels, coords, order=0, mode="constant", cval=fill).astype(labels.dtype)

    def seeds_to_network(self, seeds: np.ndarray) -> np.ndarray:
        """A native ``H, W`` seed map (-1 unmarked, else a label) on the network grid: every network pixel whose
        nearest native pixel is marked, and every marked native pixel's nearest network pixel (so a single clicked
        pixel survives downsampling). Where both rules disagree the pushed native pixel wins."""
        out = self.labels_to_network(seeds.astype(np.int16), fill=-1)
        marked = np.argwhere(seeds >= 0)
        if len(marked):
            points = self.points_to_network(marked)
            out[points[:, 0], points[:, 1]] = seeds[marked[:, 0], marked[:, 1]]
        return out

    def points_to_network(self, points: np.ndarray) -> np.ndarray:
        """``N, 2`` native (row, column) -> the nearest network pixels, clipped into the network grid."""
        moved = self.to_network @ np.concatenate([np.asarray(points, float), np.ones((len(points), 1))], axis=1).T
        moved = np.rint(moved.T).astype(int)
        return np.clip(moved, 0, np.array(self.network_shape) - 1)

    def probs_to_native(self, probs: np.ndarray) -> np.ndarray:
        """Bilinear resampling of network-grid ``K, Hn, Wn`` probabilities onto the native grid (edge values
        repeated outside)."""
        coords = self._coords(self.to_network, self.native_shape)
        return np.stack([ndimage.map_coordinates(p, coords, order=1, mode="nearest") for p in probs])
