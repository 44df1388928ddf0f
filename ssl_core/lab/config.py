"""Sizes and seed of a Lab run, and the scene counts each measure really uses (every count capped by its split)."""
from __future__ import annotations

from dataclasses import dataclass

from ssl_core.errors import BadRequest

PICTURE = {"picture": True}  # field metadata of result arrays kept for display and left out of the JSON numbers


@dataclass
class LabConfig:
    """Sizes and seed of a Lab run. A per-measure count larger than its split is capped by it: the ``*_scenes``
    properties are what the measures use, report and count for progress."""

    n_train: int = 300  # held-out scenes the object probe and k-NN are fitted on
    n_test: int = 150  # held-out scenes they are scored on
    seed: int = 0  # picks the held-out scenes, patch subsamples, swaps, masks and k-means starts
    batch_size: int = 32
    patch_train_images: int = 80  # scenes whose patches train the part and location probes (first of train)
    patch_test_images: int = 40  # scenes whose patches score them (first of test)
    max_probe_patches: int = 6000  # patch-level training sets are subsampled to this many
    max_iter: int = 2000  # LogisticRegression iterations
    knn_k: int = 20
    knn_temperature: float = 0.07
    crop_fraction: float = 0.5  # bag-of-crops tile side as a fraction of the scene side
    swap_ratio: float = 0.15  # patch tokens given another token's position embedding
    part_map_images: int = 32
    cka_images: int = 48
    mim_images: int = 64
    attention_images: int = 32
    mask_ratio: float | None = None  # MIM mask ratio (None: 0.75 for MAE, the file's own for CAE)

    def __post_init__(self) -> None:
        for name in ("n_train", "n_test", "batch_size", "patch_train_images", "patch_test_images", "max_probe_patches",
                     "max_iter", "knn_k", "part_map_images", "cka_images", "mim_images", "attention_images"):
            if int(getattr(self, name)) < 1:
                raise BadRequest(f"LabConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.n_train < 2 or self.n_test < 2:
            raise BadRequest(f"the Lab needs at least 2 training and 2 test scenes (--n-train, --n-test), got "
                             f"{self.n_train} and {self.n_test}")
        if not 0 <= self.seed < 1 << 29:
            raise BadRequest(f"LabConfig.seed must be in [0, 2**29), got {self.seed}")
        if not 0 < self.crop_fraction <= 1:
            raise BadRequest(f"LabConfig.crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if not 0 < self.swap_ratio < 1:
            raise BadRequest(f"LabConfig.swap_ratio must be in (0, 1), got {self.swap_ratio}")
        if self.mask_ratio is not None and not 0 < self.mask_ratio < 1:
            raise BadRequest(f"LabConfig.mask_ratio must be in (0, 1), got {self.mask_ratio}")

    @property
    def patch_train_scenes(self) -> int:
        """Train scenes whose patches train the part and location probes."""
        return min(self.patch_train_images, self.n_train)

    @property
    def patch_test_scenes(self) -> int:
        """Test scenes whose patches score the part and location probes."""
        return min(self.patch_test_images, self.n_test)

    @property
    def part_map_scenes(self) -> int:
        return min(self.part_map_images, self.n_test)

    @property
    def cka_scenes(self) -> int:
        return min(self.cka_images, self.n_test)

    @property
    def mim_scenes(self) -> int:
        return min(self.mim_images, self.n_test)

    @property
    def attention_scenes(self) -> int:
        return min(self.attention_images, self.n_test)

    def describe(self) -> str:
        return (f"seed {self.seed}: {self.n_train} train / {self.n_test} test held-out scenes; patch probes on "
                f"{self.patch_train_scenes} / {self.patch_test_scenes} of them; k-NN k={self.knn_k}; swap ratio "
                f"{self.swap_ratio}; part maps on the first {self.part_map_scenes} test scenes, CKA on the first "
                f"{self.cka_scenes}, MIM on the first {self.mim_scenes} and attention on the first "
                f"{self.attention_scenes}")
