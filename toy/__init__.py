"""The pack's toy world and model: a synthetic world of flat shapes (``toy.world``, pure torch) and the small
text-to-image model trained on it (weights in ``toy/weights``, loaded by the ``AttnLabToyModel`` node)."""
