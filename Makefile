# vitkit developer commands. `make demo` installs and fine-tunes on a generated folder; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SRC    := $(wildcard vitkit tests scripts benchmarks)

.PHONY: install demo test test-fast lint format bench bench-finetune bench-scale bench-imbalance bench-pretrain \
	bench-export bench-serve bench-quality clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: install
	WANDB_MODE=offline $(BIN)/python scripts/demo.py

test: install
	$(BIN)/python -m pytest -q --durations=25

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)

format: install
	$(BIN)/ruff check --fix $(SRC)
	$(BIN)/ruff format $(SRC)

bench: install
	$(BIN)/python benchmarks/bench.py

bench-finetune: install
	$(BIN)/python benchmarks/finetune_strategies.py

bench-scale: install
	$(BIN)/python benchmarks/bench_scale.py

bench-imbalance: install
	$(BIN)/python benchmarks/bench_imbalance.py

bench-pretrain: install
	$(BIN)/python benchmarks/bench_pretrain.py

bench-export: install
	$(BIN)/python benchmarks/bench_export.py

bench-serve: install
	WANDB_MODE=offline $(BIN)/python benchmarks/bench_serve.py

# vitkit's shipped recipes vs a plain timm loop on crops of real photographs (scikit-image's sample photos), 3 seeds.
bench-quality: install
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[bench]"
	WANDB_MODE=offline $(BIN)/python benchmarks/quality/run.py

clean:
	rm -rf $(VENV) runs demo_data .pytest_cache .ruff_cache *.egg-info
