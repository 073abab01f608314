import math

import pytest
import torch

from attention_lab.attention.guidance import blur_grid, nag, rescale


def test_blur_keeps_constants_and_smooths_spikes():
    x = torch.ones(1, 2, 6 * 5, 3)
    torch.testing.assert_close(blur_grid(x, (6, 5), 1.5), x)
    spike = torch.zeros(1, 1, 36, 1)
    spike[0, 0, 14, 0] = 1.0
    out = blur_grid(spike, (6, 6), 1.0)
    assert out[0, 0, 14, 0] < 1.0 and out[0, 0, 15, 0] > 0 and out.sum() == pytest.approx(1.0, abs=0.05)


def test_infinite_blur_is_the_mean_query():
    x = torch.randn(2, 3, 12, 4)
    out = blur_grid(x, (3, 4), math.inf)
    torch.testing.assert_close(out, x.mean(2, keepdim=True).expand_as(x))


def test_blur_rejects_a_wrong_grid():
    with pytest.raises(ValueError, match="does not fill"):
        blur_grid(torch.zeros(1, 1, 10, 2), (3, 3), 1.0)


def test_nag_identity_when_contexts_agree_and_clips_the_norm():
    pos = torch.randn(2, 5, 8)
    torch.testing.assert_close(nag(pos, pos, scale=5.0, tau=2.5, alpha=0.5), pos)
    out = nag(pos, -pos, scale=5.0, tau=2.5, alpha=1.0)
    ratio = out.abs().sum(-1) / pos.abs().sum(-1)
    assert torch.all(ratio <= 2.5 + 1e-4)


def test_rescale_matches_the_reference_spread():
    guided, ref = torch.randn(2, 4, 8, 8) * 3, torch.randn(2, 4, 8, 8)
    assert torch.equal(rescale(guided, ref, 0.0), guided)
    out = rescale(guided, ref, 1.0)
    torch.testing.assert_close(out.std(dim=(1, 2, 3)), ref.std(dim=(1, 2, 3)), rtol=1e-4, atol=1e-5)
