"""Composition methods, one module each, registered by name (base.py: the interface every one follows).

Thin: each turns its config into the mechanism (mole/) or into a merge of the experts into the base.
"""

from mole_exp.composers.arrow import ArrowComposer
from mole_exp.composers.base import COMPOSERS, Composer, SearchData, register_composer
from mole_exp.composers.fresh_lora import FreshLoRAComposer
from mole_exp.composers.lorahub import LoRAHubComposer
from mole_exp.composers.mixer import MixerComposer
from mole_exp.composers.mole import MoLEComposer
from mole_exp.composers.nla import NLAComposer
from mole_exp.composers.no_experts import BaseOnlyComposer
from mole_exp.composers.pems import PEMsComposer
from mole_exp.composers.single import SingleComposer
from mole_exp.composers.xlora import XLoRAComposer

__all__ = [
    "ArrowComposer",
    "COMPOSERS",
    "BaseOnlyComposer",
    "Composer",
    "FreshLoRAComposer",
    "LoRAHubComposer",
    "MixerComposer",
    "MoLEComposer",
    "NLAComposer",
    "PEMsComposer",
    "SearchData",
    "SingleComposer",
    "XLoRAComposer",
    "register_composer",
]
