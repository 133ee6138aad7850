import numpy as np
import torch

from comfyui_cyclevos.media.edges import EdgeConfig, components, refine_ids, soft_mask


def test_components_label_each_4_connected_piece():
    m = np.zeros((7, 9), bool)
    m[1:3, 1:4] = True  # a block
    m[5, 0:9] = True  # a bar along the bottom
    m[0:6, 7] = True  # joined to the bar
    m[3, 4] = True  # touches the block only diagonally: its own piece
    lab = components(m)
    assert (lab[~m] == -1).all()
    assert len(np.unique(lab[m])) == 3
    assert lab[5, 0] == lab[0, 7] and lab[1, 1] != lab[3, 4]


def test_a_long_serpentine_is_one_component():
    """Long thin paths converge too (pointer jumping, not one pixel per pass)."""
    m = np.zeros((41, 61), bool)
    m[::2] = True  # rows joined at alternate ends: one path of about 1300 pixels
    for i, r in enumerate(range(1, 41, 2)):
        m[r, -1 if i % 2 == 0 else 0] = True
    lab = components(m)
    assert len(np.unique(lab[m])) == 1


def test_specks_holes_grow_and_shrink():
    ids = np.zeros((40, 60), np.uint8)
    ids[5:25, 5:25] = 1
    ids[12:16, 12:16] = 0  # a hole in object 1
    ids[30:32, 50:52] = 1  # a speck of object 1
    ids[5:25, 35:55] = 2
    ids[10:14, 40:44] = 1  # object 1 inside object 2: not a hole of 2 to fill with 2
    out = refine_ids(ids, EdgeConfig(min_area=10, fill_holes=True))
    assert (out[12:16, 12:16] == 1).all()  # filled
    assert (out[30:32, 50:52] == 0).all()  # speck gone
    assert (out[10:14, 40:44] == 1).all()  # the other object's region is left as it is
    grown = refine_ids(out, EdgeConfig(grow=3))
    assert grown[5:25, 2:5].all() and (grown[5:25, 2] == 1).all()
    assert (grown[ids == 2] == 2).all() and (grown[out == 1] == 1).all()  # growing takes background only
    shrunk = refine_ids(out, EdgeConfig(grow=-3))
    assert (shrunk[5:8, 5:25] == 0).all() and (shrunk[9:21, 9:21] == 1).all()
    assert not EdgeConfig().changes_ids and np.array_equal(refine_ids(ids, EdgeConfig()), ids)


def test_feather_softens_edges_inside_the_frame_only():
    ids = np.zeros((30, 30), np.uint8)
    ids[:, :15] = 1  # touches the left border
    hard, soft = soft_mask(ids, None, 0), soft_mask(ids, [1], 2.0)
    assert torch.equal(hard, torch.from_numpy(ids > 0).float())
    assert 0.3 < float(soft[10, 14]) < 0.9 and 0.1 < float(soft[10, 15]) < 0.7  # the edge is soft
    assert float(soft[10, 0]) > 0.99  # the frame's border is not an edge
