"""Video sources: determinism, redundancy, patch raster order, real-frame loading and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.video import (
    GIF_FILE,
    PHOTO_FILES,
    FrameArray,
    PatchEmbedding,
    PhotoVideo,
    SyntheticVideo,
    VideoError,
    load_frames,
    open_video,
)


def test_synthetic_video_is_deterministic_per_seed(seed):
    a = SyntheticVideo(frames=6, height=32, width=40, seed=seed)
    b = SyntheticVideo(frames=6, height=32, width=40, seed=seed)
    c = SyntheticVideo(frames=6, height=32, width=40, seed=seed + 1)
    fa = torch.stack(list(a))
    assert fa.shape == (6, 3, 32, 40) and fa.dtype == torch.float32
    assert fa.min() >= 0.0 and fa.max() <= 1.0
    assert torch.equal(fa, torch.stack([b.frame(t) for t in reversed(range(6))]).flip(0))
    assert not torch.equal(fa, torch.stack(list(c)))


def test_consecutive_frames_are_redundant_and_cuts_are_not():
    v = SyntheticVideo(frames=80, height=48, width=48, seed=5, cut_every=(20, 30))
    assert v.cuts and all(20 <= b - a <= 30 for a, b in zip([0, *v.cuts], v.cuts, strict=False))
    diffs = [float((v.frame(t) - v.frame(t - 1)).abs().mean()) for t in range(1, 80)]
    at_cut = [diffs[c - 1] for c in v.cuts]
    within = [d for t, d in enumerate(diffs, start=1) if t not in v.cuts]
    assert min(at_cut) > 2 * max(within)
    # not a still image either: objects move, the camera pans, the sensor is noisy
    assert min(within) > 0.005


def test_patch_embedding_raster_order_and_seeding():
    emb = PatchEmbedding(grid=(3, 4), dim=16, patch=2, seed=0)
    base = torch.full((3, 6, 8), 0.5)
    ref = emb(base)
    assert ref.shape == (12, 16)
    changed = base.clone()
    changed[:, 2:4, 6:8] = 1.0  # patch row 1, column 3 -> token 1 * 4 + 3 = 7
    diff = (emb(changed) - ref).abs().sum(dim=1)
    assert diff.argmax() == 7 and (diff > 1e-6).sum() == 1
    assert torch.equal(PatchEmbedding((3, 4), 16, 2, seed=0)(changed), emb(changed))
    assert not torch.equal(PatchEmbedding((3, 4), 16, 2, seed=1)(changed), emb(changed))


def write_png(path, arr):
    Image.fromarray(arr).save(path)


def test_load_folder_of_frames(tmp_path, seed):
    rng = np.random.default_rng(seed)
    arrs = [rng.integers(0, 256, (10, 12, 3), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(arrs):
        write_png(tmp_path / f"f{i:03d}.png", a)
    write_png(tmp_path / "f003.png", arrs[0][:, :, 0])  # greyscale frame
    (tmp_path / "notes.txt").write_text("ignored: not a frame suffix")
    frames = load_frames(tmp_path)
    assert frames.shape == (4, 3, 10, 12)
    for i, a in enumerate(arrs):
        assert torch.equal(frames[i], torch.from_numpy(a.transpose(2, 0, 1) / 255.0).float())
    assert torch.equal(frames[3][0], frames[3][2])


def test_load_npy_layouts(tmp_path, seed):
    rng = np.random.default_rng(seed)
    last = rng.integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "last.npy", last)
    np.save(tmp_path / "first.npy", last.transpose(0, 3, 1, 2).copy())
    grey = rng.random((2, 5, 6))
    np.save(tmp_path / "grey.npy", grey)
    a, b = load_frames(tmp_path / "last.npy"), load_frames(tmp_path / "first.npy")
    assert a.shape == (2, 3, 5, 6) and torch.equal(a, b)
    assert torch.equal(a[1, 2], torch.from_numpy(last[1, :, :, 2] / 255.0).float())
    g = load_frames(tmp_path / "grey.npy")
    torch.testing.assert_close(g[:, 1], torch.from_numpy(grey).float())
    src = open_video(tmp_path / "grey.npy", frames=1)
    assert isinstance(src, FrameArray) and len(src) == 1


def bad_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "ndim2.npy", np.zeros((4, 5)))
    np.save(tmp_path / "ndim5.npy", np.zeros((1, 2, 3, 4, 5)))
    np.save(tmp_path / "nan.npy", np.full((1, 4, 4), np.nan))
    (tmp_path / "garbage.npy").write_bytes(b"not numpy")
    np.save(tmp_path / "hot.npy", np.full((1, 4, 4), 300.0))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "clip.txt").write_text("hello")
    bad_img = tmp_path / "badimg"
    bad_img.mkdir()
    (bad_img / "a.png").write_text("this is not a png")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_png(mixed / "a.png", np.zeros((4, 4, 3), np.uint8))
    write_png(mixed / "b.png", np.zeros((4, 5, 3), np.uint8))
    return {
        "missing": (tmp_path / "nope", "no such file"),
        "empty folder": (tmp_path / "empty", "no PNG/JPEG frames"),
        "wrong ndim 2": (tmp_path / "ndim2.npy", "got 2 dimensions"),
        "wrong ndim 5": (tmp_path / "ndim5.npy", "got 5 dimensions"),
        "nan": (tmp_path / "nan.npy", "NaN"),
        "garbage npy": (tmp_path / "garbage.npy", "not a .npy array file"),
        "float out of range": (tmp_path / "hot.npy", r"float pixels must lie in \[0, 1\]"),
        "pickled npy": (tmp_path / "obj.npy", "not a readable .npy array"),
        "non-image file": (tmp_path / "clip.txt", "expected a folder"),
        "corrupt png": (bad_img, "not a readable PNG/JPEG"),
        "mixed sizes": (mixed, "frames differ in size: a.png is 4x4, b.png is 4x5"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty folder",
        "wrong ndim 2",
        "wrong ndim 5",
        "nan",
        "garbage npy",
        "non-image file",
        "corrupt png",
        "mixed sizes",
    ],
)
def test_bad_frame_sources_raise_one_readable_error(tmp_path, case):
    path, message = bad_sources(tmp_path)[case]
    with pytest.raises(VideoError, match=message) as info:
        load_frames(path)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    # no chained traceback: the message is the whole story
    err = info.value
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


@pytest.mark.parametrize(
    "kwargs", [{"frames": 0}, {"height": 4}, {"noise": -1.0}, {"cut_every": (5, 2)}]
)
def test_bad_synthetic_parameters(kwargs):
    with pytest.raises(VideoError):
        SyntheticVideo(**kwargs)


def test_photo_stream_is_deterministic_per_seed_and_real(seed):
    seed %= 1000
    a = PhotoVideo(frames=40, height=32, width=48, seed=seed)
    b = PhotoVideo(frames=40, height=32, width=48, seed=seed)
    fa = torch.stack([a.frame(t) for t in range(0, 40, 3)])
    assert fa.shape == (14, 3, 32, 48) and fa.dtype == torch.float32
    assert fa.min() >= 0.0 and fa.max() <= 1.0
    assert torch.equal(fa, torch.stack([b.frame(t) for t in range(0, 40, 3)]))
    assert all(16 <= y - x <= 48 for x, y in zip([0, *a.cuts], a.cuts, strict=False))
    assert {a.shot(k)["source"] for k in range(len(a.scene_starts))} <= {*PHOTO_FILES, GIF_FILE}
    c = PhotoVideo(frames=40, height=32, width=48, seed=seed + 1)
    assert not torch.equal(fa, torch.stack([c.frame(t) for t in range(0, 40, 3)]))


def test_photo_stream_moves_within_a_shot_and_cuts_between_shots():
    v = PhotoVideo(frames=200, height=40, width=40, seed=1, noise=0.0)
    assert len(v.cuts) >= 3
    diffs = [float((v.frame(t) - v.frame(t - 1)).abs().mean()) for t in range(1, 200)]
    at_cut = [diffs[c - 1] for c in v.cuts]
    within = [x for t, x in enumerate(diffs, start=1) if t not in v.cuts]
    assert sorted(within)[len(within) // 2] < min(at_cut)  # a cut changes more than a pan
    assert sum(x > 0 for x in within) > len(within) // 2  # the camera moves


def test_photo_stream_plays_the_bundled_gif():
    v = PhotoVideo(frames=1000, height=16, width=16, seed=0)
    gif_shots = [k for k in range(len(v.scene_starts)) if v.shot(k)["source"] == GIF_FILE]
    assert gif_shots
    start = v.scene_starts[gif_shots[0]]
    assert not torch.equal(v.frame(start), v.frame(start + 2))  # the animation advances


def test_open_video_photos():
    assert isinstance(open_video("photos", frames=3, seed=2), PhotoVideo)
