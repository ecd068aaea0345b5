"""Image grids (ld3.utils.images): layout, value mapping, enlargement so that 16x16 digits are visible."""

import torch

from ld3.utils.images import image_grid, save_image_grid


def test_grid_layout_values_and_enlargement(tmp_path):
    imgs = torch.stack([torch.full((1, 16, 16), v) for v in (-1.0, 0.0, 1.0)])
    imgs[0, 0, 3, 5] = 1.0  # one bright pixel in the first image
    g = image_grid(imgs, nrow=2, padding=2, min_cell=64)  # 2 columns, 2 rows, each image 4x
    assert g.shape == (2 + 2 * 66, 2 + 2 * 66, 1) and g.dtype == torch.uint8
    assert int(g[2, 2, 0]) == 0 and int(g[2, 68, 0]) == 128 and int(g[68, 2, 0]) == 255
    assert int(g[1, 1, 0]) == 255  # padding is white
    block = g[2 + 3 * 4 : 2 + 4 * 4, 2 + 5 * 4 : 2 + 6 * 4, 0]  # the bright pixel became a 4x4 block
    assert (block == 255).all() and int(g[2 + 3 * 4, 2 + 6 * 4, 0]) == 0
    assert int(g[68 + 10, 68 + 10, 0]) == 255  # the empty 4th cell stays white
    from PIL import Image

    path = save_image_grid(imgs, tmp_path / "g.png", nrow=8)
    assert Image.open(path).size == (2 + 3 * 66, 2 + 66)
