"""Matting metrics against hand computations, and `sparsemat eval` end to end on small EXRs."""
from __future__ import annotations

import argparse
import json
import math
from collections import deque

import numpy as np
import pytest

from sparsemat.engine import metrics
from sparsemat.engine.validation import UsageError
from sparsemat.engine.evaluate import add_eval_command
from sparsemat.engine.imageio import write_alpha
from sparsemat.engine.metrics import (
    SCALING,
    connectivity_error,
    dtssd,
    dtssd_frame,
    gauss_kernels,
    gradient_error,
    largest_component,
    mse,
    sad,
    unknown_region,
)


# ---------------------------------------------------------------- independent references

def reference_kernel(sigma: float = 1.4) -> np.ndarray:
    """hx built the way the benchmark's gaussgradient does, loop by loop."""
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * 1e-2)))
    size = 2 * half + 1
    gauss = lambda x: math.exp(-x**2 / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))  # noqa: E731
    hx = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            hx[i, j] = gauss(i - half) * (-(j - half) * gauss(j - half) / sigma**2)
    return hx / np.sqrt(np.sum(hx * hx))


def reference_convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """scipy.ndimage.convolve(image, kernel, mode='nearest'), written out: 2-D, not separable."""
    half = kernel.shape[0] // 2
    padded = np.pad(image, half, mode="edge")
    height, width = image.shape
    out = np.zeros(image.shape)
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            # out[y, x] += k[i, j] * image[y + half - i, x + half - j]
            out += kernel[i, j] * padded[2 * half - i : 2 * half - i + height, 2 * half - j : 2 * half - j + width]
    return out


def reference_gradient_error(pred, gt, mask=None) -> float:
    hx = reference_kernel()
    amplitude = lambda a: np.hypot(reference_convolve(a, hx), reference_convolve(a, hx.T))  # noqa: E731
    error = (amplitude(pred) - amplitude(gt)) ** 2
    return float(error.sum() if mask is None else error[mask].sum())


def bfs_largest_component(mask: np.ndarray) -> np.ndarray:
    height, width = mask.shape
    labels = -np.ones(mask.shape, dtype=int)
    best, best_size, count = None, 0, 0
    for y in range(height):
        for x in range(width):
            if not mask[y, x] or labels[y, x] >= 0:
                continue
            queue, size = deque([(y, x)]), 0
            labels[y, x] = count
            while queue:
                a, b = queue.popleft()
                size += 1
                for c, d in ((a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)):
                    if 0 <= c < height and 0 <= d < width and mask[c, d] and labels[c, d] < 0:
                        labels[c, d] = count
                        queue.append((c, d))
            if size > best_size:
                best, best_size = count, size
            count += 1
    return labels == best if best is not None else np.zeros_like(mask)


# ---------------------------------------------------------------- constant error

def test_constant_offset():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 0.9, (20, 30))
    pred = gt + 0.1
    assert sad(pred, gt) == pytest.approx(0.1 * gt.size)
    assert mse(pred, gt) == pytest.approx(0.01)
    assert gradient_error(pred, gt) == pytest.approx(0, abs=1e-20)


def test_connectivity_of_constant_mattes_by_hand():
    gt = np.full((6, 7), 0.5)
    # Both reach 0.5 everywhere, nothing reaches 0.6 in both: every pixel's level is 0.5.
    # pred 0.6: d = 0.1 < 0.15, so phi = 1 for both.
    assert connectivity_error(gt + 0.1, gt) == pytest.approx(0)
    # pred 0.7: d = 0.2, phi = 0.8 against the ground truth's 1.
    assert connectivity_error(gt + 0.2, gt) == pytest.approx(0.2 * gt.size)


def test_identical_mattes_have_no_error():
    rng = np.random.default_rng(1)
    alpha = rng.random((16, 16))
    for metric in (sad, mse, gradient_error, connectivity_error):
        assert metric(alpha, alpha) == 0


# ---------------------------------------------------------------- one pixel

