"""LoRAHub search speed: our `lorahub` composer against the official `lorahub==0.1.0` package, side by side.

One process, one run. For each N (number of experts), on the same base (the tiny T5 with the real T5
vocabulary, saved to a folder for the official package), the same N PEFT adapters (the tiny library, saved
on disk by PEFT) and the same k few-shot examples, both sides evaluate LoRAHub's objective

    objective(w) = loss(W0 + dW(w)) / k + 0.05 * mean_i |w_i|      (lorahub.algorithm.get_score)

for the same candidate weight vectors w: the `--candidates` (40, LoRAHub's budget) that NGOpt asks for in one
search of ours (seeded), and the script reports objective evaluations per second for both and their ratio
(ours / official). The rounds alternate ours / official, so both see the same machine load; the ratio is the
median of the per-round ratios.

Before timing it checks that both compute the same objective: on every candidate,
|ours - official| <= 1e-6 |official| (`objective_max_rel_diff`; float32 rounding: ours merges W0 + dW, the
package runs W0 x + B (A x) through PEFT's LoRA layers, so they agree to a few ulps, not bit for bit; on
extreme candidates, uniform over [-1.5, 1.5]^N, the relative gap reaches ~3e-6). The official package needs one change for that, made here as a monkeypatch
and nowhere else: with recent peft, `load_base_model_and_lora_modules` caches each module's state dict
from `get_peft_model_state_dict`, and the last module's cached tensors are the live LoRA parameters of the
model, so every `set_peft_model_state_dict` during the search overwrites that cached module and the
objective of a candidate depends on the candidates evaluated before it. The patch clones the cache after
loading (`clone_cached_modules`); `unpatched_drift` records the defect: the same candidate evaluated twice,
another candidate in between, with the cache as the package leaves it.

Install the official package for this benchmark without its dependency list (it declares an unrelated
`dataset` package and pandas; everything it imports comes with mole-exp's own dependencies):

    pip install --no-deps lorahub==0.1.0        # or --target <dir> and put <dir> on PYTHONPATH
    python scripts/bench_lorahub.py --experts 8,128 --threads 1 --output outputs/bench/lorahub.json

Without the package the script measures ours alone and says why (`--official require` makes that an error).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from mole_exp.base.models import BaseModel, build_tiny, mole_exp_cache_dir
from mole_exp.composers.lorahub import LoRAHubComposer
from mole_exp.experts.loading import load_experts
from mole_exp.training.fit import make_search_data

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TOKENIZER = Path(os.environ.get("MOLE_EXP_DATA", ROOT.parent / "shared" / "data")) / "t5_tokenizer"
OFFICIAL_VERSION = "0.1.0"
TARGET_RATIO = 1.5  # ours / official evaluations per second, at every N
OBJECTIVE_TOLERANCE = 1e-6  # relative: |ours - official| <= 1e-6 |official| on every candidate

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

    def __init__(self, examples: list[dict[str, Any]]):
        self.examples = examples

    def train_mixture(self, mixture: str, cap: int | None) -> list[dict[str, Any]]:
        return list(self.examples)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", default="8,128", help="comma-separated N (number of experts)")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=40, help="candidate weight vectors per round (LoRAHub's budget: 40)")
    parser.add_argument("--num-examples", type=int, default=5, help="k few-shot examples (LoRAHub: 5)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (each: ours, then official)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--official", choices=("auto", "require", "skip"), default="auto",
                        help="auto: compare when lorahub is importable; require: fail without it; skip: ours only")
    parser.add_argument("--tokenizer-dir", default=str(DEFAULT_TOKENIZER))
    parser.add_argument("--cache-dir", default=mole_exp_cache_dir(), help="where the tiny expert libraries are cached")
    parser.add_argument("--output", default="outputs/bench/lorahub.json")
    return parser.parse_args(argv)


# ---------------------------------------------------------------- the official package


def import_official() -> tuple[Any | None, str | None]:
    """(lorahub.algorithm, None), or (None, why it is not available)."""
    try:
        import lorahub
        import lorahub.algorithm as algorithm
    except ImportError as error:
        return None, f"the official lorahub package is not importable ({error}); pip install --no-deps lorahub=={OFFICIAL_VERSION}"
    version = getattr(lorahub, "__version__", None)
    if version is None:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as installed_version

        with contextlib.suppress(PackageNotFoundError):
            version = installed_version("lorahub")
    if version is not None and version != OFFICIAL_VERSION:
        return None, f"lorahub {version} is installed; this benchmark compares against {OFFICIAL_VERSION}"
    return algorithm, None


def clone_cached_modules(cache: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
    """The benchmark's one change to the official package: its module cache as copies, not live parameters."""
    return {module: {key: tensor.detach().clone() for key, tensor in state.items()} for module, state in cache.items()}


