"""The ordered, immutable stack of effects that a MODEL carries; chained nodes append in graph order."""
from __future__ import annotations

from dataclasses import dataclass

from .effect import Effect


@dataclass(frozen=True)
class EffectStack:
    effects: tuple[Effect, ...] = ()

    def __deepcopy__(self, memo):  # immutable: shared between clones of a ModelPatcher
        return self

    def __len__(self) -> int:
        return len(self.effects)

    def with_effect(self, effect: Effect) -> "EffectStack":
        return EffectStack(self.effects + (effect,))

    @property
    def live(self) -> tuple[Effect, ...]:
        """Effects that can change anything (neutral ones are kept for display only)."""
        return tuple(e for e in self.effects if not e.neutral)

    def describe(self) -> list[str]:
        return [f"{i + 1}. {e.describe()}" for i, e in enumerate(self.effects)]
