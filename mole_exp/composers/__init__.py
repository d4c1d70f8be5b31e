"""Composition methods, one module each, registered by name (see base.py for the interface)."""

from mole_exp.composers.base import COMPOSERS, Composer, SearchData, register_composer
from mole_exp.composers.mole import MoLEComposer

__all__ = ["COMPOSERS", "Composer", "MoLEComposer", "SearchData", "register_composer"]
