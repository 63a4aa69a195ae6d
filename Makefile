# The two commands of the README. Each sets up what it needs first (see scripts/setup.sh).
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: app test bench
app:  ## start the app (the toy world where no GPU or weights are present)
	bash scripts/setup.sh
	.venv/bin/python app.py

test:  ## set up and run the whole test suite, browser test included
	bash scripts/setup.sh --dev
	.venv/bin/python -m pytest

bench:  ## the default benchmark runs (each prints a table)
	bash scripts/setup.sh --dev
	.venv/bin/python benchmarks/speed.py
	.venv/bin/python benchmarks/memory.py
	.venv/bin/python benchmarks/quality.py
