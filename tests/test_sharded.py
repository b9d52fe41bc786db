"""ShardedArray: several row blocks read as one array, checked against their concatenation."""

from __future__ import annotations

import numpy as np
import pytest

from compat.sharded import ShardedArray


@pytest.fixture
def parts():
    rng = np.random.default_rng(0)
    return [rng.standard_normal((n, 6)).astype(np.float32) for n in (5, 1, 9, 3)]


def test_slices_rows_and_columns_like_the_concatenation(parts):
    view, whole = ShardedArray(parts), np.concatenate(parts)
    assert view.shape == whole.shape and len(view) == 18 and view.dtype == np.float32
    for start in range(19):
        for stop in range(start, 19):
            np.testing.assert_array_equal(view[start:stop], whole[start:stop])
    np.testing.assert_array_equal(view[3:15:4], whole[3:15:4])
    np.testing.assert_array_equal(view[:, :4][2:12], whole[2:12, :4])
    np.testing.assert_array_equal(view[:, 1:5][:, :2][0:18], whole[:, 1:3])
    np.testing.assert_array_equal(np.asarray(view[:, :3]), whole[:, :3])
    assert view[:, :3].shape == (18, 3)


def test_gathers_rows_by_index_in_any_order(parts):
    view, whole = ShardedArray(parts), np.concatenate(parts)
    rows = np.array([17, 0, 5, 5, 6, -1, 14, 2])
    np.testing.assert_array_equal(view[rows], whole[rows])
    np.testing.assert_array_equal(view[rows.reshape(2, 4)].reshape(2, 4, 6), whole[rows.reshape(2, 4)])
    np.testing.assert_array_equal(view[7], whole[7])
    np.testing.assert_array_equal(view[-1], whole[-1])
    with pytest.raises(IndexError):
        view[np.array([18])]


def test_a_slice_inside_one_part_is_a_view_and_the_array_is_a_copy(parts):
    view = ShardedArray(parts)
    assert np.shares_memory(view[6:14], parts[2])
    assert not np.shares_memory(np.asarray(ShardedArray(parts[:1])), parts[0])


def test_refuses_parts_of_different_widths():
    with pytest.raises(ValueError, match="one width"):
        ShardedArray([np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32)])
