"""Tests of kdbus.synth that are too slow or too awkward for the notebook: statistics over many
cases, byte-level determinism of written sets, interrupted writes and refusals."""
import json, math, os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import kdbus.synth as synth
from kdbus.synth import (CLASSES, RAYLEIGH_RATIO, SYNTH_VERSION, SynthParams, case_labels, case_seed, gabor_psf,
                         posterior_contrast, read_synth_record, shape_stats, speckle_envelope, synth_case, write_synth)

N_PER_CLASS = 40  # cases per class for the statistical checks


@pytest.fixture(scope="module")
def cases():
    "N_PER_CLASS synthetic cases of each class, with default parameters and independent seeds."
    return {lab: [synth_case(np.random.SeedSequence(77, spawn_key=(k, i)), lab) for i in range(N_PER_CLASS)]
            for k, lab in enumerate(CLASSES)}


# ---------------------------------------------------------------- speckle physics
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("psf_args", [(), (1.0, 2.0, 0.25), (1.6, 3.5, 0.15)])
def test_rayleigh_ratio(seed, psf_args):
    env = speckle_envelope((256, 256), seed=seed, psf=gabor_psf(*psf_args))
    ratio = env.mean() / env.std()
    assert abs(ratio / RAYLEIGH_RATIO - 1) < 0.10, f"mean/std {ratio:.3f}, Rayleigh {RAYLEIGH_RATIO:.3f}"
    assert abs((env**2).mean() - 1) < 0.05  # unit-energy PSF: mean power = echogenicity^2


def test_rayleigh_ratio_rejects_non_speckle():
    "The check can fail: too few scatterers per resolution cell (not fully developed speckle) is far off."
    rng = np.random.default_rng(0)
    sparse = (rng.random((256, 256)) < 0.003) * 10.0  # about 0.1 scatterer per resolution cell
    env = np.abs(synth.scatter_rf(rng, sparse, gabor_psf()))
    assert env.mean() / env.std() < 0.8 * RAYLEIGH_RATIO


# ---------------------------------------------------------------- one case
def test_case_is_deterministic_and_seed_dependent():
    a, b, c = synth_case(11), synth_case(11), synth_case(12)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) and a.meta == b.meta
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


def test_mask_is_exactly_one_lesion_inside_the_image(cases):
    for c in cases["benign"][:10] + cases["malignant"][:10]:
        assert c.image.dtype == np.uint8 and c.mask.dtype == np.bool_ and c.image.shape == c.mask.shape
        assert ndimage.label(c.mask)[1] == 1
        y0, x0, y1, x1 = c.meta["bbox"]
        assert (y0, x0) == tuple(np.argwhere(c.mask).min(0)) and (y1 - 1, x1 - 1) == tuple(np.argwhere(c.mask).max(0))
        assert 0 < y0 and 0 < x0 and y1 < c.mask.shape[0] and x1 < c.mask.shape[1]
        assert c.meta["area_frac"] == pytest.approx(c.mask.mean(), abs=1e-6)


def test_mask_matches_the_visible_lesion(cases):
    "Where the lesion is clearly hypoechoic, the image is darker inside the mask than in a ring around it."
    diffs = []
    for c in cases["benign"] + cases["malignant"]:
        if c.meta["contrast_db"] > -8: continue
        ring = ndimage.binary_dilation(c.mask, iterations=15) & ~ndimage.binary_dilation(c.mask, iterations=5)
        diffs.append(c.image[c.mask].mean() - c.image[ring].mean())
    assert len(diffs) >= 20
    assert np.mean(np.array(diffs) < 0) > 0.9, np.round(diffs, 1)


def test_image_sizes_vary(cases):
    sizes = {c.image.shape for lab in CLASSES for c in cases[lab]}
    assert len(sizes) > 20
    hs, ws = zip(*sizes)
    p = SynthParams()
    assert p.height[0] <= min(hs) and max(hs) <= p.height[1] and p.width[0] <= min(ws) and max(ws) <= p.width[1]


def test_lesion_area_spread(cases):
    areas = np.array([c.mask.mean() for lab in CLASSES for c in cases[lab]])
    assert 0.02 < areas.mean() < 0.12, areas.mean()
    assert areas.std() > 0.02 and areas.min() < 0.025 and areas.max() > 0.15


def test_posterior_features(cases):
    "Malignant lesions shadow (darker below than beside), benign ones enhance, on average and per class."
    pc = {lab: np.array([posterior_contrast(c.image, c.mask) for c in cases[lab]]) for lab in CLASSES}
    for lab in CLASSES: assert np.isfinite(pc[lab]).sum() >= 0.8 * N_PER_CLASS
    assert np.nanmean(pc["malignant"]) < -5, np.nanmean(pc["malignant"])
    assert np.nanmean(pc["benign"]) > 5, np.nanmean(pc["benign"])
    assert np.nanmean(pc["malignant"] < 0) > np.nanmean(pc["benign"] < 0) + 0.3


