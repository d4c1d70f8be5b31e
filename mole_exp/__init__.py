"""mole-exp: Mixture of LoRA Experts (MoLE) on FLAN-T5: frozen base + frozen LoRA experts + learned gates.

Core: base <- experts <- mole <- composers <- training (with tasks, evaluation, reporting); tools/ sits on top.
"""
