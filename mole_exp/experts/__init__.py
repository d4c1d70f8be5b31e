"""LoRA experts: PEFT adapter I/O and checks, libraries (folders, Hub id lists, the tiny and random ones), the
catalogue of what each expert was trained on, expert pools, and the stacked ExpertBank the mechanism reads.
"""