class Official:
    """`lorahub.algorithm` set up as `lorahub_learning` sets it up, with the module cache cloned."""

    def __init__(self, algorithm: Any, base_dir: str, adapter_dirs: list[str], examples: list[dict[str, Any]]):
        self.algorithm = algorithm
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per module
            self.model, self.tokenizer, raw_cache = algorithm.load_base_model_and_lora_modules(list(adapter_dirs), base_dir)
            self.dataset = algorithm.load_dataset([e["source"] for e in examples], [e["target"] for e in examples], self.tokenizer)
        self.raw_cache = raw_cache
        self.cache = clone_cached_modules(raw_cache)

    def objective(self, cache: dict[str, dict[str, torch.Tensor]] | None = None) -> Callable[[list[float]], float]:
        algorithm = self.algorithm
        return partial(
            algorithm.get_score, model=self.model, cache=self.cache if cache is None else cache, example_dataset=self.dataset,
            batch_size=None, get_loss=algorithm.default_get_loss, get_regular=algorithm.default_l1_regularization,
        )

    def unpatched_drift(self, num_experts: int) -> float:
        """|objective(c) - objective(c)| with objective(c') in between (c, c' seeded, uniform in [-1.5, 1.5]^N),
        on the package's own cache: the defect the patch removes (it alters that cache, so this runs last)."""
        generator = torch.Generator().manual_seed(0)
        c, c_between = ((torch.rand(num_experts, generator=generator, dtype=torch.float64) * 3 - 1.5).tolist() for _ in range(2))
        objective = self.objective(self.raw_cache)
        first = objective(c)
        objective(c_between)
        return abs(objective(c) - first)


def save_base(base: BaseModel, folder: Path) -> str:
    base.model.save_pretrained(str(folder))
    base.tokenizer.save_pretrained(str(folder))
    return str(folder)


# ---------------------------------------------------------------- one N


def tiny_experts_cfg(cache_dir: str, num_experts: int, rank: int):
    return OmegaConf.create(
        {
            "_target_": "mole_exp.experts.sources.tiny",
            "library_dir": str(Path(cache_dir) / "tiny_experts"),
            "tiny": {"num_adapters": num_experts, "rank": rank, "alpha": 2 * rank, "targets": ["q", "v"], "seed": 0},
            "count": None, "selection": "first", "seed": 0, "layer_range": None,
        }
    )


def timed(objective: Callable[[list[float]], Any], candidates: list[list[float]]) -> float:
    """Objective evaluations per second over the candidates."""
    started = time.perf_counter()
    for weights in candidates:
        objective(weights)
    return len(candidates) / (time.perf_counter() - started)


