"""Pixel helpers, MamaImageProcessor (global and tiles modes), training augmentation, serialisation."""

import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dicom_factory import breast_pixels, mammogram_dataset, write_mammogram
from PIL import Image
from scipy import ndimage
from torchvision.transforms import v2

from modeling_mama.dicom import read_dicom
from modeling_mama.image_processing_mama import (
    PAPER_AUGMENTATION,
    MamaImageProcessor,
    MamaTrainTransform,
    breast_bbox,
    crop_to_breast,
    infer_laterality,
    load_mammogram,
    orient_breast,
    otsu_threshold,
    to_unit_range,
)


def reference_view(unit_pixels, height, width):
    """The paper's evaluation view, written out step by step with the public helpers."""
    oriented = orient_breast(unit_pixels)
    crop = torch.from_numpy(np.ascontiguousarray(crop_to_breast(oriented)))
    resized = F.interpolate(crop[None, None], size=(height, width), mode="bilinear", antialias=True,
                            align_corners=False)[0, 0]
    return ((resized - 0.5) / 0.5).expand(3, -1, -1)


def unnormalise(values):
    return values * 0.5 + 0.5


# ---------------------------------------------------------------------------------------------
# Pixel helpers


def test_to_unit_range():
    assert to_unit_range(np.array([0, 51, 255], dtype=np.uint8)).tolist() == pytest.approx([0, 0.2, 1])
    assert to_unit_range(np.array([0, 13107, 65535], dtype=np.uint16)).tolist() == pytest.approx([0, 0.2, 1])
    assert to_unit_range(np.array([0.25, 0.5])).tolist() == [0.25, 0.5]  # already in [0, 1]: kept
    assert to_unit_range(np.array([-10.0, 0.0, 30.0])).tolist() == [0.0, 0.25, 1.0]
    assert to_unit_range(np.array([100, 300, 500], dtype=np.int32)).tolist() == [0.0, 0.5, 1.0]
    assert to_unit_range(np.full((2, 2), 7.0)).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert to_unit_range(np.array([3], dtype=np.uint16)).dtype == np.float32


def test_otsu_threshold_matches_a_brute_force_search():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.2, 0.05, 3000), rng.normal(0.7, 0.1, 2000)]).clip(0, 1)

    def between_class_variance(threshold):
        low, high = values[values < threshold], values[values >= threshold]
        if low.size == 0 or high.size == 0:
            return 0.0
        return low.size * high.size * (low.mean() - high.mean()) ** 2

    candidates = np.unique(values)
    best = max(candidates, key=between_class_variance)
    threshold = otsu_threshold(values)
    assert between_class_variance(threshold) >= 0.999 * between_class_variance(best)
    assert 0.3 < threshold < 0.55
    assert otsu_threshold(np.full(10, 0.4)) == pytest.approx(0.4)


def l_breast(rows=200, cols=150):
    """A breast block against the left edge plus a bright marker in the top-right corner."""
    pixels = np.zeros((rows, cols), dtype=np.float32)
    pixels[30:170, 0:90] = 0.6
    pixels[2:8, 140:148] = 0.95
    return pixels


def test_breast_bbox_excludes_markers_and_is_exact_at_full_resolution():
    pixels = l_breast()
    assert breast_bbox(pixels) == (0, 30, 90, 170)
    np.testing.assert_array_equal(crop_to_breast(pixels), pixels[30:170, 0:90])


def test_breast_bbox_of_an_odd_width_is_exact():
    pixels = np.zeros((30, 41), dtype=np.float32)
    pixels[5:25, 0:20] = 0.7  # ends just before the middle column (20)
    assert breast_bbox(pixels) == (0, 5, 20, 25)
    assert breast_bbox(pixels[:, ::-1]) == (21, 5, 41, 25)


def test_breast_bbox_on_a_preview_still_holds_the_breast():
    pixels = np.zeros((1300, 900), dtype=np.uint16)  # preview stride 2
    pixels[301:1001, 0:555] = 30000
    x0, y0, x1, y1 = breast_bbox(pixels)
    assert x0 == 0 and 300 <= y0 <= 301 and 555 <= x1 <= 556 and 1001 <= y1 <= 1002


def test_breast_bbox_of_an_empty_image_is_the_whole_image():
    assert breast_bbox(np.zeros((20, 30))) == (0, 0, 30, 20)


def test_infer_laterality_from_the_pixel_mass():
    assert infer_laterality(breast_pixels(laterality="L")) == "L"
    assert infer_laterality(breast_pixels(laterality="R")) == "R"
    assert infer_laterality(np.zeros((10, 10))) is None


