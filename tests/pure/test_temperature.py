import math

import pytest
import torch

from attention_lab.attention.effect import AttnCall
from attention_lab.attention.schedule import Schedule
from attention_lab.attention.site import COND, UNCOND, Site, Span, TokenLayout
from attention_lab.attention.temperature import Temperature, entropy_scale, keys_at_training_size, scale_logits


def reference(q, k, v, scale):
    logits = scale * (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return logits.softmax(-1) @ v


def test_scaled_queries_equal_scaled_logits():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8, generator=g, dtype=torch.float64) for _ in range(3))
    out = torch.nn.functional.scaled_dot_product_attention(scale_logits(q, 1.7), k, v)
    torch.testing.assert_close(out, reference(q, k, v, 1.7))


def test_entropy_scale():
    assert entropy_scale(4096, 4096) == 1.0
    assert entropy_scale(16384, 4096) == pytest.approx(math.sqrt(math.log(16384) / math.log(4096)))
    assert entropy_scale(1, 4096) == 1.0


def self_site(n, pixel_area, kind="self", chunks=(COND,)):
    layout = TokenLayout(n, n, (1, 1, n), Span(0, n), Span(0, n), None, None, pixel_area)
    return Site("sd15", kind, None, 1, 8, layout, 1.0, None, chunks, {"batch_per_chunk": 1})


def test_keys_at_training_size_scales_image_keys_only():
    layout = TokenLayout(90, 90, None, Span(10, 90), Span(10, 90), Span(0, 10), Span(0, 10), 1024 * 1024)
    site = Site("flux", "joint", None, 1, 8, layout, 1.0)
    assert keys_at_training_size(site, 512 * 512) == pytest.approx(10 + 80 / 4)


def test_resolution_mode_is_identity_at_training_size_and_sharpens_above():
    eff = Temperature(Schedule(), mode="resolution", train_pixels=512 * 512)
    assert eff.site_scale(self_site(4096, 512 * 512)) == pytest.approx(1.0)
    assert eff.site_scale(self_site(16384, 1024 * 1024)) > 1.0
    assert eff.site_scale(self_site(16384, 1024 * 1024, kind="cross")) == 1.0


def test_neutral_and_per_chunk():
    assert Temperature(Schedule(), scale=1.0).neutral
    assert not Temperature(Schedule(), scale=1.0, mode="resolution").neutral
    eff = Temperature(Schedule(apply_to="cond"), scale=2.0)
    q = torch.ones(2, 1, 3, 4)
    call = AttnCall(q, q, q)
    out = eff.pre(call, self_site(3, 1, chunks=(UNCOND, COND)))
    assert out.q[0].eq(1).all() and out.q[1].eq(2).all()
    with pytest.raises(ValueError, match="mode"):
        Temperature(Schedule(), mode="hot")
