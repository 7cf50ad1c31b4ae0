"""kdbus.losses: golden values by hand, reductions, masking, temperature, precision, alignment, gradients."""
import math

import pytest
import torch
import torch.nn.functional as F

from kdbus.losses import (KD_LOSSES, SOFTMAX_AXES, KDLosses, align_channels, align_pair, distill_loss,
                          resize_to, sup_loss, total_loss)

LN3 = math.log(3)
K = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)  # KL((1/4, 3/4) || (1/2, 1/2)), by hand ~ 0.130812
ALL = [('kld', 'channel'), ('kld', 'spatial'), ('mse', 'channel')]


def px(*v, dtype=torch.float32):
    "One pixel with len(v) channels: 1 x C x 1 x 1."
    return torch.tensor(v, dtype=dtype).view(1, len(v), 1, 1)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- golden values ---------------------------------------------------------------------------

def test_golden_constant():
    assert K == pytest.approx(0.1308120, abs=1e-6)


def test_kld_one_pixel_golden():
    assert distill_loss(px(0., 0.), px(0., LN3), 'kld').item() == pytest.approx(K, abs=1e-6)
    # the other direction: P = (1/2, 1/2), Q = (1/4, 3/4): 1/2 ln 2 + 1/2 ln(2/3)
    assert distill_loss(px(0., LN3), px(0., 0.), 'kld').item() == pytest.approx(
        0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-6)


def test_kld_2x2_golden_is_mean_over_pixels():
    # teacher pixels (0, ln3), (0, 0), (ln3, 0), (0, ln3); student (0, 0) everywhere -> KL = K, 0, K, K
    t = torch.tensor([[[[0., 0.], [LN3, 0.]], [[LN3, 0.], [0., LN3]]]])  # 1 x 2 x 2 x 2
    s = torch.zeros_like(t)
    assert distill_loss(s, t, 'kld').item() == pytest.approx(3 * K / 4, abs=1e-6)
    # valid on the two top pixels only -> (K + 0) / 2
    v = torch.tensor([[[[1., 1.], [0., 0.]]]])
    assert distill_loss(s, t, 'kld', valid=v).item() == pytest.approx(K / 2, abs=1e-6)


def test_mse_golden():
    assert distill_loss(px(1., 2.), px(0., 0.), 'mse').item() == pytest.approx(2.5)
    # 2 channels x 2 pixels, second pixel masked out: mean over channels x valid pixels = (1 + 4) / 2
    s = torch.tensor([[[[1., 7.]], [[2., -7.]]]])
    t = torch.zeros_like(s)
    v = torch.tensor([[[[1., 0.]]]])
    assert distill_loss(s, t, 'mse', valid=v).item() == pytest.approx(2.5)
    assert distill_loss(s, t, 'mse').item() == pytest.approx((1 + 4 + 49 + 49) / 4)


def test_mse_equals_torch_mse_when_all_valid():
    s, t = rand(2, 5, 3, 4), rand(2, 5, 3, 4, seed=1)
    assert distill_loss(s, t, 'mse').item() == pytest.approx(F.mse_loss(s, t).item(), rel=1e-6)


def test_kld_spatial_golden():
    # one channel map over 1 x 2 pixels: teacher (0, ln3) -> P = (1/4, 3/4), student (0, 0) -> Q uniform
    s, t = torch.zeros(1, 1, 1, 2), torch.tensor([[[[0., LN3]]]])
    assert distill_loss(s, t, 'kld', axis='spatial').item() == pytest.approx(K, abs=1e-6)
    # a third pixel, masked out, is excluded from both softmaxes whatever it holds
    s3, t3 = torch.tensor([[[[0., 0., 5.]]]]), torch.tensor([[[[0., LN3, -4.]]]])
    v = torch.tensor([[[[1., 1., 0.]]]])
    assert distill_loss(s3, t3, 'kld', valid=v, axis='spatial').item() == pytest.approx(K, abs=1e-6)
    # a second channel map where student == teacher: mean over maps = K / 2
    s2 = torch.cat([s, torch.tensor([[[[1., 2.]]]])], 1)
    t2 = torch.cat([t, torch.tensor([[[[1., 2.]]]])], 1)
    assert distill_loss(s2, t2, 'kld', axis='spatial').item() == pytest.approx(K / 2, abs=1e-6)