def test_orient_breast_puts_the_chest_wall_left_and_checks_the_tag():
    left, right = breast_pixels(laterality="L"), breast_pixels(laterality="R")
    np.testing.assert_array_equal(orient_breast(right, "R"), left)
    np.testing.assert_array_equal(orient_breast(right), left)           # no tag: the pixels decide
    np.testing.assert_array_equal(orient_breast(left, "R"), left)       # a lying tag: the pixels win
    symmetric = np.zeros((40, 40), dtype=np.float32)
    symmetric[10:30, 10:30] = 1.0
    symmetric[12, 10] = 0.0  # a dent, so the flip is visible
    np.testing.assert_array_equal(orient_breast(symmetric, "R"), symmetric[:, ::-1])  # ambiguous: the tag decides
    np.testing.assert_array_equal(orient_breast(symmetric, "L"), symmetric)


def test_load_mammogram_sources(tmp_path):
    path = write_mammogram(tmp_path / "r.dcm", laterality="R", window=(2000, 3000))
    pixels, laterality = load_mammogram(path)
    np.testing.assert_array_equal(pixels, read_dicom(path).pixels)
    assert laterality == "R"
    stored = breast_pixels(laterality="L", bits_stored=16)
    for source in (stored, Image.fromarray(stored), torch.from_numpy(stored / 65535)):
        pixels, laterality = load_mammogram(source)
        np.testing.assert_allclose(pixels, stored / 65535, atol=1e-7)
        assert laterality == "L"
    png = tmp_path / "l.png"
    Image.fromarray(stored).save(png)
    pixels, _ = load_mammogram(png)
    np.testing.assert_allclose(pixels, stored / 65535, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Global mode


def test_defaults_are_the_paper_preset():
    processor = MamaImageProcessor()
    assert processor.size == {"height": 518, "width": 518}
    assert processor.image_mean == [0.5] * 3 and processor.image_std == [0.5] * 3
    assert processor.mode == "global" and processor.do_crop_to_breast and not processor.keep_aspect_ratio
    out = processor(breast_pixels(laterality="L"))
    assert out["pixel_values"].shape == (1, 3, 518, 518) and out["pixel_values"].dtype == torch.float32


@pytest.mark.parametrize("laterality", ["L", "R"])
@pytest.mark.parametrize("shape", [(120, 90), (1100, 700)])
def test_global_view_is_orient_crop_resize_normalise(laterality, shape):
    stored = breast_pixels(*shape, laterality=laterality, bits_stored=16, seed=1)
    expected = reference_view(to_unit_range(stored), 64, 48)
    out = MamaImageProcessor(size=[64, 48])(stored)["pixel_values"][0]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_mirrored_images_come_out_identical(tmp_path):
    left, right = (breast_pixels(1100, 700, laterality=side, seed=2) for side in "LR")
    processor = MamaImageProcessor(size=64)
    out = processor([left, right])["pixel_values"]
    torch.testing.assert_close(out[0], out[1], atol=0, rtol=0)
    # The same through DICOM files, MLO and CC, MONOCHROME1 and 2, with and without tags.
    paths = [write_mammogram(tmp_path / f"{side}{index}.dcm", laterality=side, seed=5, photometric=photometric,
                             view_position=view, laterality_tags=tags, window=(2000, 3000))
             for index, (photometric, view, tags) in enumerate([("MONOCHROME2", "CC", ("ImageLaterality",)),
                                                                ("MONOCHROME1", "MLO", ())])
             for side in "LR"]
    out = processor(paths)["pixel_values"]
    torch.testing.assert_close(out[0], out[1], atol=0, rtol=0)
    torch.testing.assert_close(out[2], out[3], atol=0, rtol=0)
    torch.testing.assert_close(out[0], out[2], atol=1e-5, rtol=0)  # MONOCHROME1 calibrates like MONOCHROME2


def test_dicom_sources_match_their_pixels(tmp_path):
    pixels = breast_pixels(1100, 700, laterality="R", bits_stored=14, seed=4)
    path = write_mammogram(tmp_path / "r.dcm", pixels, laterality="R", bits_stored=14, window=(8000, 12000),
                           voi_function="SIGMOID")
    image = read_dicom(path)
    processor = MamaImageProcessor(size=96)
    expected = processor(image.pixels, laterality="R")["pixel_values"]
    for source in (path, str(path), pydicom_dataset(path), image):
        torch.testing.assert_close(processor(source)["pixel_values"], expected, atol=1e-6, rtol=0)


def pydicom_dataset(path):
    import pydicom

    return pydicom.dcmread(path)


def test_every_input_type_gives_the_same_result(tmp_path):
    levels = breast_pixels(90, 70, bits_stored=8, seed=6).astype(np.uint8)  # 0..255
    as_uint16 = levels.astype(np.uint16) * 257  # same unit values: 257 * 255 = 65535
    png = tmp_path / "sixteen.png"
    Image.fromarray(as_uint16).save(png)
    sources = [
        levels, as_uint16, levels / 255.0, levels.astype(np.float32) / 255, torch.from_numpy(levels),
        Image.fromarray(levels), Image.fromarray(as_uint16), Image.fromarray(as_uint16.astype(np.int32)),
        np.stack([levels] * 3, axis=-1), Image.fromarray(np.stack([levels] * 3, axis=-1)), png,
    ]
    assert Image.fromarray(as_uint16).mode.startswith("I;16")
    assert Image.fromarray(as_uint16.astype(np.int32)).mode == "I"
    processor = MamaImageProcessor(size=40)
    expected = processor(levels)["pixel_values"]
    for source in sources:
        torch.testing.assert_close(processor(source)["pixel_values"], expected, atol=1e-6, rtol=0)
    batch = processor(sources)["pixel_values"]
    assert batch.shape == (len(sources), 3, 40, 40)
    torch.testing.assert_close(batch, expected.expand(len(sources), -1, -1, -1), atol=1e-6, rtol=0)


def test_keep_aspect_ratio_pads_right_and_bottom():
    pixels = np.zeros((120, 100), dtype=np.float32)
    pixels[10:110, 0:50] = 1.0  # a 100x50 breast
    out = MamaImageProcessor(size=56, keep_aspect_ratio=True)(pixels)["pixel_values"][0]
    torch.testing.assert_close(out[:, :, :28], torch.ones(3, 56, 28))
    assert torch.all(out[:, :, 28:] == -1.0)
    stretched = MamaImageProcessor(size=56)(pixels)["pixel_values"][0]
    torch.testing.assert_close(stretched, torch.ones(3, 56, 56))


def test_normalisation_options():
    pixels = l_breast()
    out = MamaImageProcessor(size=32, do_normalize=False)(pixels)["pixel_values"][0]
    torch.testing.assert_close(out, torch.full((3, 32, 32), 0.6), atol=1e-6, rtol=0)
    out = MamaImageProcessor(size=32, image_mean=[0.1, 0.2, 0.3], image_std=[0.5, 0.25, 0.1])(pixels)["pixel_values"][0]
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([1.0, 1.6, 3.0]), atol=1e-5, rtol=0)