def test_posterior_contrast_follows_the_drawn_feature(cases):
    by = {}
    for lab in CLASSES:
        for c in cases[lab]: by.setdefault(c.meta["posterior"], []).append(posterior_contrast(c.image, c.mask))
    assert np.nanmean(by["shadowing"]) < np.nanmean(by["none"]) < np.nanmean(by["enhancement"])


def test_shape_features(cases):
    "Malignant lesions are more often taller than wide and less solid (irregular, spiculated) than benign ones."
    st = {lab: [shape_stats(c.mask) for c in cases[lab]] for lab in CLASSES}
    taller = {lab: np.mean([s["depth_width"] > 1 for s in st[lab]]) for lab in CLASSES}
    solid = {lab: np.mean([s["solidity"] for s in st[lab]]) for lab in CLASSES}
    assert taller["malignant"] > taller["benign"] + 0.2, taller
    assert solid["malignant"] < solid["benign"] - 0.04, solid
    assert solid["benign"] > 0.93


def test_difficulty_changes_the_images():
    easy, hard = SynthParams(difficulty=0.0), SynthParams(difficulty=1.0)
    blur = lambda p: np.mean([synth_case(np.random.SeedSequence(5, spawn_key=(i,)), "malignant", p).meta["margin_blur_px"]
                              for i in range(8)])
    assert blur(hard) > 1.5 * blur(easy)


def test_bad_arguments():
    with pytest.raises(ValueError, match="label"): synth_case(0, "normal")
    with pytest.raises(ValueError, match="seed"): synth_case(-3)
    with pytest.raises(TypeError, match="seed"): synth_case("0")
    with pytest.raises(TypeError, match="params"): synth_case(0, params={"difficulty": 1})
    with pytest.raises(ValueError, match="malignant_frac"): SynthParams(malignant_frac=1.5)
    with pytest.raises(ValueError, match="dynamic_range_db"): SynthParams(dynamic_range_db=(10, 20))
    with pytest.raises(ValueError, match="width"): SynthParams(width=(800, 500))
    with pytest.raises(ValueError, match="difficulty"): SynthParams(difficulty=True)


# ---------------------------------------------------------------- labels
def test_case_labels_balance_and_independence_of_n():
    labs = case_labels(163, seed=3)
    assert (labs.count("benign"), labs.count("malignant")) == (109, 54)
    assert case_labels(50, seed=3) == labs[:50] and case_labels(500, seed=3)[:163] == labs
    assert case_labels(163, seed=4) != labs
    assert case_labels(100, malignant_frac=0.0) == ["benign"] * 100


# ---------------------------------------------------------------- writing a set
def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_layout_and_labels(tmp_path):
    out = write_synth(tmp_path / "synth", n=4, seed=2)
    assert out == tmp_path / "synth"
    names = [f"{i:06d}.png" for i in range(1, 5)]
    assert sorted(p.name for p in (out / "original").iterdir()) == names
    assert sorted(p.name for p in (out / "GT").iterdir()) == names
    lines = (out / "labels.csv").read_text().splitlines()
    assert lines[0] == "image,type"
    assert lines[1:] == [f"{i:06d},{lab}" for i, lab in enumerate(case_labels(4, seed=2), 1)]
    for name in names:
        img, gt = Image.open(out / "original" / name), Image.open(out / "GT" / name)
        assert img.mode == "L" and gt.mode == "L" and img.size == gt.size
        assert set(np.unique(np.array(gt))) == {0, 255}
    rec = json.loads((out / "synth.json").read_text())
    assert rec == read_synth_record(out)
    assert (rec["generator"], rec["version"], rec["n"], rec["seed"]) == ("kdbus.synth", SYNTH_VERSION, 4, 2)
    assert SynthParams(**rec["params"]) == SynthParams()
    assert sum(rec["counts"].values()) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]  # no temporary folder left


def test_written_set_matches_synth_case(tmp_path):
    out = write_synth(tmp_path / "s", n=2, seed=9)
    c = synth_case(case_seed(9, 1), case_labels(2, seed=9)[1])
    assert np.array_equal(np.array(Image.open(out / "original/000002.png")), c.image)
    assert np.array_equal(np.array(Image.open(out / "GT/000002.png")) > 0, c.mask)


def test_byte_identical_for_same_seed_and_independent_of_n(tmp_path):
    a = _files(write_synth(tmp_path / "a", n=3, seed=1))
    b = _files(write_synth(tmp_path / "b", n=3, seed=1))
    assert a == b
    c = _files(write_synth(tmp_path / "c", n=2, seed=1))
    assert all(c[k] == a[k] for k in c if k.endswith(".png")) and len([k for k in c if k.endswith(".png")]) == 4
    d = _files(write_synth(tmp_path / "d", n=3, seed=2))
    assert all(d[k] != a[k] for k in a if k.startswith("original"))