def test_sup_loss_golden_and_torch():
    lg = torch.tensor([[[[0., 0.]], [[LN3, LN3]]]])  # P(lesion) = 3/4 at both pixels
    m = torch.tensor([[[0, 1]]])
    assert sup_loss(lg, m).item() == pytest.approx((-math.log(1 / 4) - math.log(3 / 4)) / 2, abs=1e-6)
    x, y = rand(3, 2, 4, 5), (rand(3, 4, 5, seed=2) > 0).long()
    assert sup_loss(x, y).item() == pytest.approx(F.cross_entropy(x, y).item(), rel=1e-6)
    # mean over pixels: tiling does not change it
    assert sup_loss(x.repeat(1, 1, 2, 3), y.repeat(1, 2, 3)).item() == pytest.approx(sup_loss(x, y).item(), rel=1e-5)


# --- reductions and masking ------------------------------------------------------------------

@pytest.mark.parametrize('kind,axis', ALL)
def test_invariant_to_tiling_and_batch_repeat(kind, axis):
    s, t = rand(2, 6, 3, 3), rand(2, 6, 3, 3, seed=1)
    v = (rand(2, 1, 3, 3, seed=2) > -0.5).float()
    ref = distill_loss(s, t, kind, valid=v, axis=axis).item()
    tiled = distill_loss(s.repeat(1, 1, 3, 4), t.repeat(1, 1, 3, 4), kind, valid=v.repeat(1, 1, 3, 4), axis=axis)
    batch = distill_loss(s.repeat(4, 1, 1, 1), t.repeat(4, 1, 1, 1), kind, valid=v.repeat(4, 1, 1, 1), axis=axis)
    assert tiled.item() == pytest.approx(ref, rel=1e-5)
    assert batch.item() == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize('kind,axis', ALL)
def test_zero_when_student_equals_teacher(kind, axis):
    x = rand(2, 4, 5, 5) * 10
    assert distill_loss(x, x.clone(), kind, axis=axis).item() == pytest.approx(0., abs=1e-6)
    assert distill_loss(x, x.clone(), kind, T=3.0, axis=axis).item() == pytest.approx(0., abs=1e-5)
    # a constant shift: MSE sees it (exactly 1), a softmax does not
    assert distill_loss(x + 1, x, kind, axis=axis).item() == pytest.approx(1. if kind == 'mse' else 0., abs=1e-5)


@pytest.mark.parametrize('kind,axis', ALL)
def test_masked_pixels_are_ignored(kind, axis):
    s, t = rand(2, 3, 4, 4), rand(2, 3, 4, 4, seed=1)
    v = torch.ones(2, 1, 4, 4)
    v[0, :, 1, 2] = 0
    v[1, :, 3, :] = 0
    ref = distill_loss(s, t, kind, valid=v, axis=axis).item()
    s2, t2 = s.clone(), t.clone()
    s2[0, :, 1, 2], t2[1, :, 3, :] = 100., -50.
    assert distill_loss(s2, t2, kind, valid=v, axis=axis).item() == pytest.approx(ref, rel=1e-6)
    # and changing a valid pixel does change it
    s2[0, :, 0, 0] += torch.tensor([3., -2., 1.])
    assert distill_loss(s2, t2, kind, valid=v, axis=axis).item() != pytest.approx(ref, rel=1e-3)


@pytest.mark.parametrize('kind,axis', ALL)
def test_no_valid_pixel_gives_zero_and_finite_gradient(kind, axis):
    s = rand(1, 3, 2, 2).requires_grad_()
    loss = distill_loss(s, rand(1, 3, 2, 2, seed=1), kind, valid=torch.zeros(1, 1, 2, 2), axis=axis)
    loss.backward()
    assert loss.item() == 0. and torch.isfinite(s.grad).all() and (s.grad == 0).all()


def test_masked_pixels_get_no_gradient():
    v = torch.tensor([[[[1., 1., 0.]]]])
    for kind, axis in ALL:
        s = rand(1, 2, 1, 3).requires_grad_()
        distill_loss(s, rand(1, 2, 1, 3, seed=1), kind, valid=v, axis=axis).backward()
        assert (s.grad[..., 2] == 0).all() and (s.grad[..., :2] != 0).all(), (kind, axis)


# --- temperature -----------------------------------------------------------------------------

