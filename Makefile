# One obvious entry point. `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
# The project's Python environment (scripts/python.sh): Debian's own Python refuses installs.
PYTHON := .stack/venv/bin/python

.PHONY: help demo test stack cluster stop status lint dashboards viewer metrics-json players python sdk alert-eval

help:
	@echo "make demo    set up everything and run the pipeline on local defaults"
	@echo "make test    set up everything and run the whole test suite (lint included)"
	@echo "make stack   install (if missing) and start Kafka + ClickHouse on loopback"
	@echo "make cluster install (if missing) and start ZooKeeper + a ClickHouse cluster of 2 shards x 2 replicas on loopback"
	@echo "             (QOE_DEMO_CLUSTER=1 make demo runs the demo on it)"
	@echo "make players install chromium, ffmpeg and the pinned web players (tests/players) and the web SDK's build tool"
	@echo "make python  create the Python environment .stack/venv with the pinned packages"
	@echo "make sdk     the web SDK's unit tests and build check (sdk/web)"
	@echo "make stop    stop the services this project started"
	@echo "make status  what runs"
	@echo "make dashboards  regenerate dashboards/json and the alert rules from dashboards/generate.py"
	@echo "make viewer  serve the dashboards and alert states on http://127.0.0.1:3000 (database qoe; the server's --help)"
	@echo "make metrics-json  regenerate schemas/metrics.json from the metric catalogue"
	@echo "make alert-eval  measure the alert rules over a simulated day (healthy, then with 33 incidents; ~20 min)"

stack:
	scripts/stack.sh start

cluster: stack
	scripts/cluster.sh start

players:
	scripts/players.sh setup

python:
	scripts/python.sh setup

stop:
	scripts/demo.sh stop || true
	scripts/cluster.sh stop
	scripts/stack.sh stop

status:
	scripts/stack.sh status
	scripts/cluster.sh status
	scripts/demo.sh status || true

demo: stack players python
	if [ "$${QOE_DEMO_CLUSTER:-0}" = 1 ]; then scripts/cluster.sh start; fi
	scripts/demo.sh start

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

sdk: players
	cd sdk/web && node --test test/ && node build.mjs --check

# Setup, lint and the suites, concurrently where they can be (scripts/test.sh says how).
test:
	scripts/test.sh

dashboards: python
	$(PYTHON) dashboards/generate.py

# The dashboard viewer in the foreground, on what `make demo` left in ClickHouse
# (QOE_CLICKHOUSE_DATABASE=qoe_all for the cluster's demo; `make demo` starts one itself).
viewer: stack players python
	$(PYTHON) dashboards/viewer/server.py

# The simulated day of dashboards/alert_eval.py: the report (markdown) and the plot of one
# incident land in target/alert-eval/.
alert-eval: stack python
	$(CARGO) build -p qoe-simulator -p qoe-aggregator --bins
	mkdir -p target/alert-eval
	$(PYTHON) dashboards/alert_eval.py --plan healthy --out target/alert-eval/healthy.md
	$(PYTHON) dashboards/alert_eval.py --plan full --plot target/alert-eval/incident.png --out target/alert-eval/full.md

metrics-json:
	QOE_BLESS=1 $(CARGO) test -q -p qoe-schemas --lib metrics::tests::committed_json_is_current
