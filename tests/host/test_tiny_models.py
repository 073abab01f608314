"""The tiny models of every family: real host classes, fully initialised, finite, deterministic; the bundles run
CLIP encode -> sample -> VAE decode end to end."""
import contextlib

import pytest
import torch

from tools import tiny_models


@contextlib.contextmanager
def nan_empty():
    """torch.empty hands out NaN-filled floats, so anything a builder leaves uninitialised poisons the output."""
    original = torch.empty

    def poisoned(*args, **kwargs):
        t = original(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    torch.empty = poisoned
    try:
        yield
    finally:
        torch.empty = original


@pytest.mark.parametrize("family", tiny_models.FAMILY_NAMES)
def test_tiny_model_samples_finite_and_repeats(family, tiny, sample):
    t = tiny(family)
    a = sample(t.patcher, t, steps=2)
    assert a.shape == t.latent().shape and torch.isfinite(a).all()
    assert torch.equal(a, sample(t.patcher, t, steps=2))
    assert not torch.equal(a, sample(t.patcher, t, steps=2, seed=1))


@pytest.mark.parametrize("family", tiny_models.FAMILY_NAMES)
def test_builds_are_complete_and_seeded(family, tiny, sample):
    with nan_empty():
        fresh = tiny_models.build(family, seed=0)
    a = sample(fresh.patcher, fresh, steps=2)
    assert torch.isfinite(a).all()
    assert torch.equal(a, sample(tiny(family).patcher, fresh, steps=2))
    other = tiny_models.build(family, seed=1)
    assert not torch.equal(a, sample(other.patcher, fresh, steps=2))


@pytest.mark.parametrize("family", tiny_models.FAMILY_NAMES)
def test_text_length_can_vary(family, tiny, sample):
    t = tiny(family)
    assert t.conditioning(batch=2, length=12)[0][0].shape == (2, 12, t.context_dim)
    out = sample(t.patcher, t, steps=1, positive=t.conditioning(length=12), negative=t.conditioning(length=3))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("family", ["hunyuan_video", "ltxv"])
def test_padded_text_is_masked(family, tiny, sample):
    t = tiny(family)
    padded = t.conditioning(length=9, padding=4)
    assert padded[0][1]["attention_mask"].tolist() == [[1] * 5 + [0] * 4]
    out = sample(t.patcher, t, steps=1, positive=padded)
    assert torch.isfinite(out).all() and not torch.equal(out, sample(t.patcher, t, steps=1))


def test_unknown_family_is_a_clear_error():
    with pytest.raises(ValueError, match="known: sd15"):
        tiny_models.build("sd9")


def test_sd15_bundle_encodes_samples_and_decodes(sample):
    model, clip, vae = tiny_models.tiny_sd15_bundle(seed=0)
    t = tiny_models.build("sd15")
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a red circle on the left"))
    assert cond[0][0].shape == (1, 77, t.context_dim)
    uncond = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    out = sample(model, t, steps=2, positive=cond, negative=uncond, latent=torch.zeros(1, 4, 8, 8))
    image = vae.decode(out)
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()


@pytest.mark.parametrize("family,channels", [("sd3", 16), ("flux", 16)])
def test_dit_bundles_encode_sample_and_decode(family, channels, sample):
    model, clip, vae = tiny_models.tiny_bundle(family, seed=0)
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a red circle on the left"))
    latent = torch.zeros(1, channels, 8, 8)
    out = sample(model, tiny_models.TinyModel(family, model, latent.shape[1:], 64), steps=2, positive=cond,
                 negative=cond, latent=latent)
    image = vae.decode(out)
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
