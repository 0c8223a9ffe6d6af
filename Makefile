# snncompile: `make demo` and `make test` set everything up on a fresh clone.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DIGITS := examples/digits
# lava-dl's netx reader, for the tests only (tests/test_loihi.py loads netx.h5 with it):
# lava-dl 0.6.0 pins torch 2.3, so it is never a dependency; it goes without its dependencies
# into a folder of its own that only that test puts on sys.path.
NETX_READER := $(VENV)/lava-dl

.PHONY: setup demo test bench clean

setup: $(STAMP) $(NETX_READER)/.installed

# The built-in backends are plugin packages of their own, installed editable next to the core.
BACKENDS := backends/netlist backends/cyclesim backends/nir
LOIHI    := backends/loihi

# Re-installs only when the package metadata changes; recreates a venv of the wrong Python.
# lava-nc (the loihi backend's simulator) comes with the "loihi" extra of setup.cfg.
$(STAMP): setup.cfg pyproject.toml $(addsuffix /pyproject.toml,$(BACKENDS) $(LOIHI))
	@py=$$(tools/find_python310.sh) || exit 1; \
	if [ -x $(PY) ] && ! $(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))'; then \
	  echo "recreating $(VENV) with Python 3.10"; rm -rf $(VENV); fi; \
	[ -x $(PY) ] || $$py -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test,loihi]" $(addprefix -e ,$(BACKENDS))
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e $(LOIHI)
	@touch $(STAMP)

$(NETX_READER)/.installed: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --upgrade \
	  --target $(NETX_READER) lava-dl==0.6.0
	@touch $@

$(DIGITS)/data/digits_cnn.onnx: $(STAMP) $(DIGITS)/train.py
	$(PY) $(DIGITS)/train.py --out $(DIGITS)/data

demo: $(DIGITS)/data/digits_cnn.onnx
	$(VENV)/bin/snncompile convert $(DIGITS)/data/digits_cnn.onnx --calib $(DIGITS)/data/calib.npz \
	  --timesteps 32 -o $(DIGITS)/out --force
	$(VENV)/bin/snncompile evaluate $(DIGITS)/out --data $(DIGITS)/data/test.npz --timesteps 4,8,16,32

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: setup bench-peers
	$(PY) bench/run_all.py
	$(PY) bench/bench_backends.py --repeats 3

clean:
	rm -rf $(VENV) $(DIGITS)/data $(DIGITS)/out bench/results

# --- Fashion-MNIST example (examples/fashion_mnist) -----------------------------------------
# The data are Debian's dataset-fashion-mnist package (IDX files). Installed here, on request,
# where missing; never by the library at run time and never by `make test`.
FMNIST_IDX  := /usr/share/datasets/fashion-mnist
FMNIST      := examples/fashion_mnist
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: fashion-mnist-data fashion-mnist

fashion-mnist-data:
	@if [ -f $(FMNIST_IDX)/train-images-idx3-ubyte.gz ]; then echo "Fashion-MNIST found in $(FMNIST_IDX)"; \
	elif ! command -v apt-get >/dev/null; then \
	  echo "error: $(FMNIST_IDX) is missing and this system has no apt-get." >&2; \
	  echo "fix: put the four Fashion-MNIST IDX .gz files in a folder and pass --data-dir to $(FMNIST)/train.py" >&2; exit 1; \
	else echo "installing Debian's dataset-fashion-mnist (into $(FMNIST_IDX))"; \
	  $(SUDO) apt-get install -y dataset-fashion-mnist || { \
	  echo "error: 'apt-get install -y dataset-fashion-mnist' failed (see above)." >&2; \
	  echo "fix: run it as root (after 'apt-get update'), or pass --data-dir to $(FMNIST)/train.py" >&2; exit 1; }; fi

$(FMNIST)/data/fmnist_cnn.onnx: $(STAMP) $(FMNIST)/train.py
	@$(MAKE) --no-print-directory fashion-mnist-data
	$(PY) $(FMNIST)/train.py --out $(FMNIST)/data

fashion-mnist: $(FMNIST)/data/fmnist_cnn.onnx
	$(VENV)/bin/snncompile convert $(FMNIST)/data/fmnist_cnn.onnx --calib $(FMNIST)/data/calib.npz \
	  --timesteps 8 --bits 8 --fanin 64 --train $(FMNIST)/data/train.npz --val $(FMNIST)/data/val.npz \
	  -o $(FMNIST)/out --force
	$(VENV)/bin/snncompile evaluate $(FMNIST)/out --data $(FMNIST)/data/test.npz --timesteps 4,8,16

# --- the zoo (examples/zoo): one network per architecture users bring, on Fashion-MNIST -------
ZOO       := examples/zoo
ZOO_ARCHS := resnet mobilenet strided vgg mlp concat mobilenetv2 lenet
ZOO_EPOCHS ?= 4

.PHONY: zoo
zoo: $(addprefix $(ZOO)/data/,$(addsuffix /model.onnx,$(ZOO_ARCHS)))

$(ZOO)/data/%/model.onnx: $(STAMP) $(ZOO)/train.py $(ZOO)/models.py
	@$(MAKE) --no-print-directory fashion-mnist-data
	$(PY) $(ZOO)/train.py --arch $* --epochs $(ZOO_EPOCHS) --out $(ZOO)/data/$*

# bench/zoo.py over the whole zoo, peers included (long on a CPU: see its --help to cut it)
.PHONY: bench-zoo
bench-zoo: zoo bench-peers
	$(PY) bench/zoo.py --data $(ZOO)/data --out bench/results/zoo

# --- peers for bench/ptl_accuracy.py -----------------------------------------------------------
# spikingjelly 2.0.0 declares Python >= 3.11 and heavy optional dependencies; its ann2snn path
# runs on our 3.10 with only loguru, tqdm and requests, so it goes in with --no-deps.
.PHONY: bench-peers
bench-peers: setup
	$(PY) -m pip install -q --disable-pip-version-check -e ".[bench]"
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --ignore-requires-python spikingjelly==2.0.0
# sinabs 3.1.3 pins nir<=1.0.4 and so downgrades what the nir backend needs; its from_model
# path (all the benchmark uses) imports and runs with nir 1.0.8, so put the backend's pins back.
	$(PY) -m pip install -q --disable-pip-version-check "nir>=1.0.8,<2" "nirtorch>=2.6,<3"
