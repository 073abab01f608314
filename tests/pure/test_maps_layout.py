import pytest
import torch

from attention_lab.attention.layout import bhnd_to_bnhd, full_rows, mask_to_bias, to_bhnd
from attention_lab.attention.maps import attention_chunked, default_chunk


@pytest.mark.parametrize("chunk", [1, 7, 64, None])
def test_chunked_equals_sdpa(chunk):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 3, 37, 16, generator=g)
    k, v = torch.randn(2, 3, 29, 16, generator=g), torch.randn(2, 3, 29, 16, generator=g)
    bias = torch.randn(2, 1, 37, 29, generator=g)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(attention_chunked(q, k, v, bias, chunk=chunk), ref, atol=1e-5, rtol=1e-5)


def test_hook_sees_every_row_once_and_can_edit():
    q = torch.randn(1, 2, 20, 8)
    k = v = torch.randn(1, 2, 5, 8)
    rows = []

    def hook(probs, start):
        rows.extend(range(start, start + probs.shape[2]))
        return torch.zeros_like(probs).index_fill_(-1, torch.tensor([2]), 1.0)

    out = attention_chunked(q, k, v, hook=hook, chunk=6)
    assert rows == list(range(20))
    torch.testing.assert_close(out, v[:, :, 2:3].expand_as(out))


def test_default_chunk_bounds_memory():
    assert default_chunk(16384, 16384) * 16384 <= 1 << 24
    assert default_chunk(10, 77) == 10


def test_layout_roundtrip_and_masks():
    x = torch.randn(2, 5, 12)
    bhnd = to_bhnd(x, 3, skip_reshape=False)
    assert bhnd.shape == (2, 3, 5, 4) and torch.equal(bhnd_to_bnhd(bhnd), x)
    assert to_bhnd(bhnd, 3, skip_reshape=True) is bhnd
    keep = torch.tensor([[True, False]])
    bias = mask_to_bias(keep, torch.float32)
    assert bias.shape == (1, 1, 1, 2) and bias[0, 0, 0, 0] == 0 and bias[0, 0, 0, 1] == float("-inf")
    assert mask_to_bias(torch.zeros(2, 3, 4), torch.float32).shape == (2, 1, 3, 4)
    assert full_rows(bias, 6).shape == (1, 1, 6, 2)


def test_key_attention_mass_equals_the_full_map():
    from attention_lab.attention.maps import attention_probs, key_attention_mass
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 3, 40, 8, generator=g), torch.randn(2, 3, 30, 8, generator=g)
    full = attention_probs(q, k).mean(dim=1).sum(dim=1)
    torch.testing.assert_close(key_attention_mass(q, k, chunk=7), full)
    assert key_attention_mass(q, k).sum().item() == pytest.approx(2 * 40, rel=1e-5)
