import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import PathCollection, QuadMesh  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

import lt_utils as lt  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    lt.set_style()
    yield
    plt.close("all")


def bars(ax):
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_long_tail_sorted_bars_with_groups_and_thresholds():
    counts = torch.tensor([5, 500, 60, 12, 150, 30])
    ax = lt.plot_long_tail(counts)
    heights = [p.get_height() for p in bars(ax)]
    assert heights == [500, 150, 60, 30, 12, 5]  # sorted head to tail
    assert ax.get_yscale() == "log"
    assert sorted(line.get_ydata()[0] for line in ax.get_lines()) == [20, 100]
    colors = [tuple(np.round(p.get_facecolor()[:3], 3)) for p in bars(ax)]
    assert colors[0] == colors[1] != colors[2] == colors[3] != colors[4] == colors[5]  # Many, Medium, Few
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Many", "Medium", "Few"]
    ax = lt.plot_long_tail([3, 2, 1], log=False, groups=[2, 2, 2], thresholds=None)
    assert ax.get_yscale() == "linear" and len(ax.get_lines()) == 0
    with pytest.raises(ValueError, match="one entry per class"):
        lt.plot_long_tail([3, 2, 1], groups=[0, 1])


def test_group_bars_means_and_error_bars():
    results = {"CE": [70.0, 50.0, 20.0], "LA": np.array([[70, 60, 40], [72, 62, 44.0]])}
    fig, ax = plt.subplots()
    assert lt.plot_group_bars(results, ax=ax) is ax
    heights = [p.get_height() for p in bars(ax)]
    assert heights[:3] == [70, 50, 20]
    np.testing.assert_allclose(heights[3:], [71, 61, 42])
    errorbars = [c for c in ax.containers if isinstance(c, matplotlib.container.ErrorbarContainer)]
    assert len(errorbars) == 1  # only the 2-D (seeds) entry has a spread
    segments = errorbars[0].lines[2][0].get_segments()
    spread = np.std([[70, 60, 40], [72, 62, 44]], axis=0, ddof=1)
    np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in segments], 2 * spread)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Many", "Medium", "Few"]
    with pytest.raises(ValueError, match="3 values"):
        lt.plot_group_bars({"x": [1, 2]})
    ax = lt.plot_group_bars({"nan": [np.nan, 1.0, np.nan]}, annotate=True)  # NaN values do not crash
    assert len(bars(ax)) == 3


def test_group_matrix_heatmap_with_nan_cell():
    matrix = torch.tensor([[80.0, 70.0, 60.0], [75.0, float("nan"), 40.0], [50.0, 30.0, 10.0]])
    counts = torch.tensor([[5, 4, 3], [4, 0, 4], [3, 4, 5]])
    ax = lt.plot_group_matrix(matrix, counts=counts, title="LA", vmin=0, vmax=100)
    assert any(isinstance(c, QuadMesh) for c in ax.collections)
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 8 and "80.0\n(5)" in texts  # the NaN cell has no label
    assert ax.get_ylabel() == "D-group" and ax.get_xlabel() == "P-group" and ax.get_title() == "LA"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["D-Many", "D-Medium", "D-Few"]
    ax = lt.plot_group_matrix(torch.full((3, 3), float("nan")), annotate=False)  # all-NaN: still draws
    assert len(ax.texts) == 0


def test_prior_scatter_reports_spearman():
    true = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    est = torch.tensor([0.4, 0.25, 0.1, 0.15, 0.1])
    ax = lt.plot_prior_scatter(true, est, groups=[0, 0, 1, 1, 2])
    rho = lt.rank_correlation(true, est)
    assert f"{rho:.3f}" in ax.get_title()
    assert ax.get_xscale() == ax.get_yscale() == "log"
    points = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))
    assert points == 5
    with pytest.raises(ValueError, match="positive"):
        lt.plot_prior_scatter([0.5, 0.5], [1.0, 0.0])


def test_per_class_vs_prior_skips_nan():
    g = torch.Generator().manual_seed(0)
    prior = torch.rand(40, generator=g) + 0.01
    acc = 100 * prior / prior.max()
    acc[3] = float("nan")
    ax = lt.plot_per_class_vs_prior(acc, prior, groups=torch.arange(40) % 3, bins=4)
    points = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))
    assert points == 39
    assert "1.000" in ax.get_title()  # accuracy is monotone in the prior here
    assert len(ax.get_lines()) == 1 and len(ax.get_lines()[0].get_xdata()) == 4  # binned means


def test_show_images_grid_upscaled_and_captioned():
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    ax = lt.show_images(images, labels=torch.arange(10), classnames=[f"c{i}" for i in range(10)], nrow=4)
    (img,) = ax.images
    grid = img.get_array()
    scale = 4  # 16 px -> 64 px cells, nearest neighbour
    assert grid.shape == (3 * (16 * scale + 2) + 2, 4 * (16 * scale + 2) + 2, 3)
    first_pixel = np.broadcast_to(images[0, :, 0, 0].numpy() / 255, (scale, scale, 3))
    np.testing.assert_allclose(grid[2:2 + scale, 2:2 + scale], first_pixel, rtol=1e-6)
    assert img.get_interpolation() == "nearest"
    assert [t.get_text() for t in ax.texts] == [f"c{i}" for i in range(10)]
    # normalised float images are un-normalised with mean/std
    x = (images[:2].float() / 255 - 0.5) / 0.25
    ax = lt.show_images(x, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), min_cell=16)
    np.testing.assert_allclose(ax.images[0].get_array()[2:18, 2:18], images[0].permute(1, 2, 0).numpy() / 255,
                               atol=1e-6)
    ax = lt.show_images(torch.rand(3, 8, 8))  # grayscale N x H x W
    assert ax.images[0].get_array().shape[-1] == 3
    with pytest.raises(ValueError, match="N x C x H x W"):
        lt.show_images(torch.rand(2, 5, 8, 8))