def test_temperature_golden_and_t2_factor():
    p1 = math.sqrt(3) / (1 + math.sqrt(3)); p0 = 1 - p1  # softmax((0, ln 3) / 2)
    kl_T2 = p0 * math.log(2 * p0) + p1 * math.log(2 * p1)  # KL of the softened pair, no factor
    assert distill_loss(px(0., 0.), px(0., LN3), T=2.0).item() == pytest.approx(4 * kl_T2, abs=1e-6)
    # T^2 * KL tends to half the variance over classes of d = teacher - student: (ln 3)^2 / 8 for 2 classes
    assert distill_loss(px(0., 0.), px(0., LN3), T=10.0).item() == pytest.approx(LN3 ** 2 / 8, abs=5e-4)
    # dividing both logits by T is the same softmax as temperature T, up to the T^2 factor
    s, t = rand(2, 4, 3, 3), rand(2, 4, 3, 3, seed=1)
    for axis in SOFTMAX_AXES:
        a = distill_loss(s, t, T=3.0, axis=axis).item()
        b = distill_loss(s / 3, t / 3, T=1.0, axis=axis).item()
        assert a == pytest.approx(9 * b, rel=1e-5)


def test_default_temperature_is_one_and_mse_ignores_t():
    s, t = rand(1, 3, 2, 2), rand(1, 3, 2, 2, seed=1)
    assert distill_loss(s, t).item() == distill_loss(s, t, 'kld', T=1.0).item()
    assert distill_loss(s, t, 'mse', T=4.0).item() == distill_loss(s, t, 'mse').item()


@pytest.mark.parametrize('T', [0, -1.0, float('nan'), float('inf'), '2', True])
def test_bad_temperature(T):
    with pytest.raises(ValueError, match='T='):
        distill_loss(px(0., 0.), px(0., 1.), T=T)


# --- precision -------------------------------------------------------------------------------

def kl64(s, t, T=1.0):
    "Reference per-pixel channel KLD in float64, T^2 included (1-pixel inputs)."
    p = (t.double() / T).log_softmax(1); q = (s.double() / T).log_softmax(1)
    return (T * T * (p.exp() * (p - q)).sum(1)).mean().item()


def test_float16_underflow():
    s, t = px(0., 0., dtype=torch.float16), px(0., 20., dtype=torch.float16)
    p, q = t.softmax(1), s.softmax(1)
    assert p[0, 0].item() == 0.  # 2e-9 underflows in float16 ...
    assert (p * (p / q).log()).sum().isnan()  # ... so the naive formula is nan
    out = distill_loss(s, t)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert out.item() == pytest.approx(kl64(s, t), rel=1e-6)


def test_float16_overflow_under_temperature():
    s, t = px(6e4, 0., dtype=torch.float16), px(0., 0., dtype=torch.float16)
    assert torch.isinf(s / 0.5).any()  # naive half division by T overflows
    out = distill_loss(s, t, T=0.5)
    assert torch.isfinite(out) and out.item() == pytest.approx(kl64(s, t, 0.5), rel=1e-5)
    assert torch.isfinite(distill_loss(s, t, 'mse'))  # 6e4 ** 2 would overflow float16 too


def test_bfloat16_underflow():
    s, t = px(0., 0., dtype=torch.bfloat16), px(0., 200., dtype=torch.bfloat16)
    p, q = t.softmax(1), s.softmax(1)
    assert (p * (p / q).log()).sum().isnan()  # exp(-200) underflows even bfloat16's range
    out = distill_loss(s, t)
    assert torch.isfinite(out) and out.item() == pytest.approx(kl64(s, t), rel=1e-6)


def test_under_autocast_bfloat16():
    conv = torch.nn.Conv2d(3, 4, 1)
    x, t = rand(2, 3, 4, 4), rand(2, 4, 4, 4, seed=1)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        s = conv(x)
        assert s.dtype == torch.bfloat16
        for kind, axis in ALL:
            out = distill_loss(s, t, kind, axis=axis)
            assert out.dtype == torch.float32
            with torch.autocast('cpu', enabled=False):
                ref = distill_loss(s.float(), t.float(), kind, axis=axis)
            assert out.item() == pytest.approx(ref.item(), rel=1e-6)
        lg = conv(x)[:, :2]
        assert sup_loss(lg, torch.zeros(2, 4, 4, dtype=torch.long)).dtype == torch.float32


# --- one channel -----------------------------------------------------------------------------