def test_laterality_argument_and_geometry():
    symmetric = np.zeros((40, 40), dtype=np.float32)
    symmetric[10:30, 10:30] = 1.0
    symmetric[12, 10] = 0.0
    processor = MamaImageProcessor(size=20, do_crop_to_breast=False)
    out = processor([symmetric, symmetric], laterality=["L", "R"], return_geometry=True)
    assert out["flipped"].tolist() == [False, True]
    torch.testing.assert_close(out["pixel_values"][1], out["pixel_values"][0].flip(-1), atol=1e-6, rtol=0)
    right = breast_pixels(120, 90, laterality="R")
    x0, y0, x1, y1 = breast_bbox(right)
    out = MamaImageProcessor(size=20)(right, return_geometry=True)
    assert out["crop_boxes"][0].tolist() == [x0, y0, x1, y1] and out["flipped"].tolist() == [True]


def test_evaluation_is_deterministic():
    processor = MamaImageProcessor(size=32)
    image = breast_pixels(seed=7)
    torch.testing.assert_close(processor(image)["pixel_values"], processor(image)["pixel_values"], atol=0, rtol=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"mode='patches' is not one of \('global', 'tiles'\)"):
        MamaImageProcessor(mode="patches")
    with pytest.raises(ValueError, match=r"Unknown augmentation keys \['blur'\]"):
        MamaImageProcessor(augmentation={"blur": 0.5})
    with pytest.raises(ValueError, match=r"Got 1 lateralities for 2 images"):
        MamaImageProcessor(size=8)([l_breast(), l_breast()], laterality=["L"])
    with pytest.raises(ValueError, match=r"got an array of shape \(5, 20, 20\); pass a list for a batch"):
        MamaImageProcessor(size=8)(np.zeros((5, 20, 20)))


# ---------------------------------------------------------------------------------------------
# Tiles mode


