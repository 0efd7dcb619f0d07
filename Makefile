# Two commands on a fresh machine:  make run  (sample data, train, register, serve)  and  make test
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# a local development key for `make run` only; set your own (or FUNNELCAST_API_KEY_HASHES) in production
DEV_API_KEYS ?= ["dev-key"]

.PHONY: install browser run test bench lock clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,docs]'
	touch $@

install: $(BIN)/.installed

# the repository folder is the project: its .funnelcast/ is found from any subfolder
run: install
	mkdir -p .funnelcast
	FUNNELCAST_API_KEYS='$(DEV_API_KEYS)' $(BIN)/funnelcast run

# the managers' page test drives Debian's chromium (no browser download); without root or apt
# the test skips itself
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "note: chromium not installed: the managers' page browser test will be skipped"

test: install browser
	$(BIN)/python .ci/audit.py
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile  # a worker per core (pytest-xdist), a file per worker
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir $(VENV)/site  # a broken link or anchor fails

bench: install
	$(BIN)/python benchmarks/lead_quality.py
	$(BIN)/python benchmarks/serving_speed.py

lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^funnelcast' > constraints.txt

clean:
	rm -rf $(VENV) .funnelcast