def test_one_channel_guard():
    with pytest.raises(ValueError, match='one channel'):
        distill_loss(rand(1, 1, 3, 3), rand(1, 1, 3, 3, seed=1), 'kld')
    with pytest.raises(ValueError, match='one channel'):  # also when alignment reduces to one channel
        distill_loss(rand(1, 8, 3, 3), rand(1, 1, 3, 3, seed=1), 'kld')
    # mse and the spatial softmax are well defined for one channel
    assert distill_loss(rand(1, 1, 3, 3), rand(1, 1, 3, 3, seed=1), 'mse').item() > 0
    assert distill_loss(rand(1, 1, 3, 3), rand(1, 1, 3, 3, seed=1), 'kld', axis='spatial').item() > 0


# --- alignment -------------------------------------------------------------------------------

def test_channel_alignment_is_a_group_mean_without_parameters():
    t = rand(2, 512, 3, 3)
    a = align_channels(t, 64)
    assert a.shape == (2, 64, 3, 3)
    torch.testing.assert_close(a, t.view(2, 64, 8, 3, 3).mean(2))
    torch.testing.assert_close(align_channels(t, 64), a, rtol=0, atol=0)  # deterministic
    assert align_channels(t, 512) is t
    assert align_channels(rand(1, 5, 2, 2), 3).shape == (1, 3, 2, 2)  # non-integer ratio still works
    with pytest.raises(ValueError, match='only reduces'):
        align_channels(t, 1024)
    with pytest.raises(ValueError, match='between 1'):
        align_channels(t, 0)


def test_align_pair_reduces_the_wider_side():
    s, t = rand(2, 16, 4, 4), rand(2, 64, 4, 4, seed=1)
    s2, t2, v2 = align_pair(s, t)
    assert s2.shape == t2.shape == (2, 16, 4, 4) and v2.shape == (2, 1, 4, 4) and (v2 == 1).all()
    torch.testing.assert_close(t2, t.view(2, 16, 4, 4, 4).mean(2))
    # the student wider than the teacher: the student is reduced and its gradient flows through the mean
    sw = rand(2, 64, 4, 4).requires_grad_()
    s3, t3, _ = align_pair(sw, rand(2, 16, 4, 4, seed=1))
    assert s3.shape == t3.shape == (2, 16, 4, 4)
    distill_loss(sw, rand(2, 16, 4, 4, seed=1), 'mse').backward()
    assert sw.grad is not None and (sw.grad != 0).all()


def test_spatial_alignment_resizes_teacher_to_student():
    t = torch.arange(16.).view(1, 1, 4, 4)
    s = torch.zeros(1, 1, 2, 2)
    _, t2, _ = align_pair(s, t)
    assert t2.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]  # area: 2 x 2 block means
    corner = torch.zeros(1, 1, 3, 3); corner[..., 0, 0] = 9.
    assert align_pair(torch.zeros(1, 1, 1, 1), corner)[1].item() == 1.  # area: mean of all 9 (bilinear would give 0)
    # a smaller teacher is enlarged bilinearly (align_corners=False)
    tt = torch.tensor([[[[0., 1.], [2., 3.]]]])
    _, t3, _ = align_pair(torch.zeros(1, 1, 4, 4), tt)
    torch.testing.assert_close(t3, F.interpolate(tt, size=(4, 4), mode='bilinear', align_corners=False))
    assert t3[0, 0, 0].tolist() == [0., 0.25, 0.75, 1.]
    # and the loss is the loss on the resized target
    s8 = rand(1, 3, 2, 2)
    assert distill_loss(s8, t.repeat(1, 3, 1, 1), 'mse').item() == pytest.approx(
        F.mse_loss(s8, resize_to(t.repeat(1, 3, 1, 1), (2, 2))).item(), rel=1e-6)


def test_valid_mask_follows_the_target():
    s, t = torch.zeros(1, 2, 2, 2), rand(1, 2, 4, 4)
    v = torch.ones(1, 1, 4, 4); v[0, 0, 3, 0] = 0  # one invalid teacher pixel in the bottom-left block
    _, _, v2 = align_pair(s, t, v)
    assert v2[0, 0].tolist() == [[1., 1.], [0., 1.]]
    # enlarging: a student pixel whose bilinear footprint touches an invalid teacher pixel is invalid
    vs = torch.tensor([[[[1., 1.], [1., 0.]]]])
    _, _, v3 = align_pair(torch.zeros(1, 2, 4, 4), rand(1, 2, 2, 2), vs)
    assert v3[0, 0].tolist() == [[1., 1., 1., 1.], [1., 0., 0., 0.], [1., 0., 0., 0.], [1., 0., 0., 0.]]
    # a mask already on the student's grid is used as given
    vg = torch.tensor([[[[1., 0.], [1., 1.]]]])
    assert align_pair(s, t, vg)[2].tolist() == vg.tolist()