def test_one_pixel_error():
    gt = np.zeros((15, 15))
    pred = gt.copy()
    pred[7, 7] = 0.8
    assert sad(pred, gt) == pytest.approx(0.8)
    assert mse(pred, gt) == pytest.approx(0.64 / 225)
    # The impulse response is 0.8 * (hx, hy) around the pixel (no border reached), and both
    # filters have unit norm: sum (|grad pred| - 0)^2 = 0.64 * (|hx|^2 + |hy|^2) = 1.28.
    assert gradient_error(pred, gt) == pytest.approx(1.28)
    # Nothing reaches 0.1 in both mattes: every level is 0. The pixel: d = 0.8, phi = 0.2 vs 1.
    assert connectivity_error(pred, gt) == pytest.approx(0.8)


def test_one_pixel_hole_in_an_opaque_matte():
    gt = np.ones((3, 3))
    pred = gt.copy()
    pred[1, 1] = 0.5
    # The hole is connected up to level 0.5 and drops out at 0.6: l = 0.5 there, 1 elsewhere.
    # phi(pred) = 1 (d = 0), phi(gt) = 1 - 0.5 (d = 0.5): error 0.5.
    assert connectivity_error(pred, gt) == pytest.approx(0.5)
    # Levels are exact decimals: 0.6 is still connected at level 0.6 (l = 0.6, d_gt = 0.4).
    pred[1, 1] = 0.6
    assert connectivity_error(pred, gt) == pytest.approx(0.4)


def test_connectivity_counts_only_the_largest_component_and_4_neighbours():
    # Opaque block on the left; a pixel that is 1 in both but touches it only diagonally.
    gt = np.zeros((5, 5))
    gt[:3, :3] = 1
    gt[3, 3] = 1
    pred = gt.copy()
    # The island is disconnected from level 0.1 on (l = 0): d = 1, phi = 0 in both: no error.
    assert connectivity_error(pred, gt) == pytest.approx(0)
    pred[3, 3] = 0.5  # now d = 0.5, phi = 0.5 against 0
    assert connectivity_error(pred, gt) == pytest.approx(0.5)
    # The same pixel joined to the block by a 4-neighbour is connected up to 0.5: l = 0.5,
    # phi(pred) = 1, phi(gt) = 0.5.
    gt[2, 3] = pred[2, 3] = 1
    assert connectivity_error(pred, gt) == pytest.approx(0.5)
    pred[3, 3] = 0.3  # l = 0.3: phi(pred) = 1, phi(gt) = 1 - 0.7
    assert connectivity_error(pred, gt) == pytest.approx(0.7)


# ---------------------------------------------------------------- shifted edge

def test_step_edge_shifted_by_one_pixel():
    height, width = 12, 20
    gt = np.zeros((height, width))
    gt[:, 10:] = 1
    pred = np.zeros((height, width))
    pred[:, 11:] = 1
    assert sad(pred, gt) == pytest.approx(height)  # the edge length
    assert mse(pred, gt) == pytest.approx(height / gt.size)
    error = gradient_error(pred, gt)
    assert error > 0.1
    assert error == pytest.approx(reference_gradient_error(pred, gt), rel=1e-9)
    # Opaque in both only from column 11: column 10 is opaque in gt but at level 0 (d = 1, phi 0),
    # transparent in pred (phi 1); everything else agrees.
    assert connectivity_error(pred, gt) == pytest.approx(height)


def test_gradient_filter_matches_the_benchmark_construction():
    g, dg = gauss_kernels(1.4)
    assert g.size == dg.size == 9  # half-size 4 for sigma 1.4, epsilon 1e-2
    np.testing.assert_allclose(np.outer(g, dg), reference_kernel(), rtol=1e-12, atol=1e-15)
    rng = np.random.default_rng(2)
    pred, gt = rng.random((17, 13)), rng.random((17, 13))  # borders matter at this size
    assert gradient_error(pred, gt) == pytest.approx(reference_gradient_error(pred, gt), rel=1e-9)
    gx, gy = metrics.gauss_gradient(pred)
    np.testing.assert_allclose(gx, reference_convolve(pred, reference_kernel()), atol=1e-12)
    np.testing.assert_allclose(gy, reference_convolve(pred, reference_kernel().T), atol=1e-12)