def test_replaces_a_previous_set_and_an_empty_folder(tmp_path):
    out = tmp_path / "s"
    write_synth(out, n=3, seed=0)
    write_synth(out, n=2, seed=1)
    assert read_synth_record(out)["n"] == 2 and len(list((out / "original").iterdir())) == 2
    (tmp_path / "empty").mkdir()
    write_synth(tmp_path / "empty", n=1)
    assert read_synth_record(tmp_path / "empty")["n"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "s"]


def test_existing_identical_set_is_kept_unless_forced(tmp_path):
    out = write_synth(tmp_path / "s", n=2, seed=0)
    f = out / "original" / "000001.png"
    os.utime(f, (1, 1))
    write_synth(out, n=2, seed=0)
    assert f.stat().st_mtime == 1  # nothing rewritten
    write_synth(out, n=2, seed=0, force=True)
    assert (out / "original" / "000001.png").stat().st_mtime > 1


def test_refuses_foreign_folders_before_any_work(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(synth, "synth_case", lambda *a, **k: calls.append(1))
    mine = tmp_path / "mine"; mine.mkdir(); (mine / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="refusing to overwrite.*mine"): write_synth(mine, n=2)
    assert (mine / "thesis.tex").read_text() == "precious" and len(list(mine.iterdir())) == 1
    (mine / "synth.json").write_text("{not json")  # a broken record is not a synthetic set
    with pytest.raises(FileExistsError, match="refusing"): write_synth(mine, n=2)
    (mine / "synth.json").write_text(json.dumps({"generator": "someone else"}))
    with pytest.raises(FileExistsError, match="refusing"): write_synth(mine, n=2)
    afile = tmp_path / "afile"; afile.write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"): write_synth(afile, n=2)
    assert calls == [] and sorted(p.name for p in tmp_path.iterdir()) == ["afile", "mine"]


@pytest.mark.parametrize("kw,match", [(dict(n=0), "n must be"), (dict(n=-5), "n must be"), (dict(n=2.0), "n must be"),
                                      (dict(n=True), "n must be"), (dict(seed=-1), "seed must be"),
                                      (dict(seed="1"), "seed must be")])
def test_write_synth_bad_arguments(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match): write_synth(tmp_path / "s", **kw)
    assert not (tmp_path / "s").exists()


def test_write_synth_bad_params(tmp_path):
    with pytest.raises(TypeError, match="SynthParams"): write_synth(tmp_path / "s", n=1, params=dict(difficulty=0.5))


def _failing_after(k):
    real, count = synth.synth_case, [0]
    def fake(*a, **kw):
        count[0] += 1
        if count[0] > k: raise KeyboardInterrupt("simulated interruption")
        return real(*a, **kw)
    return fake


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "synth_case", _failing_after(2))
    with pytest.raises(KeyboardInterrupt): write_synth(tmp_path / "s", n=4)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_rewrite_keeps_the_previous_set(tmp_path, monkeypatch):
    out = write_synth(tmp_path / "s", n=2, seed=0)
    before = _files(out)
    monkeypatch.setattr(synth, "synth_case", _failing_after(1))
    with pytest.raises(KeyboardInterrupt): write_synth(out, n=3, seed=1)
    assert _files(out) == before and [p.name for p in tmp_path.iterdir()] == ["s"]


def _racing_move(monkeypatch, **other):
    "Replace `_move_into_place` by one that lets 'another process' write `other` into the target first."
    real = synth._move_into_place
    def move(tmp, out):
        monkeypatch.setattr(synth, "_move_into_place", real)
        write_synth(out, **other)
        os.replace(tmp, out)  # what the real move does when the target was absent at its check
    monkeypatch.setattr(synth, "_move_into_place", move)


def test_concurrent_writer_of_the_same_set_is_fine(tmp_path, monkeypatch):
    _racing_move(monkeypatch, n=2, seed=0)
    out = write_synth(tmp_path / "s", n=2, seed=0)
    assert read_synth_record(out)["n"] == 2 and [p.name for p in tmp_path.iterdir()] == ["s"]


def test_concurrent_writer_of_another_set_is_reported(tmp_path, monkeypatch):
    _racing_move(monkeypatch, n=1, seed=4)
    with pytest.raises(FileExistsError, match="someone else"): write_synth(tmp_path / "s", n=2, seed=0)
    assert read_synth_record(tmp_path / "s")["seed"] == 4 and [p.name for p in tmp_path.iterdir()] == ["s"]