def test_valid_errors():
    s, t = rand(2, 2, 2, 2), rand(2, 2, 4, 4)
    with pytest.raises(ValueError, match='valid must be B x 1'):
        align_pair(s, t, torch.ones(2, 1, 3, 3))
    with pytest.raises(ValueError, match='valid must be B x 1'):
        align_pair(s, t, torch.ones(2, 2, 4, 4))
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        align_pair(s, t, torch.full((2, 1, 4, 4), 2.))


def test_teacher_is_detached_and_student_gets_gradient():
    for kind, axis in ALL:
        s = rand(2, 4, 2, 2).requires_grad_()
        t = rand(2, 8, 4, 4, seed=1).requires_grad_()
        distill_loss(s, t, kind, valid=torch.ones(2, 1, 4, 4), axis=axis).backward()
        assert t.grad is None, (kind, axis)
        assert s.grad is not None and s.grad.abs().sum() > 0, (kind, axis)


# --- names and errors ------------------------------------------------------------------------

def test_unknown_kind_and_axis_list_valid_ones():
    with pytest.raises(ValueError, match="kind='KLD'.*'mse', 'kld'"):
        distill_loss(px(0., 0.), px(0., 0.), 'KLD')
    with pytest.raises(ValueError, match="axis='pixel'.*'channel', 'spatial'"):
        distill_loss(px(0., 0.), px(0., 0.), axis='pixel')
    assert KD_LOSSES == ('mse', 'kld') and SOFTMAX_AXES == ('channel', 'spatial')


def test_shape_and_type_errors():
    with pytest.raises(ValueError, match='batch sizes differ'):
        distill_loss(rand(2, 2, 2, 2), rand(3, 2, 2, 2))
    with pytest.raises(ValueError, match='student must be a B x C x H x W'):
        distill_loss(rand(2, 2, 2), rand(2, 2, 2))
    with pytest.raises(TypeError, match='teacher must be a floating-point'):
        distill_loss(rand(1, 2, 2, 2), torch.ones(1, 2, 2, 2, dtype=torch.long))
    lg = rand(2, 2, 3, 3)
    with pytest.raises(ValueError, match='mask must be B x H x W'):
        sup_loss(lg, torch.zeros(2, 1, 3, 3, dtype=torch.long))
    with pytest.raises(TypeError, match='integer'):
        sup_loss(lg, torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match=r'0\.\.1'):
        sup_loss(lg, torch.full((2, 3, 3), 2))
    with pytest.raises(ValueError, match='at least 2 classes'):
        sup_loss(rand(2, 1, 3, 3), torch.zeros(2, 3, 3, dtype=torch.long))


# --- total -----------------------------------------------------------------------------------

def test_total_is_half_kd_plus_half_sup():
    s = rand(2, 2, 4, 4).requires_grad_()
    t, m = rand(2, 2, 4, 4, seed=1), (rand(2, 4, 4, seed=2) > 0).long()
    kd, sup = distill_loss(s, t, 'kld'), sup_loss(s, m)
    out = total_loss(kd, sup)
    assert isinstance(out, KDLosses)
    assert out.total.item() == pytest.approx(0.5 * kd.item() + 0.5 * sup.item(), rel=1e-6)
    assert out.kd is kd and out.sup is sup
    assert total_loss(kd, sup, alpha=0.3).total.item() == pytest.approx(0.3 * kd.item() + 0.7 * sup.item(), rel=1e-6)
    log = out.log()
    assert set(log) == {'total', 'sup', 'kd'} and all(isinstance(x, float) for x in log.values())
    out.total.backward()
    assert s.grad is not None


@pytest.mark.parametrize('alpha', [-0.1, 1.5, '0.5', None])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match='alpha='):
        total_loss(torch.tensor(1.), torch.tensor(1.), alpha=alpha)


def test_total_needs_scalars():
    with pytest.raises(ValueError, match='kd must be a scalar'):
        total_loss(torch.ones(3), torch.tensor(1.))
