# The README's two commands are `make demo` and `make test`; both set up
# everything they need on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: demo test lint typecheck unit bench-push bench-admin bench-load bench-load-tls bench-access-log bench-openai bench-ads bench-large bench-churn bench-hostile bench-stream bench-health golden schema clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(BIN)/xds-server demo --verbose

test: $(STAMP)
	scripts/ensure-system-tools
	$(BIN)/ruff format --check xds_server tests bench
	$(BIN)/ruff check xds_server tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -q -p no:cacheprovider

bench-push: $(STAMP)
	$(BIN)/python -m bench.push_to_ack

bench-admin: $(STAMP)
	$(BIN)/python -m bench.admin_change

bench-load: $(STAMP)
	scripts/ensure-system-tools
	$(BIN)/python -m bench.load_ab

bench-load-tls: $(STAMP)
	scripts/ensure-system-tools
	$(BIN)/python -m bench.load_tls

bench-access-log: $(STAMP)
	scripts/ensure-system-tools
	$(BIN)/python -m bench.access_log_cost

bench-openai: $(STAMP)
	scripts/ensure-system-tools
	$(BIN)/python -m bench.openai_route --rounds 20

bench-ads: $(STAMP)
	$(BIN)/python -m bench.ads_clients

bench-large: $(STAMP)
	$(BIN)/python -m bench.large_config

bench-churn: $(STAMP)
	$(BIN)/python -m bench.stream_churn

bench-hostile: $(STAMP)
	$(BIN)/python -m bench.hostile_streams --unknown 20000 --batch 1000 --extra-names 20000 --services 5000

bench-stream: $(STAMP)
	$(BIN)/python -m bench.llm_stream

bench-health: $(STAMP)
	$(BIN)/python -m bench.health_fleet

golden: $(STAMP)
	$(BIN)/pytest -q tests/translate/test_translate_golden.py --regenerate-golden

# The JSON Schema editors use for config/router_config.yaml, from the models
# (tests/test_config_schema.py fails when it is stale).
schema: $(STAMP)
	$(BIN)/xds-server schema > config/router_config.schema.json

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
