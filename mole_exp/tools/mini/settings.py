"""How big the mini reproduction is: the full run (`make reproduce-mini`) and the --fast one (tests).

Each seed k is one replicate of the whole study; it re-draws, and each run records:
- the expert library's training: LoRA initialisation and data order (`scripts/train_experts.py seed=k`),
- the task data: training and test examples of every synthetic task (`task.args.data_seed=k`), the same
  draw for the library and for the compositions, so no test input is ever a training input,
- the composer's initialisation, data order, few-shot and validation draws (`seed=k`; LoRAHub's and PEMs'
  search seeds follow it), and the random library's matrices (`experts.random.seed=k`).
The small base is pretrained once (its own seed and data pool) and shared by every replicate.

Two model families (`--families`): `t5` (model=small_synthetic, every study) and `causal` (model=small_synthetic_causal,
a Llama-shaped decoder-only base with Llama 3's real tokenizer: Table 3's study and the two-skill task, with PEFT's
X-LoRA and Arrow beside the composers). The causal base is sized down: its 128,256-token head makes every training
step ~4x a T5 step of the same batch on a CPU (measured: 0.38 s for a LoRA step of batch 12, 1 thread, idle): two seeds,
fewer steps, ~25 min from scratch on 2 idle cores (estimate from measured pieces: README "The mini reproduction").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

STUDIES = ("table3", "compose", "granularity", "balance", "count", "mask")  # plan.py says what each one runs
FAMILIES = ("t5", "causal")


@dataclass(frozen=True)
class MiniSettings:
    name: str
    seeds: tuple[int, ...]
    tasks: tuple[str, ...]  # datasets of conf/task/synthetic.yaml that get an expert (and are composed)
    model: tuple[str, ...]  # overrides of conf/model/small_synthetic.yaml
    data: tuple[str, ...]  # overrides of both synthetic task configs (task.args.*)
    experts_training: tuple[str, ...]  # overrides of conf/train_experts.yaml's experts_training
    compose: tuple[str, ...]  # overrides shared by every composition run (conf/train.yaml)
    counts: tuple[int, ...]  # Table 6: experts.count values besides "all"
    temperatures: tuple[float, ...]  # Table 7: fixed raised gate temperatures (with alpha = 0)
    granularities: tuple[str, ...] = ("matrix", "layer", "block", "network")
    default_granularity: str = "layer"  # the MoLE of Tables 3, 6, 7 and Figure 8 (conf/train.yaml's default)
    controls: tuple[str, ...] = ("base", "fresh_lora", "random_library")  # beside every composer on both held-out tasks
    random_match: str = "factors"  # which norms the random library shares with the real one (factors | delta)
    resamples: int = 1000  # bootstrap resamples of every interval
    family: str = "t5"  # t5 | causal: which base the study composes on
    model_option: str = "small_synthetic"  # conf/model/<option>.yaml
    studies: tuple[str, ...] = STUDIES  # the studies of plan.py this family runs
    peers: tuple[str, ...] = ()  # composers beside Table 3's and the two-skill task's (PEFT's X-LoRA and Arrow)


COMPOSE_COMMON = (
    "trainer=cpu",
    "+trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=10",
    "checkpoint_every_n_steps=null",
    "generation.progress=false",
    "data.max_source_length=64",
    "data.max_target_length=32",
)

FULL = MiniSettings(
    name="full",
    seeds=(0, 1, 2),
    tasks=("copy", "reverse", "sort", "shift", "dedupe", "add"),
    model=(),  # conf/model/small_synthetic.yaml as it is
    data=(),  # conf/task/synthetic*.yaml as they are
    experts_training=(),  # conf/train_experts.yaml as it is
    # the paper's 800 steps of batch 12; AdamW's customary 1e-3 (the paper's 1e-5 is for FLAN-T5's scale), for all
    compose=(*COMPOSE_COMMON, "trainer.max_steps=800", "data.batch_size=12", "data.eval_batch_size=100",
             "optimizer.lr=1.0e-3"),
    counts=(2, 4),
    temperatures=(2.0, 5.0, 10.0),
    peers=("arrow",),  # PEFT's Arrow runs on T5 too (X-LoRA does not: composers/xlora.py)
)

FAST = MiniSettings(
    name="fast",
    seeds=(0,),
    tasks=("copy", "reverse", "add"),
    model=("model.architecture.d_model=32", "model.architecture.d_kv=8", "model.architecture.d_ff=64",
           "model.architecture.num_layers=1", "model.architecture.num_decoder_layers=1", "model.architecture.num_heads=2",
           "model.pretrain.steps=4", "model.pretrain.examples_per_kind=16", "model.pretrain.batch_size=8"),
    data=("task.args.num_train=16", "task.args.num_test=4"),
    experts_training=("experts_training.train.steps=2", "experts_training.train.batch_size=8", "experts_training.lora.rank=4",
                      "experts_training.lora.alpha=8", "experts_training.eval_limit=4"),
    compose=(*COMPOSE_COMMON, "trainer.max_steps=3", "data.batch_size=4", "data.eval_batch_size=16", "optimizer.lr=1.0e-2"),
    counts=(2,),
    temperatures=(5.0,),
    granularities=("layer", "network"),
    resamples=200,
    peers=("arrow",),
)

CAUSAL_EXPERTS = ("experts_training.lora.targets=[q_proj,v_proj]",)  # the T5 library's q/v, by the causal LM's names
# the causal family: Table 3's study and the two-skill task with PEFT's peers; fewer seeds and steps than T5's
# (its vocabulary-sized head; see the module docstring, and README "Mini reproduction" for the measured times)
CAUSAL_FULL = replace(
    FULL,
    name="causal_full",
    family="causal",
    model_option="small_synthetic_causal",
    model=(),
    seeds=(0, 1),
    experts_training=(*CAUSAL_EXPERTS, "experts_training.train.steps=100", "experts_training.train.batch_size=16"),
    compose=(*COMPOSE_COMMON, "trainer.max_steps=150", "data.batch_size=12", "data.eval_batch_size=100", "optimizer.lr=1.0e-3"),
    studies=("table3", "compose"),
    peers=("xlora", "arrow"),
)
CAUSAL_FAST = replace(
    FAST,
    name="causal_fast",
    family="causal",
    model_option="small_synthetic_causal",
    model=("model.architecture.hidden_size=32", "model.architecture.intermediate_size=64", "model.architecture.num_hidden_layers=1",
           "model.architecture.num_attention_heads=2", "model.architecture.num_key_value_heads=1", "model.pretrain.steps=4",
           "model.pretrain.examples_per_kind=16", "model.pretrain.batch_size=8"),
    experts_training=(*CAUSAL_EXPERTS, *FAST.experts_training),
    studies=("table3", "compose"),
    peers=("xlora", "arrow"),
)

PRESETS = {s.name: s for s in (FULL, FAST, CAUSAL_FULL, CAUSAL_FAST)}


def preset(family: str, fast: bool) -> MiniSettings:
    """The settings of one family (`t5` | `causal`), full or --fast."""
    if family not in FAMILIES:
        raise ValueError(f"mini reproduction family {family!r} is not one of {list(FAMILIES)}")
    return PRESETS[("" if family == "t5" else f"{family}_") + ("fast" if fast else "full")]
