"""Fixtures for the host tier: tiny real models, the pack's modules, and a recording effect."""
from __future__ import annotations

import functools

import pytest


@functools.lru_cache(maxsize=None)
def _tiny(family: str):
    from tools import tiny_models
    return tiny_models.build(family, seed=0)


@pytest.fixture
def tiny():
    """tiny(family) -> a cached TinyModel (never patch its patcher in place: clone)."""
    return _tiny


@pytest.fixture
def sample():
    from tools import tiny_models

    def run(patcher, tiny_model, steps=3, cfg=4.0, seed=0, **kw):
        return tiny_models.sample(patcher, tiny_model, steps=steps, cfg=cfg, seed=seed, **kw)
    return run


@pytest.fixture
def recorder():
    """recorder(schedule=None) -> an Effect that records every site it applies at and changes nothing."""
    from attention_lab.attention.effect import Effect
    from attention_lab.attention.schedule import Schedule

    class Recorder(Effect):
        node_id = "TestRecorder"

        def __init__(self, schedule=None):
            super().__init__(schedule or Schedule())
            self.sites = []

        def pre(self, call, site):
            self.sites.append(site)
            return call

    return Recorder


@pytest.fixture
def engine():
    from attention_lab.nodes import host
    return host


@pytest.fixture
def fresh_warnings():
    """Clears the engine's warn-once memory so a test sees its own warnings."""
    from attention_lab.nodes import dispatch
    dispatch._warned.clear()
    yield
    dispatch._warned.clear()


def temperature(scale=1.5, **schedule):
    from attention_lab.attention.schedule import Schedule
    from attention_lab.attention.temperature import Temperature
    return Temperature(Schedule(**schedule), scale=scale)


@pytest.fixture
def temp():
    """temp(scale, **schedule) -> a Temperature effect."""
    return temperature


def pytest_sessionfinish(session, exitstatus):
    """Free the cached models while the host's modules still exist (ModelPatcher.__del__ needs them)."""
    import gc
    _tiny.cache_clear()
    gc.collect()