def test_tiles_are_full_resolution_pieces_of_the_source(tmp_path):
    processor = MamaImageProcessor(mode="tiles", size=32, tile_size=40, tile_grid=[4, 3], do_normalize=False)
    for laterality in "LR":
        stored = breast_pixels(150, 120, laterality=laterality, bits_stored=16, seed=8)  # breast about 126x86
        unit = to_unit_range(stored)
        out = processor(stored, return_geometry=True)
        rows, cols = 4, 3
        assert out["tile_pixel_values"].shape == (1, rows * cols, 3, 40, 40)
        assert out["tile_mask"].shape == (1, rows * cols) and out["tile_mask"].dtype == torch.bool
        x0, y0, x1, y1 = breast_bbox(orient_breast(unit))
        crop_height, crop_width = y1 - y0, x1 - x0
        real = 0
        for index in range(rows * cols):
            box = out["tile_boxes"][0, index].tolist()
            tile = out["tile_pixel_values"][0, index, 0]
            if box == [0, 0, 0, 0]:
                assert not out["tile_mask"][0, index] and torch.all(tile == 0)
                continue
            real += 1
            left, top, right, bottom = (int(v) for v in box)
            assert box == [left, top, right, bottom]  # no scaling: integer source pixels
            assert (right - left, bottom - top) == (40, 40)  # edge tiles overlap their neighbour, never pad
            expected = unit[top:bottom, left:right]
            if laterality == "R":
                expected = expected[:, ::-1]
            torch.testing.assert_close(tile[: bottom - top, : right - left], torch.from_numpy(expected.copy()))
        assert real == -(-crop_height // 40) * -(-crop_width // 40)


def test_tiles_outside_the_breast_are_masked():
    pixels = np.zeros((128, 128), dtype=np.float32)
    pixels[:, :64] = 0.8
    pixels[:64, 64:] = 0.8  # an L-shaped breast: the bottom-right tile is background
    out = MamaImageProcessor(mode="tiles", size=32, tile_size=64, tile_grid=[3, 3])(pixels, return_geometry=True)
    assert out["tile_mask"][0].tolist() == [True, True, False, True, False, False, False, False, False]
    assert out["tile_boxes"][0, 4].tolist() == [64, 64, 128, 128]  # present (a box) but masked
    assert out["tile_boxes"][0, 2].tolist() == [0, 0, 0, 0]        # beyond the breast: absent


def test_a_large_breast_is_scaled_to_fit_the_grid():
    pixels = np.zeros((400, 120), dtype=np.float32)
    pixels[:, :100] = 0.7  # a 400x100 breast, grid 2x2 of 64: scale 128 / 400 = 0.32
    out = MamaImageProcessor(mode="tiles", size=32, tile_size=64, tile_grid=[2, 2])(pixels, return_geometry=True)
    assert out["tile_mask"][0].tolist() == [True, False, True, False]
    torch.testing.assert_close(out["tile_boxes"][0], torch.tensor(
        [[0, 0, 100, 200], [0, 0, 0, 0], [0, 200, 100, 400], [0, 0, 0, 0]], dtype=torch.float32))


def test_tile_count_is_constant_across_a_batch():
    processor = MamaImageProcessor(mode="tiles", size=32, tile_size=32, tile_grid=[3, 2])
    images = [breast_pixels(200, 150, seed=1), breast_pixels(60, 40, seed=2, laterality="R")]
    out = processor(images)
    # The default outputs are model inputs only; the boxes are geometry, asked for separately.
    assert sorted(out) == ["pixel_values", "tile_mask", "tile_pixel_values"]
    assert out["pixel_values"].shape == (2, 3, 32, 32)
    assert out["tile_pixel_values"].shape == (2, 6, 3, 32, 32)
    assert out["tile_mask"].shape == (2, 6) and processor(images, return_geometry=True)["tile_boxes"].shape == (2, 6, 4)
    assert out["tile_mask"][0].sum() > out["tile_mask"][1].sum() >= 1
    global_only = MamaImageProcessor(size=32)([breast_pixels(200, 150, seed=1)])["pixel_values"]
    torch.testing.assert_close(out["pixel_values"][:1], global_only, atol=0, rtol=0)


def l_shaped_breast():
    """A 192x128 L-shaped breast (chest wall left): 5 of the 3x2 grid of 64-pixel tiles hold breast."""
    pixels = np.zeros((192, 128), dtype=np.float32)
    pixels[:, :64] = 0.8
    pixels[:128, 64:] = 0.8
    return pixels * np.linspace(1.0, 0.9, 128, dtype=np.float32)[None, :]  # no tile is mirror-symmetric


def test_training_tiles_hold_breast_and_respect_the_cap():
    processor = MamaImageProcessor(mode="tiles", size=32, tile_size=64, tile_grid=[3, 2], max_tiles=3,
                                   do_normalize=False)
    pixels = l_shaped_breast()
    out = processor(pixels, sample_tiles=True, seed=0, return_geometry=True)
    assert out["tile_pixel_values"].shape == (1, 3, 3, 64, 64) and out["tile_mask"][0].tolist() == [True] * 3
    boxes = out["tile_boxes"][0]
    assert len({tuple(box.tolist()) for box in boxes}) == 3  # distinct tiles
    for tile, box in zip(out["tile_pixel_values"][0, :, 0], boxes):
        left, top, right, bottom = (int(v) for v in box.tolist())
        assert (right - left, bottom - top) == (64, 64)  # full resolution, inside the image
        torch.testing.assert_close(tile, torch.from_numpy(pixels[top:bottom, left:right]))
        assert (tile > 0).float().mean() >= processor.min_tile_foreground  # holds breast
    # Reproducible with a seed; another seed draws other tiles or shifts.
    again = processor(pixels, sample_tiles=True, seed=0, return_geometry=True)
    assert torch.equal(again["tile_boxes"], out["tile_boxes"])
    draws = {tuple(processor(pixels, sample_tiles=True, seed=seed, return_geometry=True)["tile_boxes"][0, 0].tolist())
             for seed in range(8)}
    assert len(draws) > 2
    # Evaluation: every grid tile, max_tiles or not (T = rows * cols, the bottom-right one masked).
    evaluation = processor(pixels)
    assert evaluation["tile_mask"][0].tolist() == [True, True, True, True, True, False]
    assert "tile_boxes" not in evaluation  # geometry only when asked: the model does not take it


def test_a_small_breast_gives_fewer_training_tiles_and_a_blank_one_still_one():
    processor = MamaImageProcessor(mode="tiles", size=32, tile_size=64, tile_grid=[3, 3], max_tiles=4)
    small = np.zeros((100, 100), dtype=np.float32)
    small[10:90, :60] = 0.8  # fits in 2 tiles
    out = processor(small, augment=True, seed=1)
    assert out["tile_mask"][0].tolist() == [True, True, False, False]
    assert torch.all(out["tile_pixel_values"][0, 2:] == 0)  # padded slots are zeros
    speck = np.zeros((200, 200), dtype=np.float32)
    speck[100:104, 100:104] = 0.8  # no tile holds 5% breast
    out = processor(speck, augment=True, seed=1)
    assert out["tile_mask"][0].tolist() == [True, False, False, False]  # SLA needs at least one tile per image
    assert processor(speck)["tile_mask"][0].sum() == 0  # evaluation: masked as usual


def test_tile_augmentation_keeps_tiles_at_their_scale():
    flip_only = {"crop_scale": [1.0, 1.0], "horizontal_flip_p": 1.0, "vertical_flip_p": 0.0, "color_jitter_p": 0.0,
                 "grayscale_p": 0.0, "blur_p": 0.0}
    processor = MamaImageProcessor(mode="tiles", size=32, tile_size=64, tile_grid=[3, 2], max_tiles=2,
                                   augmentation=flip_only)
    pixels = l_shaped_breast()
    out = processor(pixels, augment=True, seed=3, return_geometry=True)
    for tile, box in zip(out["tile_pixel_values"][0], out["tile_boxes"][0]):
        left, top, right, bottom = (int(v) for v in box.tolist())
        expected = (torch.from_numpy(pixels[top:bottom, left:right]).flip(-1) - 0.5) / 0.5
        torch.testing.assert_close(tile, expected.expand(3, -1, -1))  # flipped, never cropped or resized
    jitter = MamaImageProcessor(mode="tiles", size=32, tile_size=64, tile_grid=[3, 2], max_tiles=2,
                                augmentation={"color_jitter_p": 1.0, "horizontal_flip_p": 0.0, "vertical_flip_p": 0.0,
                                              "blur_p": 0.0, "grayscale_p": 0.0})
    jittered = jitter(pixels, augment=True, seed=3, return_geometry=True)
    assert jittered["tile_pixel_values"].shape == (1, 2, 3, 64, 64)
    for tile, box in zip(jittered["tile_pixel_values"][0, :, 0], jittered["tile_boxes"][0]):
        left, top, right, bottom = (int(v) for v in box.tolist())
        source = (torch.from_numpy(pixels[top:bottom, left:right]) - 0.5) / 0.5
        assert not torch.allclose(tile, source, atol=1e-3)  # other intensities...
        correlation = torch.corrcoef(torch.stack([tile.flatten(), source.flatten()]))[0, 1]
        assert correlation > 0.95  # ...at the same place


def test_augmentation_is_built_once_per_process():
    from modeling_mama.image_processing_mama import _cached_transform

    processor = MamaImageProcessor(size=24, augmentation={"blur_p": 0.1})
    _cached_transform.cache_clear()
    for seed in range(5):
        processor(breast_pixels(80, 60, seed=seed), augment=True, seed=seed)
    assert _cached_transform.cache_info().misses == 1 and _cached_transform.cache_info().hits == 4
    assert processor.train_transform() is processor.train_transform()
    assert "transform" not in str(processor.to_dict())  # nothing cached in the saved configuration


# ---------------------------------------------------------------------------------------------
# Training augmentation


def test_augmentation_is_the_paper_recipe():
    transform = MamaImageProcessor().train_transform()
    crop, hflip, vflip, jitter, grayscale, blur, normalize = transform.transform.transforms
    assert isinstance(crop, v2.RandomResizedCrop) and crop.size == (518, 518) and crop.scale == (0.1, 1.0)
    assert isinstance(hflip, v2.RandomHorizontalFlip) and hflip.p == 0.5
    assert isinstance(vflip, v2.RandomVerticalFlip) and vflip.p == 0.5
    color_jitter = jitter.transforms[0]
    assert jitter.p == 0.8 and isinstance(color_jitter, v2.ColorJitter)
    assert (color_jitter.brightness, color_jitter.contrast, color_jitter.saturation, color_jitter.hue) == (
        pytest.approx((0.2, 1.8)), pytest.approx((0.2, 1.8)), pytest.approx((0.2, 1.8)), pytest.approx((-0.2, 0.2)))
    assert isinstance(grayscale, v2.RandomGrayscale) and grayscale.p == 0.2
    gaussian = blur.transforms[0]
    assert blur.p == 0.4 and gaussian.kernel_size == (7, 7) and gaussian.sigma == [0.1, 2.0]
    assert isinstance(normalize, v2.Normalize) and normalize.mean == [0.5] * 3 and normalize.std == [0.5] * 3
    assert PAPER_AUGMENTATION["crop_scale"] == [0.1, 1.0]


def test_augmentation_runs_on_one_channel_as_the_recipe_would_on_three():
    transform = MamaTrainTransform(size=(40, 40), augmentation={"color_jitter_p": 1.0, "blur_p": 1.0})
    image = torch.rand(1, 90, 70)
    for seed in range(10):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            recipe = transform.transform(image.repeat(3, 1, 1))  # torchvision's chain on three equal channels
        torch.testing.assert_close(transform.augment(image, seed=seed), recipe, atol=2e-3, rtol=0)


def test_augmentation_on_a_cropped_16_bit_png_is_seedable(tmp_path):
    stored = crop_to_breast(breast_pixels(200, 140, bits_stored=16, seed=9))
    png = tmp_path / "cropped.png"
    Image.fromarray(stored).save(png)
    transform = MamaImageProcessor(size=48).train_transform()
    with Image.open(png) as image:
        state = torch.random.get_rng_state()
        first, again = transform(image, seed=3), transform(image, seed=3)
        assert torch.equal(torch.random.get_rng_state(), state)  # seeding does not touch the global RNG
        other = transform(image, seed=4)
    assert first.shape == (3, 48, 48) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.min() >= -1.0 - 1e-6 and first.max() <= 1.0 + 1e-6


def test_augmentation_with_only_a_flip_is_exactly_a_flip():
    deterministic = {"crop_scale": [1.0, 1.0], "horizontal_flip_p": 1.0, "vertical_flip_p": 0.0,
                     "color_jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0}
    transform = MamaTrainTransform(size=(30, 30), augmentation=deterministic)
    image = np.random.default_rng(0).random((60, 60)).astype(np.float32)  # square: the crop is the whole image
    resized = F.interpolate(torch.from_numpy(image)[None, None], size=(30, 30), mode="bilinear", antialias=True,
                            align_corners=False)[0, 0]
    expected = ((resized.flip(-1) - 0.5) / 0.5).expand(3, -1, -1)
    torch.testing.assert_close(transform(image), expected, atol=1e-5, rtol=0)


def test_preprocess_augment_uses_the_train_transform():
    processor = MamaImageProcessor(size=40)
    stored = breast_pixels(150, 100, laterality="R", seed=10)
    out = processor([stored, stored], augment=True, seed=11)["pixel_values"]
    assert out.shape == (2, 3, 40, 40) and not torch.equal(out[0], out[1])  # each image draws its own
    torch.testing.assert_close(processor([stored, stored], augment=True, seed=11)["pixel_values"], out)
    crop = crop_to_breast(orient_breast(to_unit_range(stored)))
    torch.testing.assert_close(out[0], processor.train_transform()(np.ascontiguousarray(crop), seed=11))


def test_train_transform_in_a_dataloader():
    images = [Image.fromarray(breast_pixels(80, 60, bits_stored=16, seed=s)) for s in range(4)]
    transform = pickle.loads(pickle.dumps(MamaImageProcessor(size=24).train_transform()))  # workers pickle it

    class Mammograms(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, index):
            return transform(images[index])

    batch = next(iter(torch.utils.data.DataLoader(Mammograms(), batch_size=4)))
    assert batch.shape == (4, 3, 24, 24)


# ---------------------------------------------------------------------------------------------
# Serialisation


def test_save_and_load_round_trip(tmp_path):
    import json

    from transformers import AutoImageProcessor
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

    from modeling_mama.configuration_mama import MamaConfig

    processor = MamaImageProcessor(mode="tiles", size=[48, 40], tile_size=24, tile_grid=[2, 3], keep_aspect_ratio=True,
                                   min_tile_foreground=0.2, augmentation={"blur_p": 0.1})
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "MamaImageProcessor"
    assert saved["tile_grid"] == [2, 3] and saved["size"] == {"height": 48, "width": 40}
    loaded = MamaImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    if MamaConfig not in IMAGE_PROCESSOR_MAPPING:  # the package __init__ normally registers it
        AutoImageProcessor.register(
            MamaConfig, image_processor_classes={"torchvision": MamaImageProcessor, "pil": MamaImageProcessor})
    auto = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(auto) is MamaImageProcessor and auto.to_dict() == processor.to_dict()
    image = breast_pixels(90, 70, seed=12)
    for key, value in processor(image).items():
        torch.testing.assert_close(loaded(image)[key], value, atol=0, rtol=0)
    assert MamaImageProcessor.from_pretrained(tmp_path, mode="global").mode == "global"


def test_numpy_outputs():
    out = MamaImageProcessor(size=16)(l_breast(), return_tensors="np")
    assert isinstance(out["pixel_values"], np.ndarray) and out["pixel_values"].shape == (1, 3, 16, 16)


def test_mammogram_dataset_input_without_a_file():
    ds = mammogram_dataset(window=(2000, 3000))
    out = MamaImageProcessor(size=16)(ds)["pixel_values"]
    expected = MamaImageProcessor(size=16)(read_dicom(ds).pixels, laterality="L")["pixel_values"]
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# Scanned film (CBIS-DDSM-like): frame bands, burned-in labels, scratches


def processed_breast_fraction(truth, crop_box, flipped, size=518):
    """Share of the processed size x size view that is breast: the truth mask through the same
    orientation, crop and (aspect-free) resize as the pixels."""
    x0, y0, x1, y1 = (int(round(v)) for v in crop_box)
    crop = torch.from_numpy(truth[y0:y1, x0:x1].astype(np.float32))
    if flipped:
        crop = crop.flip(-1)
    view = F.interpolate(crop[None, None], size=(size, size), mode="nearest")[0, 0]
    return float(view.mean())


def test_film_scans_are_cropped_to_the_breast_without_bands_or_label(tmp_path):
    from modeling_mama.data.synthetic.film import FilmLook, film_dataset, film_mammogram

    looks = [
        None,  # a random look: 1-3 bright edges, maybe a dark band, label, scratches
        FilmLook(bright_bands={"left": 0.08, "top": 0.05, "bottom": 0.03}, label="LMLO", scratches=3),
        FilmLook(bright_bands={"right": 0.06}, dark_band=("top", 0.03), label="RCC", scratches=2),
        FilmLook(bright_bands={"top": 0.02, "right": 0.1}, label="LCC", scratches=1, dust=0.003),
    ]
    cases = [(looks[0], "R", "MLO", (320, 256)), (looks[1], "L", "MLO", (1100, 860)),
             (looks[2], "R", "CC", (320, 256)), (looks[3], "L", "CC", (320, 256))]
    processor = MamaImageProcessor(do_normalize=False)
    fractions, plain, labels_beside = [], [], 0
    for index, (look, laterality, view, (height, width)) in enumerate(cases):
        film = film_mammogram(np.random.default_rng(index), height=height, width=width, laterality=laterality,
                              view=view, density=2 + index % 3, look=look)
        path = tmp_path / f"film{index}.dcm"
        film_dataset(film, laterality=laterality, view=view).save_as(path, enforce_file_format=True)
        image = read_dicom(path)
        assert image.transfer_syntax_uid == "1.2.840.10008.1.2.5" and image.bits_stored == 16
        assert (image.view_position, image.view_source) == (view, "PatientOrientation")
        assert (image.laterality, image.laterality_source) == (laterality, "Laterality")
        out = processor(path, return_geometry=True)
        box, flipped = out["crop_boxes"][0].tolist(), bool(out["flipped"][0])
        assert flipped == (laterality == "R")
        fractions.append(processed_breast_fraction(film.breast, box, flipped))
        x0, y0, x1, y1 = box
        assert film.breast[int(y0):int(y1), int(x0):int(x1)].sum() >= 0.95 * film.breast.sum()  # the breast kept
        lx0, ly0, lx1, ly1 = film.label_box
        ys, xs = np.nonzero(film.breast)
        if lx1 <= xs.min() or lx0 > xs.max() or ly1 <= ys.min() or ly0 > ys.max():  # beside the breast's box
            labels_beside += 1
            assert lx1 <= x0 or lx0 >= x1 or ly1 <= y0 or ly0 >= y1, f"label {film.label_box} inside crop {box}"
        view_pixels = out["pixel_values"][0, 0]
        assert view_pixels[:, :259].mean() > view_pixels[:, 259:].mean()  # chest wall on the left
        # What a plain Otsu + largest-region crop (the digital recipe) keeps of the same film.
        unit = to_unit_range(film.pixels)
        foreground = unit >= otsu_threshold(unit)
        labels, _ = ndimage.label(foreground, structure=np.ones((3, 3)))
        largest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
        ys, xs = np.nonzero(largest)
        plain.append(film.breast[ys.min():ys.max() + 1, xs.min():xs.max() + 1].mean())
    assert labels_beside >= 3  # an MLO breast may leave no corner of the film free
    assert min(fractions) > 0.7, fractions   # a half ellipse fills pi / 4 of its box
    assert max(plain) < 0.6, plain            # the film edges and labels the plain crop keeps


def test_digital_crops_are_the_plain_otsu_largest_region_box():
    """The film-proof crop gives digital mammograms exactly the box the plain recipe gives."""
    from modeling_mama.data.synthetic import Lesion, render_mammogram

    for seed in range(12):
        height, width = [(96, 80), (256, 208), (700, 560)][seed % 3]
        pixels = render_mammogram(np.random.default_rng(seed), height=height, width=width, laterality="LR"[seed % 2],
                                  view=["CC", "MLO", "ML", "XCCL"][seed % 4], density=1 + seed % 4,
                                  findings=[Lesion(kind="mass", size=0.05)] if seed % 3 == 0 else [], bits_stored=12)
        stride = max(1, max(height, width) // 512)
        preview = to_unit_range(pixels)[::stride, ::stride]
        foreground = preview >= otsu_threshold(preview)
        labels, _ = ndimage.label(foreground, structure=np.ones((3, 3)))
        largest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
        ys, xs = np.nonzero(largest)
        x0, y0, x1, y1 = breast_bbox(pixels)
        # The box reaches the neighbouring background samples of the preview's extreme rows / columns.
        assert (x0 <= xs.min() * stride < x0 + stride) or xs.min() == 0
        assert (y0 <= ys.min() * stride < y0 + stride) or ys.min() == 0
        assert xs.max() * stride < x1 <= (xs.max() + 1) * stride or x1 == width
        assert ys.max() * stride < y1 <= (ys.max() + 1) * stride or y1 == height
def test_nan_or_infinite_pixels_are_named():
    from modeling_mama.image_utils_mama import NonFinitePixelsError

    image = np.zeros((60, 40), dtype=np.float32)
    image[10:50, :25] = 0.8
    broken = image.copy()
    broken[3, 4], broken[5, 6] = np.nan, np.inf
    with pytest.raises(NonFinitePixelsError, match=r"^image 1 of the batch of 2: the image has 2 NaN or infinite "
                                                   r"pixel value\(s\) out of 2400"):
        MamaImageProcessor(size=28)([image, broken])
    with pytest.raises(NonFinitePixelsError, match=r"^the image has 2 NaN"):
        to_unit_range(broken)
    with pytest.raises(NonFinitePixelsError):
        otsu_threshold(broken)


def test_12_bit_data_in_a_16_bit_container_is_scaled_by_its_depth(tmp_path):
    from modeling_mama.image_utils_mama import LowBitDepthWarning

    twelve_bit = (np.linspace(0, 1, 60 * 40).reshape(60, 40) * 4095).round().astype(np.uint16)
    Image.fromarray(twelve_bit).save(tmp_path / "12bit.png")
    with pytest.warns(LowBitDepthWarning, match="uses only 12 bits"):
        pixels, _ = load_mammogram(tmp_path / "12bit.png")
    np.testing.assert_allclose(pixels, twelve_bit / 4095.0, atol=1e-6)
    assert pixels.max() == 1.0
    with pytest.warns(LowBitDepthWarning, match="uses only 10 bits"):
        to_unit_range(np.array([0, 1000], dtype=np.uint16))
    # Full 16-bit data (a converted dataset's PNG) and blank images are left alone.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert to_unit_range(np.array([0, 13107, 65535], dtype=np.uint16)).tolist() == pytest.approx([0, 0.2, 1])
        assert to_unit_range(np.array([0, 20000], dtype=np.uint16)).tolist() == pytest.approx([0, 20000 / 65535])
        assert to_unit_range(np.zeros(3, dtype=np.uint16)).tolist() == [0, 0, 0]


@pytest.mark.parametrize("image", [
    np.zeros((80, 60), dtype=np.uint16),                      # all black
    np.full((80, 60), 65535, dtype=np.uint16),                # all white
    np.full((1, 1), 0.5, dtype=np.float32),                   # 1x1
    np.pad(np.full((2, 2), 60000, dtype=np.uint16), 60),      # background with one small marker
])
def test_no_breast_warns_or_raises(image):
    from modeling_mama.image_processing_mama import NoBreastFoundError, NoBreastWarning

    breast = np.zeros((80, 60), dtype=np.uint16)
    breast[5:75, :40] = 40000
    with pytest.warns(NoBreastWarning, match=r"^image 1 of the batch of 2: no breast found \(.*\)\. Is it blank"):
        MamaImageProcessor(size=28)([breast, image])
    with pytest.raises(NoBreastFoundError, match="the image: no breast found"):
        MamaImageProcessor(size=28, no_breast="error")(image)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MamaImageProcessor(size=28)(image, no_breast="ignore")
        MamaImageProcessor(size=28)(breast)  # a breast: no warning
    with pytest.raises(ValueError, match="no_breast='maybe' is not one of"):
        MamaImageProcessor(no_breast="maybe")
