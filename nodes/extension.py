"""The V3 extension the host loads: the list of Attention Lab nodes."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension

from .guidance import AttnLabNAG, AttnLabPAG, AttnLabSAG, AttnLabSEG, AttnLabSkipLayerGuidance
from .inspect import AttnLabInspect
from .merge import AttnLabToDo, AttnLabToMe, AttnLabVideoMerge
from .regions import AttnLabRegion, AttnLabRegionalPrompt
from .reuse import AttnLabAttentionReuse
from .reweight import AttnLabTokenWeights
from .temperature import AttnLabTemperature
from .toy_model import AttnLabToyModel

NODES = [AttnLabTemperature, AttnLabInspect, AttnLabPAG, AttnLabSEG, AttnLabSkipLayerGuidance, AttnLabNAG,
         AttnLabSAG, AttnLabTokenWeights, AttnLabRegion, AttnLabRegionalPrompt, AttnLabToyModel,
         AttnLabToMe, AttnLabToDo, AttnLabVideoMerge, AttnLabAttentionReuse]


class AttentionLabExtension(ComfyExtension):
    async def get_node_list(self):
        return list(NODES)
