"""LoRAHub search speed: candidate evaluations per second on the tiny T5 (CPU by default).

A candidate is what LoRAHub's NGOpt asks for once: merge the N experts' A and B with its weights into
the base weights in place, and compute the loss on the k few-shot examples. The script times the whole
search (`LoRAHubComposer.search`, nevergrad included) and, separately, the two halves (merge only,
loss only), over `--repeats` runs, and writes one JSON report.

    python scripts/bench_lorahub.py --num-experts 8 --budget 40 --output bench_lorahub.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mole_exp.composers.lorahub import LoRAHubComposer
from mole_exp.experts import load_experts
from mole_exp.models import build_tiny, default_cache_dir
from mole_exp.pipeline import make_search_data

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZER = Path(os.environ.get("MOLE_EXP_DATA", ROOT.parent / "shared" / "data")) / "t5_tokenizer"

# FLAN-style NLI prompts of realistic length (the loss cost depends on the token count, not the words)
EXAMPLES = [
    {
        "source": f"Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis?\nOPTIONS:\n- yes\n- it is not possible to tell\n- no",
        "target": target,
    }
    for premise, hypothesis, target in [
        ("A man in a blue shirt is playing a guitar on a crowded street corner.", "A man is making music.", "yes"),
        ("Two children are building a sandcastle at the beach while their parents watch.", "The children are at school.", "no"),
        ("The committee postponed the vote until more information about the budget was available.", "The vote happened.", "no"),
        ("A woman is reading a book in a quiet library near the window.", "A woman is reading a novel.", "it is not possible to tell"),
        ("The old bridge was closed to traffic after engineers found cracks in its supports.", "The bridge is closed.", "yes"),
        ("Several students gathered in the hall to hear the visiting author speak.", "Nobody came to the talk.", "no"),
        ("A chef is chopping vegetables in a busy restaurant kitchen.", "Someone is cooking.", "yes"),
        ("The team celebrated after winning the championship in overtime.", "The team lost the final.", "no"),
    ]
]


class FixedExamples:
    """The pipeline's SearchData wants a task with a training mixture; these examples are it."""

    def __init__(self, examples):
        self.examples = examples

    def train_mixture(self, mixture, cap):
        return list(self.examples)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-experts", type=int, default=8)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--budget", type=int, default=40, help="candidates per search (LoRAHub: 40)")
    parser.add_argument("--num-examples", type=int, default=5, help="k few-shot examples (LoRAHub: 5)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokenizer-dir", default=str(DEFAULT_TOKENIZER))
    parser.add_argument("--cache-dir", default=default_cache_dir(), help="where the tiny expert library is cached")
    parser.add_argument("--output", default="bench_lorahub.json")
    return parser.parse_args(argv)


def rate(count: int, seconds: list[float]) -> float:
    return count / statistics.median(seconds)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = build_tiny(args.tokenizer_dir)
    experts_cfg = OmegaConf.create(
        {
            "source": "tiny",
            "library_dir": str(Path(args.cache_dir) / "tiny_experts"),
            "tiny": {"num_adapters": args.num_experts, "rank": args.rank, "alpha": 2 * args.rank, "targets": ["q", "v"], "seed": 0},
            "count": None,
            "selection": "first",
            "seed": 0,
            "layer_range": None,
        }
    )
    bank = load_experts(experts_cfg, base)
    base.model.to(args.device)
    composer = LoRAHubComposer(budget=args.budget, num_examples=args.num_examples, progress=False)
    composer.compose(base, bank)
    cfg = OmegaConf.create(
        {"seed": 0, "data": {"max_source_length": 512, "max_target_length": 128, "eval_batch_size": 32, "mixture": "proportional", "mixture_cap": None}}
    )
    data = make_search_data(base, FixedExamples(EXAMPLES), cfg)
    examples = composer.few_shot_examples(data)
    generator = torch.Generator().manual_seed(0)
    candidates = [(torch.rand(len(bank), generator=generator) * 3 - 1.5).tolist() for _ in range(args.budget)]

    search_seconds, merge_seconds, loss_seconds = [], [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        composer.search(data)
        search_seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        for weights in candidates:
            composer.merge_weights(weights, composer.merge, composer.factors_form)
        merge_seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        for _ in candidates:
            composer.loss(examples, data)
        loss_seconds.append(time.perf_counter() - started)
    composer.merger.restore()

    report = {
        "what": "LoRAHub candidate evaluations per second (merge A and B in place + loss on k examples)",
        "model": base.model_id,
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "num_experts": len(bank),
        "num_adapted_linears": len(bank.targets),
        "rank": bank.rank,
        "num_examples": args.num_examples,
        "candidates": args.budget,
        "repeats": args.repeats,
        "search_seconds": search_seconds,
        "candidates_per_second": rate(args.budget, search_seconds),
        "merges_per_second": rate(args.budget, merge_seconds),
        "losses_per_second": rate(args.budget, loss_seconds),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "search_seconds"}, indent=2))
    return report


if __name__ == "__main__":
    main()