def measure(args: argparse.Namespace, num_experts: int, base: BaseModel, base_dir: str | None, algorithm: Any | None) -> dict[str, Any]:
    bank = load_experts(tiny_experts_cfg(args.cache_dir, num_experts, args.rank), base)
    composer = LoRAHubComposer(budget=args.candidates, num_examples=args.num_examples, progress=False)
    composer.compose(base, bank)
    base.model.to(args.device)
    data = make_search_data(base, FixedExamples(EXAMPLES), OmegaConf.create(
        {"seed": 0, "data": {"max_source_length": 512, "max_target_length": 128, "eval_batch_size": 32, "mixture": "proportional", "mixture_cap": None}}
    ))
    examples = composer.few_shot_examples(data)
    started = time.perf_counter()
    search = composer.search(data)  # a whole search, nevergrad included (ours); its candidates are the ones timed
    search_seconds = time.perf_counter() - started
    composer.merger.restore()
    candidates = [step["weights"] for step in search["steps"]]
    ours = composer.prepared_objective(examples, data)

    def ours_value(weights: list[float]) -> float:
        return ours(weights)[0]

    result: dict[str, Any] = {
        "num_experts": num_experts, "num_adapted_linears": len(bank.targets), "rank": bank.rank,
        "ours_search_candidates_per_second": len(candidates) / search_seconds,
    }
    official = Official(algorithm, base_dir, bank.sources, examples) if algorithm is not None else None
    if official is not None:
        official_value = official.objective()
        pairs = [(ours_value(w), official_value(w)) for w in candidates]
        result["objective_max_abs_diff"] = max(abs(a - b) for a, b in pairs)
        result["objective_max_rel_diff"] = max(abs(a - b) / abs(b) for a, b in pairs)
        result["objective_match"] = result["objective_max_rel_diff"] <= OBJECTIVE_TOLERANCE
    timed(ours_value, candidates[:3])  # warm-up
    if official is not None:
        timed(official_value, candidates[:3])
    ours_rates, official_rates = [], []
    for _ in range(args.repeats):
        ours_rates.append(timed(ours_value, candidates))
        if official is not None:
            official_rates.append(timed(official_value, candidates))
    result["ours_evals_per_second"] = statistics.median(ours_rates)
    result["ours_rates"] = ours_rates
    if official is not None:
        ratios = [o / f for o, f in zip(ours_rates, official_rates, strict=True)]
        result.update(
            official_evals_per_second=statistics.median(official_rates),
            official_rates=official_rates,
            ratio=statistics.median(ratios),
            ratio_per_round=ratios,
            meets_target=statistics.median(ratios) >= TARGET_RATIO,
            unpatched_drift=official.unpatched_drift(num_experts),
        )
    composer.merger.restore()
    base.model.to("cpu")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    algorithm, why_not = (None, "--official skip") if args.official == "skip" else import_official()
    if algorithm is None and args.official == "require":
        raise SystemExit(why_not)
    if algorithm is not None and args.device == "cpu" and torch.cuda.is_available():
        raise SystemExit("the official lorahub package always runs on CUDA when it is present; use --device cuda here")
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()
    base = build_tiny(args.tokenizer_dir)
    experts = [int(n) for n in str(args.experts).split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_lorahub_base_") as folder:
        base_dir = save_base(base, Path(folder)) if algorithm is not None else None
        results = [measure(args, n, base, base_dir, algorithm) for n in experts]
    report = {
        "what": "LoRAHub objective evaluations per second (merge the candidate, loss on k examples, + L1): ours vs lorahub==0.1.0",
        "model": base.model_id,
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "num_examples": args.num_examples,
        "candidates": args.candidates,
        "repeats": args.repeats,
        "official": f"lorahub=={OFFICIAL_VERSION}, module cache cloned after loading" if algorithm is not None else None,
        "official_missing": why_not if algorithm is None else None,
        "target_ratio": TARGET_RATIO,
        "objective_tolerance": OBJECTIVE_TOLERANCE,
        "results": results,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    keys = ("ours_evals_per_second", "official_evals_per_second", "ratio", "objective_max_abs_diff", "objective_max_rel_diff")
    summary = {r["num_experts"]: {k: r.get(k) for k in keys} for r in results}
    print(json.dumps(summary, indent=2))
    mismatched = [r["num_experts"] for r in results if r.get("objective_match") is False]
    if mismatched:
        raise SystemExit(f"the objectives differ by more than {OBJECTIVE_TOLERANCE} at N={mismatched} (see {args.output})")
    return report
