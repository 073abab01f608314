"""The tiny models of every family: real host classes, finite, deterministic; the SD1.5 bundle runs end to end."""
import pytest
import torch

from tools import tiny_models


@pytest.mark.parametrize("family", tiny_models.FAMILY_NAMES)
def test_tiny_model_samples_finite_and_repeats(family, tiny, sample):
    t = tiny(family)
    a = sample(t.patcher, t, steps=2)
    assert a.shape == t.latent().shape and torch.isfinite(a).all()
    assert torch.equal(a, sample(t.patcher, t, steps=2))
    assert not torch.equal(a, sample(t.patcher, t, steps=2, seed=1))


@pytest.mark.parametrize("family", ["sd15", "flux", "ltxv"])
def test_text_length_can_vary(family, tiny, sample):
    t = tiny(family)
    out = sample(t.patcher, t, steps=1, positive=t.conditioning(length=12), negative=t.conditioning(length=3))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("family,channels", [("sd15", 4), ("sd3", 16)])
def test_bundle_encodes_samples_and_decodes(family, channels):
    import comfy.sample
    model, clip, vae = tiny_models.tiny_bundle(family, seed=0)
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a red circle on the left"))
    latent = torch.zeros(1, channels, 8, 8)
    out = comfy.sample.sample(model, comfy.sample.prepare_noise(latent, 0), 2, 4.0, "euler", "normal", cond, cond,
                              latent, seed=0, disable_pbar=True)
    image = vae.decode(out)
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()
