# snncompile: `make demo` and `make test` set everything up on a fresh clone.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DIGITS := examples/digits

.PHONY: setup demo test bench clean

setup: $(STAMP)

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

$(DIGITS)/data/digits_cnn.onnx: $(STAMP) $(DIGITS)/train.py
	$(PY) $(DIGITS)/train.py --out $(DIGITS)/data

demo: $(DIGITS)/data/digits_cnn.onnx
	$(VENV)/bin/snncompile convert $(DIGITS)/data/digits_cnn.onnx --calib $(DIGITS)/data/calib.npz \
	  --timesteps 32 -o $(DIGITS)/out --force
	$(VENV)/bin/snncompile evaluate $(DIGITS)/out --data $(DIGITS)/data/test.npz --timesteps 4,8,16,32

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: setup
	$(PY) bench/run_all.py
	$(PY) bench/bench_backends.py --repeats 3

clean:
	rm -rf $(VENV) $(DIGITS)/data $(DIGITS)/out bench/results
