import torch

from attention_lab.attention.effect import AttnCall, Effect, per_item, run_effects
from attention_lab.attention.schedule import Schedule
from attention_lab.attention.site import Site, TokenLayout
from attention_lab.attention.stack import EffectStack


class Recorder(Effect):
    def __init__(self, name, log, neutral=False):
        super().__init__(Schedule())
        self.name, self.log, self._neutral = name, log, neutral

    @property
    def neutral(self):
        return self._neutral

    def pre(self, call, site):
        self.log.append(("pre", self.name))
        return call.with_(q=call.q + 1)

    def attend(self, call, site, inner):
        self.log.append(("attend>", self.name))
        out = inner(call)
        self.log.append(("attend<", self.name))
        return out

    def post(self, out, call, site):
        self.log.append(("post", self.name))
        return out * 2


SITE = Site("sd15", "self", None, 1, 2, TokenLayout(3, 3), 1.0)


def test_stack_order_is_nested_application():
    log = []
    call = AttnCall(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2))
    effects = [Recorder("a", log), Recorder("b", log)]
    out = run_effects(effects, call, SITE, lambda c: (log.append(("backend", float(c.q[0, 0, 0, 0]))), c.q.sum(1))[1])
    assert log == [("pre", "a"), ("pre", "b"), ("attend>", "a"), ("attend>", "b"), ("backend", 2.0),
                   ("attend<", "b"), ("attend<", "a"), ("post", "b"), ("post", "a")]
    assert torch.equal(out, torch.full((1, 3, 2), 8.0))


def test_innermost_effects_nest_nearest_the_kernel_wherever_stacked():
    class Shrinker(Recorder):
        innermost = True

    log = []
    call = AttnCall(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2))
    effects = [Shrinker("s", log), Recorder("a", log), Shrinker("t", log), Recorder("b", log)]
    run_effects(effects, call, SITE, lambda c: c.q.sum(1))
    assert [name for stage, name in log if stage == "attend>"] == ["a", "b", "s", "t"]
    assert [name for stage, name in log if stage == "pre"] == ["a", "b", "s", "t"]


def test_stack_is_immutable_and_neutral_effects_are_display_only():
    log = []
    live, idle = Recorder("a", log), Recorder("b", log, neutral=True)
    s1 = EffectStack().with_effect(live)
    s2 = s1.with_effect(idle)
    assert len(s1) == 1 and len(s2) == 2
    assert s2.live == (live,) and [e for e in s2.effects if e.applies(SITE)] == [live]
    assert "neutral" in s2.describe()[1]
    import copy
    assert copy.deepcopy(s2) is s2


def test_per_item():
    v = torch.full((4, 1, 1, 1), 3.0)
    assert per_item(v, None, 1.0) is v
    assert per_item(v, (True, False, False, True), 1.0).flatten().tolist() == [3.0, 1.0, 1.0, 3.0]
