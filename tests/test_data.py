"""kdbus.data, kdbus.duplicates and kdbus.folds on files written here: specs, layouts, every kind of bad file, duplicates, folds, loading, and the real BUSI subsets."""
import hashlib, io, json, sys, types, warnings
from pathlib import Path

import cv2

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import kdbus
from kdbus.data import (Case, DataError, DataSpec, DataWarning, Problem, find_problems, list_cases, load_data, parse_spec,
                        read_image, read_labels, read_mask, resolve_spec, same_data, scan_cases)
from kdbus.duplicates import (DUPLICATE_THRESHOLD, VIEW_CORRELATION, check_data, duplicate_groups, duplicate_pairs, fingerprint,
                              fold_groups, format_summary, group_duplicates, group_ids, likely_views, read_fingerprint,
                              read_fingerprints, scored_pairs, similarity, view_pairs)
from kdbus.folds import make_folds

ROOT = Path(__file__).resolve().parents[1]
BUSI_SAMPLE = ROOT.parent / 'shared/data/busi-sample'
BUSI_163 = ROOT.parent / 'shared/data/busi-163'

# ---------------------------------------------------------------- helpers
H, W = 30, 40
YY, XX = np.mgrid[:H, :W]
DISC = (((YY - 15) / 8) ** 2 + ((XX - 20) / 12) ** 2 <= 1).astype(np.uint8)
GREY = np.linspace(0, 255, H * W).reshape(H, W).astype(np.uint8)

def scan(i, h=H, w=W):
    "A distinct h x w grey image for each i: a ramp with noise (identical or shifted images would be duplicates)."
    ramp = cv2.resize(GREY, (w, h), interpolation=cv2.INTER_LINEAR).astype(int)
    return np.clip(ramp + np.random.default_rng(i).integers(-60, 61, (h, w)), 0, 255).astype(np.uint8)

def png(path, a, mode=None):
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(a, mode) if mode else Image.fromarray(a)).save(path)
    return path

