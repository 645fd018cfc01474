"""save_figure measures the tight box once and crops every format to it, as "tight" would."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from codeclens.util.figures import save_figure, use_style  # noqa: E402


def _figure():
    use_style()
    fig, axes = plt.subplots(2, 3, figsize=(9, 5))
    rng = np.random.default_rng(0)
    for i, ax in enumerate(axes.flat):
        ax.plot(np.arange(8) + 1, rng.random(8), marker="o")
        ax.set_title(f"panel {i}: a long title that sticks out")
        ax.set_xlabel("RVQ layer k")
        ax.set_ylabel("test macro-F1")
    fig.tight_layout()
    # A legend below the axes: outside the figure, so only a real tight box keeps it.
    fig.legend(handles=axes[0, 0].lines, labels=["codec"], loc="upper left", bbox_to_anchor=(0.0, 0.0))
    return fig


def test_every_format_is_cropped_like_savefig_tight(tmp_path):
    import matplotlib.image as mpimg

    fig = _figure()
    fig.savefig(tmp_path / "ref.png", dpi=150, bbox_inches="tight")
    fig.savefig(tmp_path / "ref.svg", bbox_inches="tight")
    written = save_figure(fig, tmp_path / "fig", ["png", "svg", "pdf"])
    assert [p.suffix for p in written] == [".png", ".svg", ".pdf"]
    ref, got = mpimg.imread(tmp_path / "ref.png"), mpimg.imread(tmp_path / "fig.png")
    assert got.shape == ref.shape  # the legend below the axes is inside the crop
    assert np.abs(got - ref).max() == 0

    def svg_size(p):
        import re

        head = p.read_text()[:2000]
        return np.array([float(re.search(f'{k}="([0-9.]+)pt"', head).group(1)) for k in ("width", "height")])

    # Vector formats are cropped to the box measured at the PNG's dpi: within 1 % of their own.
    assert np.allclose(svg_size(tmp_path / "fig.svg"), svg_size(tmp_path / "ref.svg"), rtol=0.01)
    assert (tmp_path / "fig.pdf").read_bytes()[:5] == b"%PDF-"


def test_untight_bbox_would_lose_the_legend(tmp_path):
    """The reference above is meaningful: without cropping to the tight box the image differs."""
    import matplotlib.image as mpimg

    fig = _figure()
    fig.savefig(tmp_path / "ref.png", dpi=150, bbox_inches="tight")
    with matplotlib.rc_context({"savefig.bbox": "standard"}):
        fig.savefig(tmp_path / "plain.png", dpi=150, bbox_inches=None)
    plt.close(fig)
    assert mpimg.imread(tmp_path / "plain.png").shape != mpimg.imread(tmp_path / "ref.png").shape


if __name__ == "__main__":
    pytest.main([__file__])
