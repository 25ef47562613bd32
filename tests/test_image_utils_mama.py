"""Breast geometry helpers: boxes drawn on a source mammogram land on the same pixels of its processed view."""

import numpy as np
import pytest

from modeling_mama import MamaImageProcessor
from modeling_mama.image_utils_mama import boxes_to_view


@pytest.mark.parametrize("laterality", ["L", "R"])
@pytest.mark.parametrize("keep_aspect_ratio", [False, True])
def test_boxes_to_view_follows_the_flip_the_crop_and_the_resize(laterality, keep_aspect_ratio):
    # A left breast against the left edge (mirrored for a right one), with a bright square lesion.
    image = np.zeros((200, 160), dtype=np.uint16)
    image[20:180, :100] = 20000
    image[60:80, 50:70] = 60000
    lesion = np.array([50.0, 60.0, 70.0, 80.0])  # x0, y0, x1, y1
    if laterality == "R":
        image = image[:, ::-1].copy()
        lesion = np.array([160 - 70.0, 60.0, 160 - 50.0, 80.0])
    processor = MamaImageProcessor(size={"height": 40, "width": 64}, keep_aspect_ratio=keep_aspect_ratio,
                                   do_normalize=False)
    out = processor(image, laterality=laterality, return_geometry=True)
    assert out["flipped"].tolist() == [laterality == "R"]
    x0, y0, x1, y1 = boxes_to_view(lesion, out["crop_boxes"][0].numpy(), bool(out["flipped"][0]), (40, 64),
                                   keep_aspect_ratio=keep_aspect_ratio)[0]
    view = out["pixel_values"][0, 0].numpy()
    bright = np.argwhere(view > 0.6)  # the lesion's pixels (breast is 0.3)
    assert len(bright) >= 4
    assert (bright[:, 1] >= np.floor(x0) - 1).all() and (bright[:, 1] <= np.ceil(x1)).all()
    assert (bright[:, 0] >= np.floor(y0) - 1).all() and (bright[:, 0] <= np.ceil(y1)).all()
    # ... and the box is about as large as the lesion's pixels (not the whole view).
    assert (x1 - x0) * (y1 - y0) < 2.5 * len(bright)


def test_boxes_to_view_clips_and_checks_the_crop():
    boxes = boxes_to_view([(0, 0, 10, 10), (300, 300, 400, 400)], (20, 20, 120, 120), False, (50, 50))
    assert boxes.tolist() == [[0.0, 0.0, 0.0, 0.0], [50.0, 50.0, 50.0, 50.0]]
    with pytest.raises(ValueError, match="crop_box"):
        boxes_to_view([(0, 0, 1, 1)], (10, 10, 10, 20), False, (50, 50))