def truncate(path):
    b = Path(path).read_bytes(); Path(path).write_bytes(b[:len(b) // 2])

def udiat(root, n=4, labels='csv'):
    "A UDIAT-layout set of n images, alternating benign/malignant."
    root = Path(root)
    for i in range(1, n + 1):
        png(root / 'original' / f'{i:06d}.png', scan(i))
        png(root / 'GT' / f'{i:06d}.png', np.roll(DISC, i, axis=1) * 255)
    types_ = ['benign' if i % 2 else 'malignant' for i in range(1, n + 1)]
    if labels == 'csv':
        pd.DataFrame({'image': [f'{i:06d}' for i in range(1, n + 1)], 'type': types_}).to_csv(root / 'labels.csv', index=False)
    return root

def busi(root, normal=True):
    "A BUSI-like tree: benign (1), benign (2) with an extra mask, malignant (1), [normal (1)]."
    root = Path(root)
    for seed, (cls, k) in enumerate([('benign', 1), ('benign', 2), ('malignant', 1)] + ([('normal', 1)] if normal else [])):
        png(root / cls / f'{cls} ({k}).png', scan(100 + seed))
        png(root / cls / f'{cls} ({k})_mask.png', (DISC if cls != 'normal' else 0 * DISC) * 255)
    extra = np.zeros_like(DISC); extra[2:6, 2:6] = 1
    png(root / 'benign' / 'benign (2)_mask_1.png', extra * 255)
    return root

def names(problems): return sorted(p.file.name for p in problems)

# ---------------------------------------------------------------- specs
def test_spec_round_trip_and_fields():
    for s in ['synth', 'synth:n=60,seed=1', 'udiat:/d/U', 'busi:/d/B', 'busi:/d/B:normal',
              'pairs:/a:/b', 'pairs:/a:/b:suffix=_mask', 'busi:/d/B:normal:views', 'synth:views', 'udiat:/d/U:views:splits=/s.csv']:
        assert str(parse_spec(s)) == s
    assert parse_spec('SYNTH:seed=2') == DataSpec('synth', n=163, seed=2)
    assert parse_spec('busi:~/B').root == Path.home() / 'B'
    assert parse_spec(parse_spec('busi:/B'), include_normal=True).include_normal

@pytest.mark.parametrize('spec, words', [
    ('kaggle:/x', ['unknown data set kind', "'kaggle'", 'synth', 'udiat', 'busi', 'pairs']),
    ('', ['non-empty']),
    ('udiat', ['needs 1']),
    ('pairs:/a', ['needs 2']),
    ('synth:n=lots', ["'n'", 'integer']),
    ('synth:colour=1', ['unknown option', 'n, seed']),
    ('busi:/b:normal=perhaps', ['flag']),
    ('synth:n=0', ['n >= 1']),
])
def test_spec_errors_say_what_was_expected(spec, words):
    with pytest.raises(DataError) as e: parse_spec(spec)
    for w in words: assert w in str(e.value), (w, str(e.value))

def test_include_normal_only_for_busi():
    with pytest.raises(DataError, match='busi'): parse_spec('udiat:/x', include_normal=True)

# ---------------------------------------------------------------- synth: cached generation (with a stand-in generator)
@pytest.fixture
def fake_synth(monkeypatch, tmp_path):
    "Replace kdbus.synth by a stand-in that writes a small UDIAT-layout set and counts its calls."
    calls = []
    def write_synth(out_dir, n=163, seed=0):
        calls.append((Path(out_dir), n, seed))
        udiat(out_dir, n=n)
        return Path(out_dir)
    fake = types.SimpleNamespace(write_synth=write_synth, SYNTH_VERSION='7')
    monkeypatch.setitem(sys.modules, 'kdbus.synth', fake)
    monkeypatch.setattr(kdbus, 'synth', fake, raising=False)
    monkeypatch.setenv('KDBUS_CACHE', str(tmp_path / 'cache'))
    return calls

def test_synth_generated_once_into_the_cache(fake_synth, tmp_path):
    r = resolve_spec('synth:n=6,seed=3')
    assert r.kind == 'udiat' and r.root == tmp_path / 'cache' / 'synth-v7-n6-seed3'
    cases = list_cases('synth:n=6,seed=3')
    assert [c.id for c in cases] == [f'{i:06d}' for i in range(1, 7)]
    assert [c.label for c in cases][:2] == ['benign', 'malignant']
    load_data('synth:n=6,seed=3', size=16)
    assert len(fake_synth) == 1                       # generated once, then read from the cache
    resolve_spec('synth:n=6,seed=4')
    assert len(fake_synth) == 2                       # another seed is another set

def test_synth_cache_defaults_to_home(fake_synth, monkeypatch, tmp_path):
    monkeypatch.delenv('KDBUS_CACHE')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert resolve_spec('synth:n=2').root == tmp_path / 'home' / '.cache' / 'kdbus' / 'synth-v7-n2-seed0'

def test_real_synth_generator_loads_cleanly(monkeypatch, tmp_path):
    synth = pytest.importorskip('kdbus.synth', reason='kdbus.synth (nbs/00_synth.ipynb) not exported yet')
    assert hasattr(synth, 'write_synth')
    monkeypatch.setenv('KDBUS_CACHE', str(tmp_path))
    summary, problems = check_data('synth:n=8,seed=1')
    assert problems == [] and summary.n_cases == 8
    assert set(summary.classes) <= {'benign', 'malignant'}
    d = load_data('synth:n=8,seed=1', size=32)
    assert d.images.shape == (8, 32, 32, 3) and d.masks.any()

# ---------------------------------------------------------------- UDIAT layout and labels
def test_udiat_labels_from_xlsx(tmp_path):
    root = udiat(tmp_path / 'U', n=3, labels=None)
    pd.DataFrame([['Breast US, UDIAT', None, None], ['IMAGE', 'Histology', 'type'],
                  [1, 'FA', 'Benign'], ['000002.png', 'IDC', 'MALIGNANT'], ['3', 'x', 'B']]
                ).to_excel(root / 'DatasetB.xlsx', header=False, index=False)
    assert [(c.id, c.label) for c in list_cases(f'udiat:{root}')] == \
        [('000001', 'benign'), ('000002', 'malignant'), ('000003', 'benign')]

def test_udiat_without_labels_is_unlabelled(tmp_path):
    root = udiat(tmp_path / 'U', n=2, labels=None)
    assert [c.label for c in list_cases(f'udiat:{root}')] == [None, None]

def test_label_missing_for_an_image_is_a_problem(tmp_path):
    root = udiat(tmp_path / 'U', n=3)
    pd.read_csv(root / 'labels.csv', dtype=str).iloc[:2].to_csv(root / 'labels.csv', index=False)
    probs = find_problems(f'udiat:{root}')
    assert names(probs) == ['000003.png'] and 'no label' in probs[0].message

def test_label_table_without_columns(tmp_path):
    pd.DataFrame({'x': [1], 'y': [2]}).to_csv(tmp_path / 'labels.csv', index=False)
    with pytest.raises(DataError, match="labels.csv.*'Image' and 'Type'"): read_labels(tmp_path / 'labels.csv')

def test_missing_folders(tmp_path):
    with pytest.raises(DataError, match='nowhere: data set folder not found'): list_cases(f'udiat:{tmp_path}/nowhere')
    with pytest.raises(DataError, match='nowhere'): check_data(f'udiat:{tmp_path}/nowhere')  # the CLI's exit code 2
    assert 'not found' in find_problems(f'udiat:{tmp_path}/nowhere')[0].message
    root = udiat(tmp_path / 'U', n=2)
    import shutil; shutil.rmtree(root / 'GT')
    probs = find_problems(f'udiat:{root}')
    assert any(p.file == root / 'GT' and 'folder missing' in p.message for p in probs)
    with pytest.raises(DataError, match='GT: folder missing'): load_data(f'udiat:{root}')

def test_empty_set(tmp_path):
    (tmp_path / 'E' / 'original').mkdir(parents=True); (tmp_path / 'E' / 'GT').mkdir()
    probs = find_problems(f'udiat:{tmp_path}/E')
    assert len(probs) == 1 and 'empty data set' in probs[0].message
    with pytest.raises(DataError, match='empty data set'): list_cases(f'udiat:{tmp_path}/E')

def test_cases_sorted_naturally_and_hidden_files_ignored(tmp_path):
    for k in [10, 2, 1]:
        png(tmp_path / 'im' / f'case {k}.png', GREY); png(tmp_path / 'gt' / f'case {k}.png', DISC)
    (tmp_path / 'im' / '.DS_Store').write_bytes(b'\0'); (tmp_path / 'gt' / '._case 1.png').write_bytes(b'\0')
    (tmp_path / 'im' / 'notes.txt').write_text('x')
    assert [c.id for c in list_cases(f'pairs:{tmp_path}/im:{tmp_path}/gt')] == ['case 1', 'case 2', 'case 10']

# ---------------------------------------------------------------- bad files, one at a time
@pytest.fixture
def u(tmp_path): return udiat(tmp_path / 'U', n=4)

def only_problem(root):
    probs = find_problems(f'udiat:{root}')
    assert len(probs) == 1, [str(p) for p in probs]
    with pytest.raises(DataError) as e: load_data(f'udiat:{root}', size=16)
    assert str(probs[0].file) in str(e.value)      # the strict loader raises the same problem
    return probs[0]

def test_truncated_image(u):
    truncate(u / 'original' / '000002.png')
    p = only_problem(u)
    assert p.file.name == '000002.png' and 'truncated' in p.message

def test_unreadable_mask(u):
    (u / 'GT' / '000003.png').write_bytes(b'GIF89a nonsense')
    p = only_problem(u)
    assert p.file == u / 'GT' / '000003.png' and 'not a readable image' in p.message

def test_mask_without_image(u):
    png(u / 'GT' / '000009.png', DISC * 255)
    p = only_problem(u)
    assert p.file.name == '000009.png' and 'mask without image' in p.message

def test_image_without_mask(u):
    (u / 'GT' / '000004.png').unlink()
    p = only_problem(u)
    assert p.file == u / 'original' / '000004.png' and 'image without mask' in p.message

def test_mask_size_differs(u):
    png(u / 'GT' / '000001.png', np.zeros((W, H), np.uint8))          # transposed
    p = only_problem(u)
    assert p.file == u / 'GT' / '000001.png' and 'same size' in p.message and '30 x 40' in p.message

def test_ambiguous_label_map_mask(u):
    png(u / 'GT' / '000001.png', DISC + (XX > 30).astype(np.uint8))   # {0, 1, 2}
    p = only_problem(u)
    assert 'ambiguous mask values {0, 1, 2}' in p.message

def test_float_image_is_refused(u):
    Image.fromarray(GREY.astype(np.float32)).save(u / 'original' / '000001.tif'); (u / 'original' / '000001.png').unlink()
    p = only_problem(u)
    assert '32-bit float' in p.message

def test_duplicate_ids(u):
    Image.fromarray(GREY).save(u / 'original' / '000001.jpg')
    p = only_problem(u)
    assert 'duplicate image id' in p.message

def test_all_problems_at_once(u):
    truncate(u / 'original' / '000001.png')
    (u / 'GT' / '000002.png').unlink()
    png(u / 'GT' / '000003.png', np.zeros((5, 5), np.uint8))
    png(u / 'GT' / '000099.png', DISC)
    assert names(find_problems(f'udiat:{u}')) == ['000001.png', '000002.png', '000003.png', '000099.png']
    summary, probs = check_data(f'udiat:{u}')
    assert summary.n_problems == len(probs) == 4
    text = format_summary(summary, probs, max_listed=2)
    assert 'problems  4' in text and '... and 2 more' in text

# ---------------------------------------------------------------- documented conversions
def test_noisy_mask_binarised_with_warning(u):
    rng = np.random.default_rng(0)
    noisy = np.clip(DISC * 255 + rng.integers(-40, 41, DISC.shape), 0, 255).astype(np.uint8)
    png(u / 'GT' / '000001.png', noisy)
    with pytest.warns(DataWarning, match='binarised at > 127'): m = read_mask(u / 'GT' / '000001.png')
    assert (m == DISC).all()
    summary, probs = check_data(f'udiat:{u}')
    assert probs == [] and len(summary.warnings) == 1           # a warning, not a problem
    with pytest.warns(DataWarning): load_data(f'udiat:{u}', size=16)

def test_two_level_masks(tmp_path):
    for levels in [(0, 1), (0, 255), (0, 38)]:
        assert (read_mask(png(tmp_path / f'm{levels[1]}.png', (DISC * levels[1]).astype(np.uint8))) == DISC).all()
    assert read_mask(png(tmp_path / 'zero.png', 0 * DISC)).sum() == 0

def test_16_bit_images(tmp_path):
    full = GREY.astype(np.uint16) * 257
    p = png(tmp_path / 'full.png', full)
    assert Image.open(p).mode.startswith('I')
    with pytest.warns(DataWarning, match='16-bit'): a = read_image(p)
    assert a.dtype == np.uint8 and (a[..., 0] == GREY).all()
    small = png(tmp_path / 'small.png', GREY.astype(np.uint16))          # 8-bit data in a 16-bit file
    with warnings.catch_warnings(): warnings.simplefilter('error'); a = read_image(small)
    assert (a[..., 0] == GREY).all()
    m = png(tmp_path / 'm16.png', DISC.astype(np.uint16) * 65535)
    with pytest.warns(DataWarning): assert (read_mask(m) == DISC).all()

def test_palette_and_alpha(tmp_path):
    pal = tmp_path / 'pal.png'; Image.fromarray(GREY).convert('P').save(pal)
    assert Image.open(pal).mode == 'P'
    assert np.abs(read_image(pal)[..., 0].astype(int) - GREY).max() <= 8     # palette quantisation only
    # a VOC-style label mask: index 1 drawn in dark red
    voc = Image.fromarray(DISC, 'L').convert('P'); voc.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762); voc.save(tmp_path / 'voc.png')
    assert Image.open(tmp_path / 'voc.png').mode == 'P'
    assert (read_mask(tmp_path / 'voc.png') == DISC).all()
    rgba = np.dstack([GREY] * 3 + [np.full_like(GREY, 255)])
    assert (read_image(png(tmp_path / 'rgba.png', rgba)) == np.dstack([GREY] * 3)).all()
    assert (read_mask(png(tmp_path / 'red.png', np.dstack([DISC * 200, 0 * DISC, 0 * DISC]))) == DISC).all()
    assert (read_mask(png(tmp_path / 'bit.png', DISC.astype(bool))) == DISC).all()   # 1-bit

# ---------------------------------------------------------------- BUSI layout
def test_busi_tree_merges_extra_masks_and_excludes_normal(tmp_path):
    root = busi(tmp_path / 'B')
    cases = list_cases(f'busi:{root}')
    assert [(c.id, c.label, [m.name for m in c.masks]) for c in cases] == [
        ('benign (1)', 'benign', ['benign (1)_mask.png']),
        ('benign (2)', 'benign', ['benign (2)_mask.png', 'benign (2)_mask_1.png']),
        ('malignant (1)', 'malignant', ['malignant (1)_mask.png'])]
    d = load_data(cases, size=W)       # no shrinking along the width; compare at a known pixel
    extra_only = load_data([Case('x', cases[1].image, cases[1].masks[1:], 'benign')], size=W).masks[0]
    assert extra_only.sum() > 0 and (d.masks[1] >= extra_only).all() and (d.masks[1] >= d.masks[0]).all()
    assert d.masks[1].sum() > d.masks[0].sum()

def test_busi_normal_on_request(tmp_path):
    root = busi(tmp_path / 'B')
    for spec, kw in [(f'busi:{root}:normal', {}), (f'busi:{root}', {'include_normal': True})]:
        cases = list_cases(spec, **kw)
        assert [c.label for c in cases].count('normal') == 1 and len(cases) == 4
    summary, probs = check_data(f'busi:{root}', include_normal=True)
    assert probs == [] and summary.warnings == [] and summary.classes['normal'] == 1   # empty masks expected there
    assert len(load_data(f'busi:{root}', size=16, include_normal=True)) == 4

def test_busi_empty_lesion_mask_warns(tmp_path):
    root = busi(tmp_path / 'B', normal=False)
    png(root / 'malignant' / 'malignant (1)_mask.png', 0 * DISC)
    summary, probs = check_data(f'busi:{root}')
    assert probs == [] and len(summary.warnings) == 1 and 'empty' in summary.warnings[0].message

def test_busi_wrong_root_hints_the_subfolder(tmp_path):
    busi(tmp_path / 'Dataset_BUSI_with_GT')
    probs = find_problems(f'busi:{tmp_path}')
    assert any('Dataset_BUSI_with_GT' in p.message for p in probs)

def test_busi_mask_without_image(tmp_path):
    root = busi(tmp_path / 'B', normal=False)
    png(root / 'benign' / 'benign (7)_mask.png', DISC)
    assert names(find_problems(f'busi:{root}')) == ['benign (7)_mask.png']

# ---------------------------------------------------------------- generic pairs
def test_pairs_suffix_detected_given_and_same_folder(tmp_path):
    for k in (1, 2):
        png(tmp_path / 'im' / f'{k}.png', GREY); png(tmp_path / 'gt' / f'{k}_mask.png', DISC * 255)
    assert [c.id for c in list_cases(f'pairs:{tmp_path}/im:{tmp_path}/gt')] == ['1', '2']
    assert [c.id for c in list_cases(f'pairs:{tmp_path}/im:{tmp_path}/gt:suffix=_mask')] == ['1', '2']
    assert len(find_problems(f'pairs:{tmp_path}/im:{tmp_path}/gt:suffix=')) == 5   # 2 orphan images, 2 orphan masks, empty
    png(tmp_path / 'flat' / '1.png', GREY); png(tmp_path / 'flat' / '1_mask.png', DISC)   # one folder, suffix detected
    assert [(c.id, c.masks[0].name) for c in list_cases(f'pairs:{tmp_path}/flat:{tmp_path}/flat')] == [('1', '1_mask.png')]
    png(tmp_path / 'same' / 'a.png', GREY)
    with pytest.raises(DataError, match='suffix'): scan_cases(f'pairs:{tmp_path}/same:{tmp_path}/same:suffix=')

def test_pairs_jpeg_masks(tmp_path):
    png(tmp_path / 'im' / 'a.png', GREY)
    (tmp_path / 'gt').mkdir()
    Image.fromarray(DISC * 255).save(tmp_path / 'gt' / 'a.jpg', quality=70)      # JPEG noise around the edge
    with pytest.warns(DataWarning):
        d = load_data(f'pairs:{tmp_path}/im:{tmp_path}/gt', size=H)
    assert abs(d.masks.mean() - DISC.mean()) < 0.03                        # the lesion survives the noise

# ---------------------------------------------------------------- duplicates
def smooth_scan(seed, h=120, w=160):
    "A made-up grey 'scan': smooth random texture over a top-to-bottom fade."
    t = cv2.GaussianBlur(np.random.default_rng(seed).normal(size=(h, w)).astype(np.float32), (0, 0), 2)
    t = (t - t.min()) / (t.max() - t.min())
    return (255 * (0.6 * t + 0.4 * np.linspace(1, 0, h)[:, None])).astype(np.uint8)

def jpeg(a, quality=50):
    buf = io.BytesIO(); Image.fromarray(a).save(buf, 'JPEG', quality=quality)
    return np.asarray(Image.open(buf))

COPIES = {'jpeg': lambda a: jpeg(a),
          'resized': lambda a: cv2.resize(a, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA),
          'enlarged': lambda a: cv2.resize(a, None, fx=1.7, fy=1.7, interpolation=cv2.INTER_LINEAR),
          'stretched': lambda a: cv2.resize(a, (int(a.shape[1] * 0.8), a.shape[0]), interpolation=cv2.INTER_AREA),
          'cropped right': lambda a: a[:, : int(a.shape[1] * 0.85)],
          'cropped top left': lambda a: a[a.shape[0] // 10:, a.shape[1] // 10:],
          'cropped all round': lambda a: a[a.shape[0] // 10: -(a.shape[0] // 10), a.shape[1] // 10: -(a.shape[1] // 10)],
          'shifted': lambda a: np.roll(a, (6, 6), axis=(0, 1)),
          'brighter': lambda a: np.clip(a * 1.3 + 10, 0, 255).astype(np.uint8),
          'darker': lambda a: (a * 0.6).astype(np.uint8),
          'rgb': lambda a: np.dstack([a] * 3),
          'all at once': lambda a: np.clip(jpeg(cv2.resize(a[:, 16:], None, fx=0.8, fy=0.8, interpolation=cv2.INTER_AREA), 60) * 1.2, 0, 255).astype(np.uint8)}

@pytest.mark.parametrize('name', list(COPIES))
def test_copies_of_one_scan_are_duplicates(name):
    for seed in range(3):
        a = smooth_scan(seed)
        assert similarity(fingerprint(a), fingerprint(np.ascontiguousarray(COPIES[name](a)))) >= DUPLICATE_THRESHOLD, (name, seed)

def test_different_scans_are_not_duplicates():
    prints = [fingerprint(smooth_scan(s)) for s in range(8)] + [fingerprint(scan(i)) for i in range(8)]
    assert max(s for *_, s in scored_pairs(prints)) < 0.6
    flat = fingerprint(np.full((40, 50), 100, np.uint8))
    assert similarity(flat, fingerprint(np.full((40, 50), 100, np.uint8))) == 0.0      # flat images match nothing ...
    assert similarity(flat, prints[0]) == 0.0

def test_identical_files_score_one_and_are_always_paired(tmp_path):
    for k in range(4): png(tmp_path / f'{k}.png', np.full((40, 50), 100, np.uint8))  # ... unless they are the same file
    for k in range(4, 16): png(tmp_path / f'{k}.png', scan(k))
    prints = [read_fingerprint(tmp_path / f'{k}.png') for k in range(16)]
    assert prints[0].sha256 == hashlib.sha256((tmp_path / '0.png').read_bytes()).hexdigest()
    pairs = scored_pairs(prints, candidates=1)       # found through the file hash, not the (flat) thumbnails
    assert [(i, j, s) for i, j, s in pairs if s >= DUPLICATE_THRESHOLD] == [(i, j, 1.0) for i in range(4) for j in range(i + 1, 4)]
    assert all(type(i) is int and type(j) is int for i, j, _ in pairs)
    assert scored_pairs(prints[:1]) == []

def test_group_ids_are_connected_components_named_by_first_member():
    assert group_ids(6, [(4, 2, 0.9), (5, 4, 0.95), (1, 3, 0.99)]) == [0, 1, 2, 1, 2, 2]
    assert group_ids(3, []) == [0, 1, 2]
    assert group_ids(4, [(3, 2), (2, 1), (1, 0)]) == [0, 0, 0, 0]

def busi_with_copies(root):
    "BUSI tree of 6 cases: benign (1) filed again as malignant (2) (same file) and as benign (3) (shifted JPEG); benign (4) a resized malignant (1)."
    root = Path(root)
    for i, (cls, k) in enumerate([('benign', 1), ('benign', 2), ('malignant', 1)]): png(root / cls / f'{cls} ({k}).png', smooth_scan(i))
    (root / 'malignant' / 'malignant (2).png').write_bytes((root / 'benign' / 'benign (1).png').read_bytes())
    Image.fromarray(jpeg(np.roll(smooth_scan(0), (3, 5), axis=(0, 1)), 80)).save(root / 'benign' / 'benign (3).png')
    png(root / 'benign' / 'benign (4).png', cv2.resize(smooth_scan(2), None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA))
    for image in root.glob('*/*).png'):
        png(image.with_name(f'{image.stem}_mask.png'), cv2.resize(DISC, Image.open(image).size, interpolation=cv2.INTER_NEAREST) * 255)
    return root

def test_duplicates_of_a_constructed_set(tmp_path):
    root = busi_with_copies(tmp_path / 'B')
    cases = list_cases(f'busi:{root}')
    assert [c.id for c in cases] == ['benign (1)', 'benign (2)', 'benign (3)', 'benign (4)', 'malignant (1)', 'malignant (2)']
    pairs = duplicate_pairs(f'busi:{root}')
    assert sorted((i, j) for i, j, _ in pairs) == [(0, 2), (0, 5), (2, 5), (3, 4)] and pairs[0] == (0, 5, 1.0)   # identical files first
    assert all(s >= DUPLICATE_THRESHOLD for *_, s in pairs)
    assert duplicate_groups(cases) == duplicate_groups(f'busi:{root}') == [0, 1, 0, 3, 3, 0]
    groups = group_duplicates(cases, pairs)
    assert [(g.ids, g.labels, g.mixed) for g in groups] == [
        (('benign (1)', 'benign (3)', 'malignant (2)'), ('benign', 'benign', 'malignant'), True),
        (('benign (4)', 'malignant (1)'), ('benign', 'malignant'), True)]
    assert groups[0].score == min(s for i, j, s in pairs if i in (0, 2, 5))
    assert 'benign (1), benign (3), malignant (2) (benign and malignant; similarity >= 0.9' in str(groups[0])
    assert duplicate_groups(cases, threshold=1.0) == [0, 1, 2, 3, 4, 0]          # only the identical files

def test_check_data_reports_groups_and_fails_across_classes(tmp_path):
    root = busi_with_copies(tmp_path / 'B')
    summary, problems = check_data(f'busi:{root}')
    assert len(problems) == 2 and summary.n_problems == 2 and [len(g.ids) for g in summary.duplicates] == [3, 2]
    assert problems[0].file == root / 'benign' / 'benign (1).png'
    for words in ['one scan filed under benign and malignant', 'benign/benign (3).png', 'malignant/malignant (2).png', 'similarity >=']:
        assert words in problems[0].message, problems[0].message
    text = format_summary(summary, problems)
    assert 'duplicates 2 group(s) of 5 images, 2 across classes' in text and 'duplicates (copies of one scan):' in text
    assert '  benign (4), malignant (1) (benign and malignant; similarity >= ' in text
    for f in ['malignant (2).png', 'malignant (2)_mask.png', 'malignant (1).png', 'malignant (1)_mask.png']: (root / 'malignant' / f).unlink()
    summary, problems = check_data(f'busi:{root}')                            # one class: listed, not a problem
    assert problems == [] and [g.ids for g in summary.duplicates] == [('benign (1)', 'benign (3)')]
    assert 'duplicates 1 group(s) of 2 images, 0 across classes' in format_summary(summary, problems)
    assert check_data(f'busi:{root}', duplicate_threshold=None)[0].duplicates == []

def test_check_data_skips_unreadable_images_when_looking_for_duplicates(tmp_path):
    root = busi_with_copies(tmp_path / 'B')
    truncate(root / 'malignant' / 'malignant (2).png')
    summary, problems = check_data(f'busi:{root}')
    assert [p.file.name for p in problems if 'cannot decode' in p.message] == ['malignant (2).png']
    assert [g.ids for g in summary.duplicates] == [('benign (1)', 'benign (3)'), ('benign (4)', 'malignant (1)')]

@pytest.mark.parametrize('threshold', [0, -0.5, 1.5, '0.8'])
def test_duplicate_threshold_must_be_a_similarity(tmp_path, threshold):
    root = busi(tmp_path / 'B', normal=False)
    with pytest.raises(ValueError, match=r'threshold=.*0 < threshold <= 1'): duplicate_pairs(f'busi:{root}', threshold=threshold)
    with pytest.raises(ValueError, match='threshold'): check_data(f'busi:{root}', duplicate_threshold=threshold)

def test_duplicates_need_cases():
    with pytest.raises(DataError, match='non-empty list of Case'): duplicate_groups([])

def test_fold_groups_are_computed_once_per_spec(tmp_path, monkeypatch):
    root = busi_with_copies(tmp_path / 'B')
    assert fold_groups(f'busi:{root}') == [0, 1, 0, 3, 3, 0]
    import kdbus.duplicates
    monkeypatch.setattr(kdbus.duplicates, 'read_fingerprints', lambda *a, **k: pytest.fail('not cached'))
    assert fold_groups(parse_spec(f'busi:{root}')) == [0, 1, 0, 3, 3, 0]       # a spec string or its DataSpec: one entry

# ---------------------------------------------------------------- views of one lesion
def lesion_view(seed, h=120, w=160):
    "One made-up lesion seen again: the same large shapes (bright band, dark blob) each time, new speckle for each seed."
    yy, xx = np.mgrid[:h, :w]
    shapes = 0.8 * np.linspace(1, 0.2, h)[:, None] - 0.6 * np.exp(-((yy - h / 2) / 22) ** 2 - ((xx - w / 2) / 30) ** 2)
    a = shapes + 0.25 * cv2.GaussianBlur(np.random.default_rng(seed).normal(size=(h, w)).astype(np.float32), (0, 0), 1.5)
    return (255 * (a - a.min()) / (a.max() - a.min())).astype(np.uint8)

def busi_with_views(root):
    "The copies' tree (`busi_with_copies`) plus benign (5) and benign (6), two views of one lesion, and a JPEG copy of (6) as malignant (3)."
    root = busi_with_copies(root)
    for cls, k, a in [('benign', 5, lesion_view(1)), ('benign', 6, lesion_view(2)), ('malignant', 3, jpeg(lesion_view(2), 70))]:
        png(root / cls / f'{cls} ({k}).png', a)
        png(root / cls / f'{cls} ({k})_mask.png', cv2.resize(DISC, (160, 120), interpolation=cv2.INTER_NEAREST) * 255)
    return root

def test_views_of_one_lesion_are_likely_views_not_copies():
    a, b, c = fingerprint(lesion_view(1)), fingerprint(lesion_view(2)), fingerprint(smooth_scan(0, 120, 160))
    r = float(a.thumb @ b.thumb)
    assert r >= VIEW_CORRELATION and similarity(a, b) < 0.7                 # alike at a glance, not one image
    assert view_pairs([a, b, c]) == [(0, 1, pytest.approx(r), pytest.approx(similarity(a, b)))]
    assert view_pairs([a, fingerprint(jpeg(lesion_view(1), 60))]) == []     # a copy is a copy, not a view
    assert view_pairs([a, b], correlation=min(1.0, r + 0.01)) == [] and view_pairs([a]) == []
    assert view_pairs([a, b], [(0, 1, 0.9)]) == []                          # a given similarity is used: a copy there
    for bad in (0, 1.5, '0.95'):
        with pytest.raises(ValueError, match='0 < correlation <= 1'): view_pairs([a, b], correlation=bad)

def test_check_data_warns_of_views_and_the_spec_groups_them(tmp_path):
    root = busi_with_views(tmp_path / 'B')
    ids = [c.id for c in list_cases(f'busi:{root}')]
    assert [v.ids for v in likely_views(f'busi:{root}')] == [('benign (5)', 'benign (6)'), ('benign (5)', 'malignant (3)')]
    summary, problems = check_data(f'busi:{root}')
    assert [v.ids for v in summary.views] == [('benign (5)', 'benign (6)'), ('benign (5)', 'malignant (3)')]
    text = format_summary(summary, problems)
    assert "views     2 pair(s) of likely views of one lesion; they can straddle a fold's test and training parts: add :views" in text
    assert 'benign (5), benign (6) (benign; thumbnails r = ' in text
    assert not any('view' in p.message for p in problems)                  # a warning, not a problem
    assert 'kept in one fold part (:views)' in format_summary(check_data(f'busi:{root}:views')[0])
    plain, grouped = fold_groups(f'busi:{root}'), fold_groups(f'busi:{root}:views')
    five, six, m3 = ids.index('benign (5)'), ids.index('benign (6)'), ids.index('malignant (3)')
    assert plain[six] == plain[m3] != plain[five]                            # copies only: the view stands alone
    assert grouped[five] == grouped[six] == grouped[m3]                       # :views: the view joins its twin's copies
    assert [g for i, g in enumerate(grouped) if i not in (five, six, m3)] == [g for i, g in enumerate(plain) if i not in (five, six, m3)]
    assert not same_data(f'busi:{root}', f'busi:{root}:views')               # two partitions: two data sets
    folds = make_folds([c.label for c in list_cases(f'busi:{root}')], k=2, val_frac=0.3, groups=grouped)
    check_groups_whole(folds, grouped)

@pytest.fixture(scope='module')
def busi163_scored():
    "busi-163's cases, fingerprints and scored pairs, read once for the tests below."
    if not BUSI_163.exists(): pytest.skip(f'busi-163 not found at {BUSI_163} (it lives beside the project, in ../shared)')
    cases = list_cases(f'busi:{BUSI_163}')
    prints = read_fingerprints(cases)
    return cases, prints, scored_pairs(prints)

def test_busi_163_has_one_likely_view_pair_straddling_fold_0(busi163_scored):
    cases, prints, scored = busi163_scored
    views = view_pairs(prints, scored)
    assert [(cases[i].id, cases[j].id) for i, j, *_ in views] == [('benign (433)', 'benign (435)')]
    (i, j, r, s), = views
    assert r < 0.97 and s < 0.65
    copies = [p for p in scored if p[2] >= DUPLICATE_THRESHOLD]
    y = [c.label for c in cases]
    plain = make_folds(y, k=5, seed=0, n_folds=3, groups=group_ids(len(cases), copies))
    assert i in plain[0].test and j in plain[0].val                           # the quick profile's fold 0 splits them
    groups = fold_groups(f'busi:{BUSI_163}:views')                            # the spec's way: the same groups
    assert groups == group_ids(len(cases), copies + views)
    grouped = make_folds(y, k=5, seed=0, n_folds=3, groups=groups)
    assert all(({i, j} <= set(f.train.tolist())) or ({i, j} <= set(f.val.tolist())) or ({i, j} <= set(f.test.tolist())) for f in grouped)

def test_real_synth_has_no_duplicates():
    pytest.importorskip('kdbus.synth', reason='kdbus.synth (nbs/00_synth.ipynb) not exported yet')
    cases = list_cases('synth')
    assert duplicate_groups(cases) == list(range(len(cases))) == list(range(163))

@pytest.mark.parametrize('name', ['01_data', '01a_duplicates'])
def test_data_notebooks_commit_no_picture_of_busi(name):
    """Cells of the data notebooks that draw BUSI images are tagged `real-images` and committed without them (`make book`);
    their other figures (histograms of scores) draw no image."""
    nb = json.loads((ROOT / 'nbs' / f'{name}.ipynb').read_text())
    src = lambda c: ''.join(c['source'])
    drawn = [i for i, c in enumerate(nb['cells']) if 'imshow' in src(c) and 'busi' in src(c).lower()]
    assert drawn, f"nbs/{name}.ipynb no longer draws BUSI images: update this test"
    for i in drawn:
        c = nb['cells'][i]
        assert 'real-images' in c.get('metadata', {}).get('tags', []), f"cell {i} draws BUSI images but is not tagged real-images"
    pictures = [i for i, c in enumerate(nb['cells']) for o in c.get('outputs', []) if any(k.startswith('image/') for k in o.get('data', {}))]
    assert not set(pictures) & set(drawn), f"nbs/{name}.ipynb cells {sorted(set(pictures) & set(drawn))} hold pictures of BUSI images"
    drawing = [i for i in pictures if 'imshow' in src(nb['cells'][i])]            # a committed picture of images: synthetic ones only
    assert all("load_data('synth" in src(nb['cells'][i]) and 'busi' not in src(nb['cells'][i]).lower() for i in drawing), drawing

# ---------------------------------------------------------------- folds
PAPER = ['benign'] * 109 + ['malignant'] * 54

def check_partition(folds, n):
    tested = np.concatenate([f.test for f in folds])
    assert sorted(tested.tolist()) == list(range(n))                       # every image tested exactly once
    for f in folds:
        parts = [set(f.train.tolist()), set(f.val.tolist()), set(f.test.tolist())]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert set().union(*parts) == set(range(n))

def test_paper_protocol_folds():
    folds = make_folds(PAPER)
    check_partition(folds, 163)
    assert [len(f.test) for f in folds] == [33, 33, 33, 32, 32]
    assert [len(f.train) + len(f.val) for f in folds] == [130, 130, 130, 131, 131]
    assert all(len(f.val) == 20 for f in folds[:3])
    y = np.array(PAPER)
    for f in folds:                                                         # 54/163 = 33 % malignant everywhere
        for part in (f.train, f.val, f.test):
            assert abs((y[part] == 'malignant').mean() - 54 / 163) < 0.05
    three = make_folds(PAPER, n_folds=3)
    assert len(three) == 3 and all((a.test == b.test).all() for a, b in zip(three, folds))

@pytest.mark.parametrize('n, k, seed', [(10, 2, 0), (37, 3, 5), (163, 5, 1), (12, 12, 0)])
def test_folds_partition_any_size(n, k, seed):
    check_partition(make_folds(n, k=k, seed=seed, val_frac=0.2), n)

def test_folds_deterministic_by_seed():
    a, b, c = make_folds(PAPER, seed=3), make_folds(PAPER, seed=3), make_folds(PAPER, seed=4)
    assert all((x.test == y.test).all() and (x.val == y.val).all() for x, y in zip(a, b))
    assert any((x.test != y.test).any() for x, y in zip(a, c))

def test_folds_unlabelled_and_rare_classes():
    check_partition(make_folds([None] * 20, k=4), 20)
    check_partition(make_folds(['benign'] * 18 + ['malignant'] * 2, k=5), 20)   # too rare to stratify: plain folds
    assert all(len(f.val) == 0 for f in make_folds(20, k=4, val_frac=0))

@pytest.mark.parametrize('kw, word', [(dict(k=1), 'k=1'), (dict(k=200), 'k=200'), (dict(val_frac=1.0), 'val_frac'),
                                      (dict(n_folds=6), 'n_folds')])
def test_folds_bad_parameters(kw, word):
    with pytest.raises(ValueError, match=word): make_folds(PAPER, **kw)

def digest(folds):
    "A short hash of a list of folds (train, val and test indices)."
    return hashlib.sha256(b''.join(np.concatenate([f.train, [-1], f.val, [-1], f.test, [-2]]).astype('<i8').tobytes() for f in folds)).hexdigest()[:16]

@pytest.mark.parametrize('labels, kw, before', [  # digests of make_folds before groups existed (kdbus 1e5838c)
    (PAPER, {}, '4076aa85fb56353c'), (PAPER, dict(seed=1), '3a932ced1a692d78'), (PAPER, dict(k=3, val_frac=0.2), '52aacf3b1f3b0f77'),
    (PAPER, dict(n_folds=3), '190e85dea2ada5e2'), (60, {}, '16fe324b90663170'), (['benign'] * 40 + ['malignant'] * 20, {}, 'c46bc26e11b4439b')])
def test_folds_without_duplicates_are_unchanged(labels, kw, before):
    n = labels if isinstance(labels, int) else len(labels)
    assert digest(make_folds(labels, **kw)) == before
    assert digest(make_folds(labels, groups=list(range(n)), **kw)) == before               # every image its own group
    assert digest(make_folds(labels, groups=[f'case {i}' for i in range(n)], **kw)) == before

def paper_groups(seed=0):
    "Group ids for PAPER: 12 pairs and 2 triples of copies (one pair across classes), the rest single."
    rng = np.random.default_rng(seed)
    g = np.arange(163)
    members = rng.permutation(np.arange(1, 109))[:30].reshape(-1, 2).tolist()[:12] + [[1, 2, 3], [120, 121, 122], [5, 130]]
    for m in members: g[m] = m[0]
    return g.tolist()

def check_groups_whole(folds, groups):
    g = np.array(groups)
    for f in folds:
        tr, va, te = set(g[f.train]), set(g[f.val]), set(g[f.test])
        assert not (tr & va) and not (tr & te) and not (va & te), 'a duplicate group straddles two parts'

@pytest.mark.parametrize('k, seed, val_frac', [(5, 0, 0.15), (5, 3, 0.15), (3, 1, 0.2), (4, 2, 0.0), (10, 0, 0.3)])
def test_grouped_folds_keep_groups_whole(k, seed, val_frac):
    groups = paper_groups(seed)
    folds = make_folds(PAPER, k=k, seed=seed, val_frac=val_frac, groups=groups)
    check_partition(folds, 163)                                                     # each image tested exactly once
    check_groups_whole(folds, groups)
    y = np.array(PAPER)
    for f in folds:
        assert abs(len(f.test) - 163 / k) <= 3
        assert abs((y[f.test] == 'malignant').mean() - 54 / 163) < 0.08             # stratification roughly kept
        n_val = np.ceil(val_frac * (len(f.train) + len(f.val)))
        assert abs(len(f.val) - n_val) <= max(3, 0.25 * n_val)                        # about val_frac of the training part
        if val_frac: assert abs((y[f.val] == 'malignant').mean() - 54 / 163) < 0.15

def test_grouped_folds_are_deterministic_by_seed():
    groups = paper_groups()
    a, b, c = (make_folds(PAPER, seed=s, groups=groups) for s in (3, 3, 4))
    assert digest(a) == digest(b) != digest(c)
    assert digest(make_folds(PAPER, groups=groups)) != digest(make_folds(PAPER))
    assert digest(make_folds(PAPER, groups=groups, n_folds=2)) == digest(make_folds(PAPER, groups=groups)[:2])

def test_grouped_folds_unlabelled_and_rare_classes():
    groups = [0, 0, 0] + list(range(3, 20))
    for labels in ([None] * 20, 20, ['benign'] * 18 + ['malignant'] * 2):
        folds = make_folds(labels, k=4, groups=groups)
        check_partition(folds, 20); check_groups_whole(folds, groups)

@pytest.mark.parametrize('groups, words', [
    (list(range(162)), 'groups: expected one group id per image (163 images), got 162'),
    ([list(range(163))], 'got an array of shape (1, 163)'),
    (7, 'got an array of shape ()'),
    ([None, 'a'] + list(range(161)), 'sortable group ids'),
    ([0] * 160 + [1, 2, 3], 'only 4 duplicate group(s); expected at least k')])
def test_grouped_folds_bad_groups(groups, words):
    with pytest.raises(ValueError) as e: make_folds(PAPER, groups=groups)
    assert words in str(e.value), str(e.value)

def test_grouped_folds_need_two_groups_to_validate():
    with pytest.raises(ValueError, match='one duplicate group'): make_folds(4, k=2, groups=[0, 0, 2, 2])

# ---------------------------------------------------------------- loading
def test_load_data_contract(u):
    d = load_data(f'udiat:{u}', size=24)
    assert d.images.shape == (4, 24, 24, 3) and d.images.dtype == np.float32
    assert d.masks.shape == (4, 24, 24) and d.masks.dtype == np.uint8 and set(np.unique(d.masks)) == {0, 1}
    assert 0 <= d.images.min() and d.images.max() <= 1 and d.images.max() > 0.9
    assert (d.images[..., 0] == d.images[..., 1]).all()
    assert d.ids == ['000001', '000002', '000003', '000004'] and d.labels == ['benign', 'malignant'] * 2
    assert d.sizes == [(H, W)] * 4
    assert abs(d.masks.mean() - DISC.mean()) < 0.03                       # the lesion keeps its share
    sub = d.subset(np.array([3, 0]))
    assert sub.ids == ['000004', '000001'] and (sub.images[1] == d.images[0]).all()

def test_load_data_enlarges_and_keeps_colour(tmp_path):
    rgb = np.dstack([GREY, 255 - GREY, 0 * GREY])
    png(tmp_path / 'im' / 'a.png', rgb); png(tmp_path / 'gt' / 'a.png', DISC)
    d = load_data(f'pairs:{tmp_path}/im:{tmp_path}/gt', size=64)
    assert d.images.shape == (1, 64, 64, 3) and not (d.images[..., 0] == d.images[..., 1]).all()
    assert abs(d.masks.mean() - DISC.mean()) < 0.03

def test_load_data_bad_arguments(u):
    with pytest.raises(ValueError, match='size'): load_data(f'udiat:{u}', size=0)
    with pytest.raises(DataError, match='nothing to load'): load_data([])

def test_segdata_checks_its_contract():
    from kdbus.data import SegData
    with pytest.raises(ValueError, match='float32'): SegData(np.zeros((1, 4, 4, 3)), np.zeros((1, 4, 4), np.uint8), ['a'], [None])
    with pytest.raises(ValueError, match='masks'): SegData(np.zeros((1, 4, 4, 3), np.float32), np.zeros((1, 4, 5), np.uint8), ['a'], [None])

# ---------------------------------------------------------------- the real BUSI sample
@pytest.fixture(scope='module')
def busi_sample():
    if not BUSI_SAMPLE.exists(): pytest.skip(f'BUSI sample not found at {BUSI_SAMPLE} (it lives beside the project, in ../shared)')
    return BUSI_SAMPLE

def test_busi_sample_has_no_problems(busi_sample):
    summary, problems = check_data(f'busi:{busi_sample}')
    assert problems == [], [str(p) for p in problems]
    assert summary.n_cases == 60 and summary.classes == {'benign': 40, 'malignant': 20}
    assert summary.warnings == []
    assert 0 < summary.lesion_fraction['min'] < summary.lesion_fraction['mean'] < summary.lesion_fraction['max'] < 1

def test_busi_sample_duplicates(busi_sample):
    summary, problems = check_data(f'busi:{busi_sample}')
    assert [(g.ids, g.mixed) for g in summary.duplicates] == [(('benign (210)', 'benign (298)'), False),
                                                              (('benign (232)', 'benign (276)', 'benign (287)'), False)]
    assert min(g.score for g in summary.duplicates) > 0.95
    groups = fold_groups(f'busi:{busi_sample}')
    assert sum(g != i for i, g in enumerate(groups)) == 3                            # 5 images in 2 groups
    folds = make_folds([c.label for c in list_cases(f'busi:{busi_sample}')], groups=groups)
    check_partition(folds, 60); check_groups_whole(folds, groups)

def test_busi_163_duplicates(busi163_scored):
    cases, prints, scored = busi163_scored
    pairs = [p for p in scored if p[2] >= 0.5]          # what lies near the threshold, on both sides
    groups = group_duplicates(cases, [p for p in pairs if p[2] >= DUPLICATE_THRESHOLD])
    assert (len(groups), sum(len(g.ids) for g in groups), sum(g.mixed for g in groups)) == (10, 21, 0)
    assert min(g.score for g in groups) > 0.95 and max(s for *_, s in pairs if s < DUPLICATE_THRESHOLD) < 0.7
    assert ('malignant (95)', 'malignant (96)') in [g.ids for g in groups]                  # a crop to 72 % of the width

def test_busi_sample_loads(busi_sample):
    d = load_data(f'busi:{busi_sample}', size=64)
    assert d.images.shape == (60, 64, 64, 3) and d.labels.count('malignant') == 20
    assert d.ids[:2] == ['benign (1)', 'benign (12)'] and all(m.any() for m in d.masks)
    folds = make_folds(d.labels, k=5, seed=0)
    check_partition(folds, 60)
    assert [(np.array(d.labels)[f.test] == 'malignant').sum() for f in folds] == [4] * 5
