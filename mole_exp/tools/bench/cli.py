"""The MoLE benchmark: gate-training step time, peak memory and generation speed of MoLE, side by side.

One process, one run, on a FLAN-T5-shaped model (`--family t5`, the default) or a decoder-only causal LM with
Qwen2.5-0.5B's or Llama-3.2-1B's widths (`--family causal`), with random weights (no download):

    base        the frozen model alone; gradient flows to one scalar that scales the input embeddings (T5: the
                encoder's) (the floor: full backward through the network, nothing else trains)
    rank_space  MoLE, implementation="rank_space" (the default: never materialises the expert outputs;
                backward recomputes u = A x from x instead of keeping it)
    rank_space_saved  MoLE, implementation="rank_space_saved" (the same, keeping u and the gate's
                r-space intermediates for backward: no recomputation, more memory)
    stacked     MoLE, implementation="stacked" (the reference: materialises E (B, T, N, d_out))
    loop        MoLE with each expert's delta s_i B_i A_i x computed in a Python loop and weighted by its
                gate in output space (benchmark-only `LoopMoLELinear`; gates computed exactly as rank_space)
    peft        HF PEFT LoraModel with the same N adapters all active at once (their sum, each scaled by
                s_i / N, which is MoLE with uniform gates); adapters frozen, the input scalar trains

Per (targets, N) the same random experts serve every variant. A training step is forward + backward +
AdamW step on the trainable parameters (MoLE: task loss + alpha * L_balance, as in training), under bf16
autocast on CUDA. Before timing, each variant's fp32 outputs on a small slice of the batch are compared
(rank_space vs stacked, loop vs rank_space, PEFT vs MoLE with uniform gates) so the timings compare equal math.

Memory: `saved_gib`, the bytes autograd keeps for backward in one training forward (tensors saved by
any op, deduplicated by storage, parameters and buffers excluded; device-independent, so it is the
memory figure to read on CPU), and the peak: on CUDA `torch.cuda.max_memory_allocated` (peak over the steps, reset after set-up); on CPU the
process's peak RSS (VmHWM, reset through /proc/self/clear_refs after set-up; glibc heap trimmed first),
which includes everything the process holds, so compare `peak_over_base_gib`, not absolute values.

On CPU the glibc heap keeps freed blocks, so peak RSS overstates allocation-heavy variants (PEFT, loop);
`--cpu-exact-rss` fixes the mmap threshold (truer memory, slower steps).

Gate readings (`gate.expert_output` / `gate.normalization`, Eqs. 8-9): `--gate-readings delta/per_expert,full/joint`
runs every MoLE variant once per reading, side by side; the first reading's records keep the plain variant
names, the others are named `<variant> [<expert_output>/<normalization>]`.

Run: `python scripts/bench_mole.py --device cuda` (defaults: flan-t5-large shape, N=8,24,48,128,
targets q/v and all linears, rank 16, batch 32 x (256 + 32) tokens). `--model tiny --device cpu` for a
quick CPU run. `--family causal` times MoLE on a decoder-only shape (`--model qwen2.5-0.5b`, the default, `llama-3.2-1b`,
`tiny-causal`; `--layers N` and `--set hidden_size=...,intermediate_size=...,num_attention_heads=...,num_key_value_heads=...,
num_hidden_layers=...,vocab_size=...` change it): each example is one right-padded sequence of a prompt ([L/2, L] tokens,
`--source-len`) and `--target-len` target tokens with the loss on the targets; generation starts from the prompts, padded
on the left; targets q_proj/v_proj (`qv`) or every block linear (`all`). Under a device-time limit add e.g. `--max-config-seconds 60 --gen-repeats 2 --time-budget-s 420`
(the JSON and markdown are rewritten after every configuration, so a cut-off run keeps what it measured).
Configurations estimated not to fit (or far too slow) are recorded as skipped with the estimate; `--no-skip`
runs them anyway (CUDA OOMs are caught and recorded). See `python scripts/bench_mole.py --help`.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from mole_exp.mole.gates import EXPERT_OUTPUTS, NORMALIZATIONS, check_reading
from mole_exp.tools.bench.measure import log
from mole_exp.tools.bench.peers import PEERS, run_peers
from mole_exp.tools.bench.report import render_markdown
from mole_exp.tools.bench.runner import Bench
from mole_exp.tools.bench.variants import VARIANTS
from mole_exp.tools.bench.workload import (
    BENCH_FAMILIES,
    CAUSAL_OVERRIDES,
    CAUSAL_SHAPES,
    CAUSAL_TARGET_SETS,
    SHAPES,
    TARGET_SETS,
    causal_config,
    default_shape,
    family_shapes,
    target_sets,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--family", default="t5", choices=sorted(BENCH_FAMILIES), help="t5: FLAN-T5 shapes; causal: decoder-only LM shapes")
    parser.add_argument("--model", default=None, help=f"shape of the random-weight model: t5 {sorted(SHAPES)} (default flan-t5-large), "
                                                      f"causal {sorted(CAUSAL_SHAPES)} (default qwen2.5-0.5b)")
    parser.add_argument("--set", dest="overrides", default="", help=f"causal only: comma-separated key=value overrides of the shape, keys {list(CAUSAL_OVERRIDES)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="auto: bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--model-dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of the frozen weights")
    parser.add_argument("--expert-dtype", default="auto", choices=["auto", "model", "bfloat16"],
                        help="dtype the experts are held in, by every variant: auto = bfloat16 under bf16 autocast, else the model's")
    parser.add_argument("--layers", type=int, default=None, help="blocks (T5: encoder and decoder each; default: the shape's); widths unchanged")
    parser.add_argument("--experts", default="8,24,48,128", help="comma-separated expert counts N")
    parser.add_argument("--targets", default="qv,all", help=f"comma-separated target sets from {sorted(TARGET_SETS)} (t5: {TARGET_SETS}; causal: {CAUSAL_TARGET_SETS})")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)} (base always runs)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--source-len", type=int, default=256)
    parser.add_argument("--target-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed training steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    parser.add_argument("--gen-tokens", type=int, default=32, help="greedy new tokens per generation (0: no generation)")
    parser.add_argument("--gen-repeats", type=int, default=3)
    parser.add_argument("--gen-batch", type=int, default=None, help="generation batch size (default: --batch)")
    parser.add_argument("--granularity", default="layer", choices=["matrix", "layer", "block", "network"])
    parser.add_argument("--input-form", default="concat", choices=["concat", "per_expert", "hidden"])
    parser.add_argument("--scope", default="sequence", choices=["sequence", "token"])
    parser.add_argument("--gate-readings", default="delta/per_expert",
                        help="comma-separated gate readings <expert_output>/<normalization> "
                             f"(expert_output in {list(EXPERT_OUTPUTS)}, normalization in {list(NORMALIZATIONS)}); "
                             "every MoLE variant runs once per reading, side by side (e.g. delta/per_expert,full/joint)")
    parser.add_argument("--gate-init-std", type=float, default=0.01, help="random gates, so the agreement check is not trivially uniform")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of L_balance in the MoLE step")
    parser.add_argument("--dropout", type=float, default=0.1, help="model dropout (FLAN-T5: 0.1)")
    parser.add_argument("--check-batch", type=int, default=2, help="examples in the fp32 agreement check (0: no check)")
    parser.add_argument("--max-config-seconds", type=float, default=None, help="skip/cut a configuration projected to take longer (default: 120 on CPU, 300 on CUDA)")
    parser.add_argument("--mem-limit-gib", type=float, default=None, help="skip a configuration estimated to need more (default: base peak + 50%% of available RAM on CPU, 1.5x the GPU's memory on CUDA)")
    parser.add_argument("--no-skip", action="store_true", help="run every configuration, whatever the estimates say")
    parser.add_argument("--no-rebase", dest="rebase", action="store_false",
                        help="measure the base once only (default: again before each (targets, N) group; ratios use that one)")
    parser.add_argument("--time-budget-s", type=float, default=0.0, help="stop starting new configurations after this many seconds (0: no limit)")
    parser.add_argument("--cpu-exact-rss", action="store_true",
                        help="CPU: fix glibc's mmap threshold so peak RSS tracks live tensors (slower steps; default off)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU); default: torch's choice")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peers", default=None,
                        help="comma-separated subset of mole,xlora,arrow: instead of the variant grid, time X-LoRA's training step and "
                             "Arrow's routed forward beside MoLE's, as the harness's composers, on the same shape (tools/bench/peers.py)")
    parser.add_argument("--arrow-top-k", type=int, default=3, help="--peers: Arrow's top_k (PEFT's default 3)")
    parser.add_argument("--out", default=None, help="JSON path (default outputs/bench/bench_<model>_<device>_<time>.json); the markdown goes next to it")
    args = parser.parse_args(argv)
    shapes = family_shapes(args.family)
    args.model = args.model or default_shape(args.family)
    if args.model not in shapes:
        parser.error(f"--model {args.model!r} is not a {args.family} shape; choose one of {sorted(shapes)} (or --family "
                     f"{'causal' if args.family == 't5' else 't5'})")
    args.overrides = parse_overrides(parser, args.overrides)
    if args.overrides and args.family != "causal":
        parser.error(f"--set {args.overrides}: applies to --family causal only")
    if args.family == "causal":
        try:
            causal_config(args.model, args.layers, args.overrides)
        except ValueError as error:
            parser.error(str(error))
    args.experts = [int(x) for x in str(args.experts).split(",") if x.strip()]
    args.targets = [t.strip() for t in str(args.targets).split(",") if t.strip()]
    args.variants = [v.strip() for v in str(args.variants).split(",") if v.strip()]
    args.gate_readings = list(dict.fromkeys(r.strip() for r in str(args.gate_readings).split(",") if r.strip()))
    if not args.gate_readings:
        parser.error("--gate-readings needs at least one <expert_output>/<normalization>")
    for reading in args.gate_readings:
        expert_output, _, normalization = reading.partition("/")
        try:
            check_reading(args.input_form, expert_output, normalization)
        except ValueError as error:
            parser.error(f"--gate-readings {reading!r}: {error}")
    for target in args.targets:
        if target not in target_sets(args.family):
            parser.error(f"--targets: {target!r} is not one of {sorted(target_sets(args.family))}")
    for variant in args.variants:
        if variant not in VARIANTS:
            parser.error(f"--variants: {variant!r} is not one of {list(VARIANTS)}")
    args.peers = [p.strip() for p in str(args.peers).split(",") if p.strip()] if args.peers else []
    for peer in args.peers:
        if peer not in PEERS:
            parser.error(f"--peers: {peer!r} is not one of {list(PEERS)}")
    if not args.experts or min(args.experts) < 1:
        parser.error("--experts needs positive integers")
    if args.layers is not None and args.layers < 1:
        parser.error(f"--layers {args.layers}: need at least 1 encoder and 1 decoder block")
    return args


def parse_overrides(parser: argparse.ArgumentParser, text: str) -> dict[str, int]:
    """"hidden_size=256,num_hidden_layers=4" -> {"hidden_size": 256, "num_hidden_layers": 4}."""
    overrides: dict[str, int] = {}
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in CAUSAL_OVERRIDES or not value.strip().isdigit():
            parser.error(f"--set {item!r}: expected key=<positive integer> with key in {list(CAUSAL_OVERRIDES)}")
        overrides[key.strip()] = int(value)
    return overrides


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.peers:
        return run_peers(args)
    bench = Bench(args)
    result = bench.run()
    markdown = render_markdown(result)
    print(markdown)
    log(f"wrote {bench.out} and {bench.md_path}")
    return result


if __name__ == "__main__":  # pragma: no cover
    main()
