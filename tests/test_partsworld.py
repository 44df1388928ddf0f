"""The parts world: determinism, masks that match the drawing, shared parts, patch labels, datasets, examples."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_core.data import partsworld as pw
from ssl_core.models.registry import ASSETS_DIR

FLAT_WORLD = pw.PartsWorld(textures=("flat",), backgrounds=("flat",))


def test_a_seed_gives_the_same_sample_and_other_seeds_differ():
    a, b = pw.sample(123), pw.sample(123)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.part_map, b.part_map)
    assert np.array_equal(a.instance_map, b.instance_map) and a.parts == b.parts and a.object_class == b.object_class
    assert a.image.shape == (96, 96, 3) and a.image.dtype == np.uint8 and a.part_map.shape == (96, 96)
    others = [pw.sample(s) for s in range(124, 130)]
    assert all(not np.array_equal(a.image, o.image) for o in others)
    assert len({o.part_map.tobytes() for o in others}) == len(others)


def test_twice_the_size_draws_the_same_scene():
    for seed in range(20):
        small, large = pw.sample(seed, 96), pw.sample(seed, 192)
        assert (small.object_class, small.instance_classes, small.parts) == (large.object_class, large.instance_classes, large.parts)
        assert (large.part_map[::2, ::2] == small.part_map).mean() > 0.93


@pytest.mark.parametrize("seed", range(30))
def test_flat_world_image_is_exactly_its_part_colours_on_the_background(seed):
    s = FLAT_WORLD.sample(seed)
    background = s.part_map == 0
    assert np.array_equal(background, s.instance_map == 0)
    expected = np.empty_like(s.image)
    expected[background] = s.image[background][0]  # a flat background: one colour
    for part in s.parts:
        region = (s.part_map == part.part) & (s.instance_map == part.instance)
        expected[region] = part.color
    assert np.array_equal(s.image, expected)  # every pixel: its label's colour, or the background's
    main = {p.part for p in s.parts if p.instance == 1}
    assert set(np.unique(s.part_map[s.instance_map == 1])) <= main


def test_flat_textured_parts_keep_their_colour_in_the_default_world():
    checked = 0
    for seed in range(40):
        s = pw.sample(seed)
        for part in s.parts:
            region = (s.part_map == part.part) & (s.instance_map == part.instance)
            if part.texture == "flat" and region.any():
                assert (s.image[region] == part.color).all()
                checked += 1
            elif region.sum() > 20:
                assert len(np.unique(s.image[region].reshape(-1, 3), axis=0)) > 1  # textured: not one colour
    assert checked > 40


def test_labels_come_from_the_vocabulary_and_classes_draw_only_their_parts():
    for seed in range(60):
        s = pw.sample(seed)
        assert s.part_map.max() < len(pw.PART_NAMES)
        for instance, cls in enumerate(s.instance_classes, start=1):
            labels = {pw.PART_NAMES[i] for i in np.unique(s.part_map[s.instance_map == instance])}
            allowed = {"occluder"} if cls == pw.OCCLUDER_CLASS else pw.CLASS_PARTS[pw.CLASS_NAMES[cls]]
            assert labels <= allowed


def test_shared_parts_really_occur_in_two_classes():
    shared = pw.shared_parts()
    assert {"wheel", "window", "leg"} <= set(shared)
    seen: dict[str, set[str]] = {name: set() for name in shared}
    for seed in range(150):
        s = pw.sample(seed)
        main_parts = {pw.PART_NAMES[i] for i in np.unique(s.part_map[s.instance_map == 1])}
        for name in main_parts & set(shared):
            seen[name].add(s.class_name)
    for name, classes in shared.items():
        assert seen[name] == set(classes), name


def test_patch_labels_take_the_majority_and_ties_go_to_the_smaller_label():
    part_map = np.zeros((4, 6), dtype=np.uint8)
    part_map[0:2, 0:2] = 3  # patch (0, 0): all 3
    part_map[0, 2:4] = 5  # patch (0, 1): two 5s, two 0s -> tie -> 0
    part_map[2:4, 4:6] = [[7, 7], [7, 2]]  # patch (1, 2): 7
    labels = pw.patch_labels(part_map, 2)
    assert labels.tolist() == [[3, 0, 0], [0, 0, 7]]
    batch = pw.patch_labels(torch.from_numpy(np.stack([part_map, part_map])), 2)
    assert batch.shape == (2, 2, 3) and np.array_equal(batch[1], labels)
    s = pw.sample(3)
    grid = pw.patch_labels(s.part_map, 8)
    assert grid.shape == (12, 12) and set(np.unique(grid)) <= set(np.unique(s.part_map))
    with pytest.raises(ValueError, match="part_map of size 4x6"):
        pw.patch_labels(part_map, 4)


def test_datasets_serve_the_seeded_samples():
    ds = pw.PartsWorldDataset(5, size=48, first_seed=1000)
    item = ds[2]
    ref = pw.sample(1002, 48)
    assert len(ds) == 5 and item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.uint8
    assert np.array_equal(item["image"].permute(1, 2, 0).numpy(), ref.image)
    assert int(item["label"]) == ref.object_class and np.array_equal(item["part_map"].numpy(), ref.part_map)
    with pytest.raises(IndexError):
        ds[5]
    stream = iter(pw.PartsWorldStream(seed=7, size=48))
    first, second = next(stream), next(stream)
    assert np.array_equal(second["image"].permute(1, 2, 0).numpy(), pw.sample(7 * 2**32 + 1, 48).image)
    assert not torch.equal(first["image"], second["image"])
    loader = torch.utils.data.DataLoader(pw.PartsWorldStream(seed=7, size=48), batch_size=4)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 48, 48) and torch.equal(batch["image"][1], second["image"])
    images_only = next(iter(pw.PartsWorldStream(seed=7, size=48, fields=("image", "label"))))
    assert sorted(images_only) == ["image", "label"] and torch.equal(images_only["image"], first["image"])


def test_example_images_are_the_generator_output_and_two_share_wheels():
    samples = [pw.sample(seed, pw.EXAMPLE_SIZE) for seed in pw.EXAMPLE_SEEDS]
    for i, s in enumerate(samples, start=1):
        shipped = np.asarray(Image.open(ASSETS_DIR / "examples" / f"partsworld_{i}.png").convert("RGB"))
        assert np.array_equal(shipped, s.image)
    wheel = pw.PART_IDS["wheel"]
    with_wheels = [s.class_name for s in samples if (s.part_map == wheel).any()]
    assert len(with_wheels) >= 2 and len(set(with_wheels)) >= 2


def test_examples_are_recognised_by_their_pixels_and_labelled_on_any_grid():
    first = Image.open(ASSETS_DIR / "examples" / "partsworld_1.png")
    truth = pw.sample(pw.EXAMPLE_SEEDS[0], pw.EXAMPLE_SIZE).part_map
    assert np.array_equal(pw.example_part_map(first), truth)
    touched = np.asarray(first.convert("RGB")).copy()
    touched[0, 0] ^= 1
    assert pw.example_part_map(touched) is None  # one changed pixel: not the example any more
    assert pw.example_part_map(Image.open(ASSETS_DIR / "examples" / "chelsea.jpg")) is None
    assert np.array_equal(pw.grid_part_labels(truth, (12, 12)), pw.patch_labels(truth, 16))
    uneven = pw.grid_part_labels(truth, (14, 10))  # 192 px is no whole number of 14 or 10 cells
    assert uneven.shape == (14, 10) and set(np.unique(uneven)) <= set(np.unique(truth))