# ---------------------------------------------------------------- trimap restriction

def test_unknown_region_is_strictly_between_0_and_1():
    trimap = np.array([[0, 128 / 255, 1], [0.5, 1e-3, 1 - 1e-3]], dtype=np.float32)
    np.testing.assert_array_equal(unknown_region(trimap), [[False, True, False], [True, True, True]])


def test_metrics_are_restricted_to_the_mask():
    gt = np.zeros((15, 15))
    pred = gt.copy()
    pred[7, 7] = 0.8
    pred[0, 0] = 0.3
    mask = np.zeros(gt.shape, dtype=bool)
    mask[7, :] = True  # the middle row: holds the 0.8 pixel, not the 0.3 one
    assert sad(pred, gt, mask) == pytest.approx(0.8)
    assert mse(pred, gt, mask) == pytest.approx(0.64 / 15)  # mean over the 15 masked pixels
    # Along the impulse's row hy is 0 (dg(0) = 0) and hx = g_n(0) dg_n: the row's sum is
    # 0.64 g_n(0)^2 |dg_n|^2 = 0.64 g_n(0)^2; the 0.3 pixel's response does not reach row 7.
    g = np.exp(-np.arange(-4, 5) ** 2 / (2 * 1.4**2))
    assert gradient_error(pred, gt, mask) == pytest.approx(0.64 * (g[4] / np.linalg.norm(g)) ** 2)
    assert connectivity_error(pred, gt, mask) == pytest.approx(0.8)
    assert gradient_error(pred, gt, mask) == pytest.approx(reference_gradient_error(pred, gt, mask))
    empty = np.zeros(gt.shape, dtype=bool)
    assert sad(pred, gt, empty) == mse(pred, gt, empty) == 0


def test_mask_must_be_boolean():
    alpha = np.zeros((4, 4))
    with pytest.raises(ValueError, match="unknown_region"):
        sad(alpha, alpha, np.full((4, 4), 0.5))
    with pytest.raises(ValueError, match="ground truth"):
        sad(alpha, np.zeros((4, 5)))


# ---------------------------------------------------------------- connected components

def test_largest_component_matches_a_breadth_first_search():
    rng = np.random.default_rng(3)
    for _ in range(150):
        height, width = rng.integers(1, 25, 2)
        mask = rng.random((height, width)) < rng.uniform(0.2, 0.8)
        np.testing.assert_array_equal(largest_component(mask), bfs_largest_component(mask))


def test_largest_component_uses_4_connectivity_and_first_on_ties():
    diagonal = np.eye(4, dtype=bool)
    expected = np.zeros((4, 4), dtype=bool)
    expected[0, 0] = True
    np.testing.assert_array_equal(largest_component(diagonal), expected)
    assert not largest_component(np.zeros((3, 3), dtype=bool)).any()
    # A serpentine: one component whose runs are joined alternately at either end.
    snake = np.zeros((41, 30), dtype=bool)
    snake[::2] = True
    snake[1::4, -1] = True
    snake[3::4, 0] = True
    np.testing.assert_array_equal(largest_component(snake), snake)


# ---------------------------------------------------------------- dtSSD

def test_dtssd_of_a_flickering_clip():
    e = 0.05
    gts = [np.full((8, 8), 0.5)] * 5
    preds = [gt + (e if t % 2 == 0 else -e) for t, gt in enumerate(gts)]
    # Each frame's change is +-2e against none in the ground truth: sqrt(mean (2e)^2) = 2e.
    for t in range(1, 5):
        assert dtssd_frame(preds[t], preds[t - 1], gts[t], gts[t - 1]) == pytest.approx(2 * e)
    assert dtssd(preds, gts) == pytest.approx(2 * e)


def test_dtssd_without_flicker_is_zero():
    rng = np.random.default_rng(4)
    gts = [rng.uniform(0, 0.9, (8, 8)) for _ in range(4)]  # moving ground truth
    assert dtssd([gt + 0.1 for gt in gts], gts) == pytest.approx(0, abs=1e-12)  # steady offset


