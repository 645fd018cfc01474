"""save_figure measures the tight box once and crops every format to it, as "tight" would."""

from __future__ import annotations

import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from codeclens.util.figures import FORK_ENV, save_figure, use_style  # noqa: E402


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="formats are written by forked copies on Linux only")
def test_forked_formats_equal_one_after_the_other(tmp_path, monkeypatch):
    """The copies that write the SVG and PDF write what this process would: PNG pixels and the SVG's
    drawing equal a run with forking off, and no temporary file or child process is left behind."""
    import matplotlib.image as mpimg

    pids = []
    real_fork = os.fork

    def fork():
        pid = real_fork()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    save_figure(_figure(), tmp_path / "a" / "fig", ["png", "svg", "pdf"])
    assert len(pids) == 2  # svg and pdf each by a copy
    monkeypatch.setenv(FORK_ENV, "0")
    save_figure(_figure(), tmp_path / "b" / "fig", ["png", "svg", "pdf"])
    assert len(pids) == 2
    assert np.array_equal(mpimg.imread(tmp_path / "a" / "fig.png"), mpimg.imread(tmp_path / "b" / "fig.png"))

    def drawing(p):  # the SVG without its random element ids and the date
        text = p.read_text()
        return re.sub(r'(id|href|clip-path)="[^"]*"|<dc:date>[^<]*</dc:date>', "", text)

    assert drawing(tmp_path / "a" / "fig.svg") == drawing(tmp_path / "b" / "fig.svg")
    assert (tmp_path / "a" / "fig.pdf").read_bytes()[:5] == b"%PDF-"
    assert abs((tmp_path / "a" / "fig.pdf").stat().st_size - (tmp_path / "b" / "fig.pdf").stat().st_size) < 200
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["fig.pdf", "fig.png", "fig.svg"]
    for pid in pids:  # reaped: no zombie is left
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="formats are written by forked copies on Linux only")
def test_a_failing_copy_raises_here_and_leaves_the_other_files(tmp_path):
    fig = _figure()
    with pytest.raises(RuntimeError, match=r"writing fig: ValueError: .*xyz"):
        save_figure(fig, tmp_path / "fig", ["png", "xyz"])
    assert (tmp_path / "fig.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]  # no temporary file of the failed format


def test_no_process_to_spare_writes_every_format_here(tmp_path, monkeypatch):
    def fork():
        raise BlockingIOError("Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", fork)
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    written = save_figure(_figure(), tmp_path / "fig", ["png", "svg", "pdf"])
    assert [p.name for p in written] == ["fig.png", "fig.svg", "fig.pdf"] and all(p.is_file() for p in written)
    if fds is not None:  # the error pipes of the failed forks are closed
        assert len(os.listdir("/proc/self/fd")) == fds


if __name__ == "__main__":
    pytest.main([__file__])