def test_dtssd_with_masks():
    gts = [np.zeros((4, 4))] * 3
    preds = [np.zeros((4, 4)) for _ in range(3)]
    preds[1][0, 0] = 0.5  # flicker in one pixel on frame 1
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, :2] = True
    # Frames 1 and 2 each change that pixel by 0.5: sqrt(0.25 / 2) over the 2 masked pixels.
    assert dtssd(preds, gts, [mask] * 3) == pytest.approx(math.sqrt(0.125))
    assert dtssd(preds, gts) == pytest.approx(math.sqrt(0.25 / 16))
    with pytest.raises(ValueError, match="two frames"):
        dtssd(preds[:1], gts[:1])


# ---------------------------------------------------------------- the command

def run_eval(*argv) -> int:
    parser = argparse.ArgumentParser(prog="sparsemat")
    add_eval_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *map(str, argv)])
    return args.run(args)


@pytest.fixture()
def clip(tmp_path):
    """Frames 1-3: gt a soft edge, pred = gt + a +-0.05 flicker in the middle band; a trimap."""
    height, width = 16, 24
    ramp = np.clip((np.arange(width) - 8) / 8, 0, 1)
    gt = np.tile(ramp, (height, 1)).astype(np.float32)
    trimap = np.where(gt <= 0, 0, np.where(gt >= 1, 1, 128 / 255)).astype(np.float32)
    frames = {}
    for frame in (1, 2, 3):
        pred = gt.copy()
        pred[4:12, 6:18] = np.clip(pred[4:12, 6:18] + (0.05 if frame % 2 else -0.05), 0, 1)
        write_alpha(str(tmp_path / f"pred.{frame:04d}.exr"), pred)
        write_alpha(str(tmp_path / f"gt.{frame:04d}.exr"), gt)
        frames[frame] = (pred, gt)
    write_alpha(str(tmp_path / "trimap.exr"), trimap)
    return tmp_path, frames, unknown_region(trimap)


def test_eval_sequence_table(clip, capsys):
    folder, frames, _ = clip
    assert run_eval(folder / "pred.####.exr", folder / "gt.%04d.exr") == 0
    lines = capsys.readouterr().out.splitlines()
    assert "SAD/1e3, MSE x1e3, Grad/1e3, Conn/1e3, dtSSD x1e2" in lines[0]
    assert "full frame" in lines[0]
    assert lines[1].split() == ["frame", "SAD/1e3", "MSE", "x1e3", "Grad/1e3", "Conn/1e3", "dtSSD", "x1e2"]
    assert [line.split()[0] for line in lines[2:]] == ["1", "2", "3", "mean"]
    assert lines[2].split()[-1] == "-"  # no previous frame for dtSSD
    pred, gt = frames[2]
    assert float(lines[3].split()[1]) == pytest.approx(sad(pred, gt) / 1e3, abs=1e-4)


def test_eval_sequence_json_with_trimap(clip, capsys):
    folder, frames, unknown = clip
    code = run_eval(folder / "pred.####.exr", folder / "gt.####.exr", "--trimap", folder / "trimap.exr", "--json")
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scaling"] == SCALING
    assert report["region"] == "trimap unknown"
    assert [row["frame"] for row in report["frames"]] == [1, 2, 3]
    for row in report["frames"]:
        pred, gt = frames[row["frame"]]
        assert row["pixels"] == int(unknown.sum())
        assert row["sad"] == pytest.approx(sad(pred, gt, unknown) * 1e-3)
        assert row["mse"] == pytest.approx(mse(pred, gt, unknown) * 1e3)
        assert row["grad"] == pytest.approx(gradient_error(pred, gt, unknown) * 1e-3)
        assert row["conn"] == pytest.approx(connectivity_error(pred, gt, unknown) * 1e-3)
    assert report["frames"][0]["dtssd"] is None
    expected_dtssd = [dtssd_frame(frames[t][0], frames[t - 1][0], frames[t][1], frames[t - 1][1], unknown) * 1e2
                      for t in (2, 3)]
    assert [row["dtssd"] for row in report["frames"][1:]] == pytest.approx(expected_dtssd)
    assert expected_dtssd[0] > 0
    assert report["mean"]["dtssd"] == pytest.approx(np.mean(expected_dtssd))
    assert report["mean"]["sad"] == pytest.approx(np.mean([row["sad"] for row in report["frames"]]))


def test_eval_warns_when_a_trimap_has_no_unknown_pixels(clip, capsys):
    folder, _, _ = clip
    write_alpha(str(folder / "binary.exr"), np.ones((16, 24), dtype=np.float32))
    assert run_eval(folder / "pred.0001.exr", folder / "gt.0001.exr", "--trimap", folder / "binary.exr", "--json") == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["frames"][0]["pixels"] == 0
    assert "binary.exr has no unknown pixels" in captured.err


def test_eval_single_image_and_frames_option(clip, capsys):
    folder, frames, _ = clip
    assert run_eval(folder / "pred.0002.exr", folder / "gt.0002.exr", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["frames"]) == 1 and "dtssd" not in report["mean"]
    assert report["frames"][0]["sad"] == pytest.approx(sad(*frames[2]) * 1e-3)
    assert run_eval(folder / "pred.0002.exr", folder / "gt.0002.exr") == 0
    assert capsys.readouterr().out.splitlines()[2].startswith("pred.0002.exr")
    assert run_eval(folder / "pred.####.exr", folder / "gt.####.exr", "--frames", "1,3", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    # 1 and 3 are not consecutive: no dtSSD
    assert [row["frame"] for row in report["frames"]] == [1, 3] and report["mean"]["dtssd"] is None


def test_eval_errors(clip, capsys):
    folder, _, _ = clip
    with pytest.raises(UsageError, match=r"GT file not found for frame 3: .*gt\.0003\.exr"):
        (folder / "gt.0003.exr").unlink()
        run_eval(folder / "pred.####.exr", folder / "gt.####.exr")
    with pytest.raises(UsageError, match="must both be sequence patterns"):
        run_eval(folder / "pred.####.exr", folder / "gt.0001.exr")
    with pytest.raises(UsageError, match="--frames needs"):
        run_eval(folder / "pred.0001.exr", folder / "gt.0001.exr", "--frames", "1")
    with pytest.raises(UsageError, match="no frames match"):
        run_eval(folder / "none.####.exr", folder / "gt.####.exr")
    write_alpha(str(folder / "small.exr"), np.zeros((8, 8), dtype=np.float32))
    assert run_eval(folder / "pred.0001.exr", folder / "small.exr") == 1
    message = capsys.readouterr().err
    assert "sizes differ" in message and "pred.0001.exr is 24x16" in message and "small.exr is 8x8" in message


def test_eval_through_the_installed_command(clip):
    from conftest import run_cli
    from sparsemat.engine.cli import build_parser

    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    if "eval" not in commands.choices:
        pytest.skip("`eval` is not wired into engine/cli.py yet")
    folder, _, _ = clip
    result = run_cli("eval", folder / "pred.####.exr", folder / "gt.####.exr", "--json")
    assert result.returncode == 0, result.stderr
    assert [row["frame"] for row in json.loads(result.stdout)["frames"]] == [1, 2, 3]
    result = run_cli("eval", folder / "pred.####.exr", folder / "missing.####.exr")
    assert result.returncode == 2 and "GT file not found" in result.stderr


# ---------------------------------------------------------------- conventions, against hand computations

def write_u8(path, values) -> None:
    """A one-channel 8-bit PNG of the integers ``values`` (H, W), as benchmark mattes are stored."""
    import OpenImageIO as oiio

    values = np.ascontiguousarray(np.asarray(values, dtype=np.uint8)[..., None])
    out = oiio.ImageOutput.create(str(path))
    assert out.open(str(path), oiio.ImageSpec(values.shape[1], values.shape[0], 1, oiio.UINT8))
    assert out.write_image(values)
    out.close()


def eval_json(capsys, *argv) -> dict:
    assert run_eval(*argv, "--json") == 0
    return json.loads(capsys.readouterr().out)


def test_connectivity_compares_levels_at_the_mattes_own_precision(tmp_path, capsys):
    """A float32 row [1, 0.9, 0.7, 1] against an opaque truth. At float32 precision 0.9 reaches
    level 0.9 and 0.7 level 0.7: pixel 2 is cut off at level 0.8 (l = 0.7: pred's phi 1, the
    truth's 1 - 0.3), pixel 3 too (its distance is the same for both), pixel 1 at level 1.0
    (l = 0.9, distances 0 and 0.1, both under 0.15): 0.3 in all. Against float64 levels pixel 1
    would drop at 0.9 and pixel 2 at 0.7, which gave 0.6."""
    pred = np.array([[1.0, 0.9, 0.7, 1.0]], dtype=np.float32)
    gt = np.ones_like(pred)
    assert connectivity_error(pred, gt) == pytest.approx(0.3, abs=1e-6)
    assert connectivity_error(pred.astype(np.float64), gt.astype(np.float64)) == pytest.approx(0.6, abs=1e-6)
    write_alpha(str(tmp_path / "pred.exr"), pred)
    write_alpha(str(tmp_path / "gt.exr"), gt)
    report = eval_json(capsys, tmp_path / "pred.exr", tmp_path / "gt.exr")
    assert report["frames"][0]["conn"] == pytest.approx(0.3e-3, abs=1e-9)


def test_a_constant_offset_in_each_convention(tmp_path, capsys):
    """8-bit mattes, 4 x 5: truth 128, prediction 153 everywhere (25/255 apart)."""
    write_u8(tmp_path / "gt.png", np.full((4, 5), 128))
    write_u8(tmp_path / "pred.png", np.full((4, 5), 153))
    difference = 25 / 255
    ours = eval_json(capsys, tmp_path / "pred.png", tmp_path / "gt.png")["frames"][0]
    dim = eval_json(capsys, tmp_path / "pred.png", tmp_path / "gt.png", "--convention", "dim")["frames"][0]
    rvm = eval_json(capsys, tmp_path / "pred.png", tmp_path / "gt.png", "--convention", "rvm")["frames"][0]
    assert ours["sad"] == pytest.approx(20 * difference / 1e3) and dim["sad"] == pytest.approx(20 * difference / 1e3)
    assert rvm["mad"] == pytest.approx(difference * 1e3, rel=1e-6) and "sad" not in rvm
    assert ours["mse"] == pytest.approx(difference**2 * 1e3) and dim["mse"] == pytest.approx(difference**2)
    assert rvm["mse"] == pytest.approx(difference**2 * 1e3, rel=1e-6)
    for row in (ours, dim, rvm):  # flat mattes: no gradient; connected to 0.5 and no further, distances < 0.15
        assert row["grad"] == 0 and row["conn"] == pytest.approx(0, abs=1e-12)


def test_a_hole_in_an_opaque_matte_in_each_convention(tmp_path, capsys):
    """A 5 x 5 opaque truth, the prediction 0 at the centre: the hole leaves the largest component
    at level 0.1 (l = 0: the truth's distance 1, phi 0; the prediction's phi 1)."""
    write_u8(tmp_path / "gt.png", np.full((5, 5), 255))
    hole = np.full((5, 5), 255)
    hole[2, 2] = 0
    write_u8(tmp_path / "pred.png", hole)
    write_u8(tmp_path / "trimap.png", np.full((5, 5), 128))
    ours = eval_json(capsys, tmp_path / "pred.png", tmp_path / "gt.png")["frames"][0]
    dim = eval_json(capsys, tmp_path / "pred.png", tmp_path / "gt.png", "--convention", "dim", "--trimap",
                    tmp_path / "trimap.png")["frames"][0]
    rvm = eval_json(capsys, tmp_path / "pred.png", tmp_path / "gt.png", "--convention", "rvm")["frames"][0]
    assert ours["conn"] == dim["conn"] == pytest.approx(1e-3) and rvm["conn"] == pytest.approx(1e-3, rel=1e-6)
    assert ours["sad"] == dim["sad"] == pytest.approx(1e-3) and rvm["mad"] == pytest.approx(1 / 25 * 1e3, rel=1e-6)
    assert ours["mse"] == pytest.approx(1 / 25 * 1e3) and dim["mse"] == pytest.approx(1 / 25)


def test_a_plateau_at_exactly_0_6(tmp_path, capsys):
    """Truth 0.6 everywhere, the prediction 0.8 at one pixel: every pixel reaches level 0.6 exactly
    (np.arange's 0.6000000000000001 would cut them at 0.5) and leaves at 0.7, so l = 0.6: the
    pixel's distances are 0.2 (phi 0.8) and 0 (phi 1). 8-bit: 153 and 204 are exactly 0.6 and 0.8."""
    gt = np.full((3, 3), 153)
    pred = gt.copy()
    pred[1, 1] = 204
    write_u8(tmp_path / "gt.png", gt)
    write_u8(tmp_path / "pred.png", pred)
    for convention in ("ours", "dim", "rvm"):
        row = eval_json(capsys, tmp_path / "pred.png", tmp_path / "gt.png", "--convention", convention)["frames"][0]
        assert row["conn"] == pytest.approx(0.2e-3, abs=1e-9), convention


def test_a_resampled_trimap_counts_its_border_greys_only_in_ours(tmp_path, capsys):
    """A trimap row 0, 100, 128, 128, 200, 255 (a resized trimap's borders are greys): ours
    evaluates the four pixels strictly between 0 and 1, dim only the two of value 128. The
    prediction is 51/255 (0.2) above the truth everywhere."""
    write_u8(tmp_path / "trimap.png", [[0, 100, 128, 128, 200, 255]])
    write_u8(tmp_path / "gt.png", [[0, 40, 80, 120, 160, 200]])
    write_u8(tmp_path / "pred.png", [[51, 91, 131, 171, 211, 251]])
    ours = eval_json(capsys, tmp_path / "pred.png", tmp_path / "gt.png", "--trimap", tmp_path / "trimap.png")
    dim = eval_json(capsys, tmp_path / "pred.png", tmp_path / "gt.png", "--trimap", tmp_path / "trimap.png",
                    "--convention", "dim")
    assert ours["frames"][0]["pixels"] == 4 and dim["frames"][0]["pixels"] == 2
    assert ours["frames"][0]["sad"] == pytest.approx(4 * 0.2 / 1e3) and dim["frames"][0]["sad"] == pytest.approx(0.4e-3)
    with pytest.raises(UsageError, match="rvm convention evaluates whole frames"):
        run_eval(tmp_path / "pred.png", tmp_path / "gt.png", "--trimap", tmp_path / "trimap.png", "--convention", "rvm")


def test_the_gradient_of_a_matte_that_does_not_span_0_to_1(tmp_path, capsys):
    """A prediction c x the truth (c = 0.5): its gradients are c times the truth's, so ours gives
    (1 - c)^2 times the error of an empty prediction; dim and rvm stretch it back to the truth: 0."""
    gt = np.zeros((9, 12))
    gt[:, 6:] = 255
    write_u8(tmp_path / "gt.png", gt)
    write_u8(tmp_path / "half.png", gt / 2)  # 127: c = 127/255
    write_u8(tmp_path / "empty.png", np.zeros_like(gt))
    c = 127 / 255
    half = eval_json(capsys, tmp_path / "half.png", tmp_path / "gt.png")["frames"][0]["grad"]
    empty = eval_json(capsys, tmp_path / "empty.png", tmp_path / "gt.png")["frames"][0]["grad"]
    assert empty > 0 and half == pytest.approx((1 - c) ** 2 * empty, rel=1e-9)
    for convention in ("dim", "rvm"):
        row = eval_json(capsys, tmp_path / "half.png", tmp_path / "gt.png", "--convention", convention)
        assert row["frames"][0]["grad"] == pytest.approx(0, abs=1e-9), convention


def test_dtssd_counts_a_zero_first_frame_in_rvm(tmp_path, capsys):
    """A still truth and a prediction 0.1 off in alternate frames: 0.1 for frames 2 and 3 (x1e2: 10);
    RVM's clip mean counts frame 1 as 0: 20 / 3."""
    for frame in (1, 2, 3):
        write_alpha(str(tmp_path / f"gt.{frame:04d}.exr"), np.full((4, 4), 0.5, np.float32))
        write_alpha(str(tmp_path / f"pred.{frame:04d}.exr"), np.full((4, 4), 0.6 if frame % 2 else 0.5, np.float32))
    ours = eval_json(capsys, tmp_path / "pred.####.exr", tmp_path / "gt.####.exr")
    rvm = eval_json(capsys, tmp_path / "pred.####.exr", tmp_path / "gt.####.exr", "--convention", "rvm")
    assert ours["mean"]["dtssd"] == pytest.approx(10, rel=1e-5) and ours["frames"][0]["dtssd"] is None
    assert rvm["mean"]["dtssd"] == pytest.approx(20 / 3, rel=1e-5) and rvm["frames"][0]["dtssd"] == 0


def test_a_dataset_of_folders_matched_by_name(tmp_path, capsys):
    for folder in ("pred", "gt", "trimaps"):
        (tmp_path / folder).mkdir()
    for name, value in (("a", 10), ("b", 20)):
        write_u8(tmp_path / "gt" / f"{name}.png", np.full((4, 4), 100))
        write_u8(tmp_path / "pred" / f"{name}.png", np.full((4, 4), 100 + value))
        write_u8(tmp_path / "trimaps" / f"{name}.png", np.full((4, 4), 128))
    report = eval_json(capsys, tmp_path / "pred", tmp_path / "gt", "--trimap-dir", tmp_path / "trimaps")
    assert [row["key"] for row in report["frames"]] == ["a", "b"] and "dtssd" not in report["mean"]
    assert report["mean"]["sad"] == pytest.approx((16 * 10 + 16 * 20) / 255 / 2 / 1e3)
    assert run_eval(tmp_path / "pred", tmp_path / "gt", "--csv") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("frame,pred,gt,trimap,pixels,SAD/1e3") and lines[-1].startswith("mean,")
    (tmp_path / "gt" / "b.png").unlink()
    with pytest.raises(UsageError, match="has no image named b"):
        run_eval(tmp_path / "pred", tmp_path / "gt")


def test_benchmark_mattes_a_dataset_and_reports_what_eval_says(tmp_path, reference):
    from conftest import run_cli, write_rgb

    dataset = tmp_path / "set"
    for folder in ("merged", "alpha", "trimaps", "priors"):
        (dataset / folder).mkdir(parents=True)
    for index in range(2):
        write_rgb(dataset / "merged" / f"im{index}.png", np.ascontiguousarray(reference["frames"][index][:64, :96]))
        truth = np.zeros((64, 96), np.float32)
        truth[16:48, 24 + index:72] = 1.0
        write_alpha(str(dataset / "alpha" / f"im{index}.exr"), truth)
        write_alpha(str(dataset / "trimaps" / f"im{index}.exr"), np.where(truth > 0, 0.5, 0.0).astype(np.float32))
        write_alpha(str(dataset / "priors" / f"im{index}.exr"), truth[::8, ::8].copy())
    result = run_cli("benchmark", dataset, "--out", tmp_path / "out", "--device", "cpu", "--json",
                     env={"SPARSEMAT_CHECKPOINT": ""})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [row["key"] for row in report["frames"]] == ["im0", "im1"] and report["region"] == "trimap unknown"
    assert report["speed"]["images"] == 2 and all(row["seconds"] > 0 for row in report["frames"])
    evaluated = run_cli("eval", tmp_path / "out", dataset / "alpha", "--trimap-dir", dataset / "trimaps", "--json")
    assert json.loads(evaluated.stdout)["mean"] == pytest.approx(report["mean"])
    missing = run_cli("benchmark", tmp_path, env={"SPARSEMAT_CHECKPOINT": ""})
    assert missing.returncode == 2 and "has no images folder" in missing.stderr
