# awsrun: run a CSV of jobs on EC2, one instance per row.   `make help` lists the targets.
#
#   make create dispatch JOBS=awsjobs/x.csv [JOB=name] [AMI=ami-...] [CODE=dir] [ARGS="..."]
#   make create dispatch JOBS=awsjobs/x.csv POOL=8 [SLOTS=4]    # pool mode: 8 machines per type
#   make status [JOB=name]
#   make fetch BUCKET=name OUT=dir

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEV    := $(VENV)/.dev-installed
NODE_VENV := .venv-node
NODE_PY   := $(NODE_VENV)/.installed
BENCH_VENV := .venv-bench

JOBS   ?= awsjobs/demo.csv
JOB    ?= $(shell $(PY) operate.py job-name $(JOBS))
AMI    ?= auto
BUCKET ?= $(JOB)
OUT    ?= results/$(BUCKET)
CODE   ?=
POOL   ?=
HOURS  ?=
LIKE   ?=
PRICES ?=
BUDGET ?=
SLOTS  ?=
ARGS   ?=
TIMEOUT ?= 86400
TAG    ?=
TEMPLATE ?=
WITH   ?=
INPUTS ?=
FOLLOW ?=
CMD    ?=
GRID   ?=
TYPE   ?= t3.micro
DELETE_BUCKET ?= no
TEST_WORKERS ?= 4

DISPATCH = $(PY) dispatcher.py $(AMI) $(JOB) $(JOBS) $(if $(CODE),--code $(CODE)) \
	$(if $(POOL),--pool $(POOL)) $(if $(SLOTS),--slots $(SLOTS)) $(if $(BUDGET),--budget $(BUDGET)) \
	$(if $(PRICES),--prices $(PRICES)) $(if $(HOURS),--hours $(HOURS)) $(if $(LIKE),--like $(LIKE)) \
	$(foreach i,$(INPUTS),--inputs '$(i)') $(ARGS)
# `make status` alone counts every instance; with JOB= given, one line per tag of that job.
STATUS_JOB = $(if $(filter command line environment,$(origin JOB)),$(JOB))
SSHD_MISSING = make demo needs OpenSSH's server: sudo apt-get install openssh-server

# A variable as one shell word, as typed: make expands nothing in it ($TAG stays $TAG).
quote = '$(subst ','\'',$(value $(1)))'

.PHONY: help sweep dry-run plan create dispatch status watch wait logs ssh retry down clean report picture collect fetch demo _demo test lint bench venv node-venv

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

venv: $(PY)  ## create .venv from the pinned requirements (done on first use)

# Two layers in one .venv: requirements.txt (boto3 and paramiko: all that running on AWS needs)
# for every target, and requirements-dev.txt (the sandbox, tests, linters) for demo, test, lint
# and bench. The stamp files mark a finished install (touching the venv's python would follow
# its link).
$(PY): $(VENV)/.installed
$(VENV)/.installed: requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null || { echo "awsrun needs Python 3.10 or later (its pinned boto3, botocore and urllib3 do): install one, then run make with PYTHON=python3.12, for example" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(DEV): requirements-dev.txt $(VENV)/.installed
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

node-venv: $(NODE_PY)  ## the sandbox's node image: Ubuntu 24.04's boto3, in .venv-node

$(NODE_PY): requirements-node.txt
	$(PYTHON) -m venv $(NODE_VENV)
	$(NODE_VENV)/bin/pip install -q --disable-pip-version-check --no-deps -r requirements-node.txt
	$(NODE_VENV)/bin/python -m pip uninstall -q -y pip  # the image has no pip
	touch $@

sweep: $(PY)  ## write JOBS from a grid: TEMPLATE='cmd {seed}' GRID='seed=1..5 solver=a,b' TYPE=c5.large [CODE=dir]
	@test -n "$(filter command line environment,$(origin JOBS))" || { echo "make sweep writes JOBS=FILE: name the job file to write, e.g. JOBS=awsjobs/grid.csv" >&2; exit 2; }
	$(PY) sweep.py $(call quote,TEMPLATE) $(foreach v,$(value GRID),'$(subst ','\'',$(v))') --type $(call quote,TYPE) \
		$(if $(CODE),--code $(CODE)) -o $(JOBS)

dry-run: $(PY)  ## check everything create needs (permissions, image, quota, network, bucket) and make nothing
	$(DISPATCH) --dry-run

plan: $(PY)  ## what the run would cost (HOURS=H a row, or LIKE=OLDJOB; PRICES=FILE), and make nothing
	$(DISPATCH) --plan

create: $(PY)  ## launch and prepare one machine per row of JOBS (POOL=N: N per instance type; BUDGET=USD: a hard cap)
	$(DISPATCH) -c

dispatch: $(PY)  ## start every row's command on its machine (POOL=N: queue the rows, start the workers)
	$(DISPATCH) -d

status: $(PY)  ## instance counts by state; with JOB=, one line per tag
	$(PY) operate.py status $(STATUS_JOB)

watch: $(PY)  ## the status table of JOB, refreshed until every job has finished
	$(PY) operate.py status $(JOB) --watch

wait: $(PY)  ## wait until every machine of JOB has finished
	$(PY) operate.py wait $(JOB) --timeout $(TIMEOUT)

logs: $(PY)  ## print TAG's log (LOG=install for the install logs; FOLLOW=1: as it grows, until the row ends)
	@test -n "$(TAG)" || { echo "make logs needs TAG=, e.g. TAG=$(JOB)0" >&2; exit 2; }
	$(PY) logs.py $(JOB) $(TAG) $(if $(filter install,$(LOG)),--install) $(if $(FOLLOW),--follow)

ssh: $(PY)  ## a shell on TAG's machine, in its work directory (CMD='ls output': run that instead)
	@test -n "$(TAG)" || { echo "make ssh needs TAG=, e.g. TAG=$(JOB)0" >&2; exit 2; }
	$(PY) logs.py $(JOB) $(TAG) --ssh $(if $(CMD),-- $(call quote,CMD))

retry: $(PY)  ## run again every row of JOBS with no succeeded result
	$(DISPATCH) --retry

down: $(PY)  ## terminate every instance of JOB and wait until they are gone
	$(PY) operate.py down $(JOB)

clean: $(PY)  ## down, then delete JOB's security group, key pair and role (DELETE_BUCKET=yes: the bucket too)
	$(PY) operate.py clean $(JOB) $(if $(filter yes,$(DELETE_BUCKET)),--delete-bucket)

report: $(PY)  ## a picture of JOB's run in results/JOB/report.html: timeline, slow and failed rows, cost (PRICES=file.csv)
	$(PY) report.py $(JOB) $(if $(PRICES),--prices $(PRICES))

picture:  ## the README's picture of the demo's report, docs/report.png (make demo first; needs chromium)
	@test -f results/awsrun-demo/report.html || { echo "make picture needs the demo's report: run make demo first" >&2; exit 1; }
	@command -v chromium >/dev/null 2>&1 || { echo "make picture needs chromium: sudo apt-get install chromium" >&2; exit 1; }
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1180,1000 \
		--screenshot=$(CURDIR)/docs/report.png file://$(CURDIR)/results/awsrun-demo/report.html

collect: $(PY)  ## merge every row's CSV files (PATTERN='output/*.csv') into results/JOB/collected.csv (FROM=dir: a fetched folder; WITH=host: where each row ran)
	$(PY) collect.py $(JOB) $(if $(PATTERN),--pattern '$(PATTERN)') $(if $(FROM),--from $(FROM)) $(if $(WITH),--with $(WITH))

fetch: $(PY)  ## download every result of BUCKET into OUT/TAG/...
	$(PY) get_s3_files.py $(BUCKET) $(OUT)

demo: $(DEV) $(NODE_PY)  ## the whole workflow in a local sandbox, no AWS account needed
	@command -v sshd >/dev/null 2>&1 || test -x /usr/sbin/sshd || { echo "$(SSHD_MISSING)" >&2; exit 1; }
	$(PY) sandbox.py run -- $(MAKE) --no-print-directory _demo

_demo:
	$(MAKE) --no-print-directory create dispatch wait status fetch collect report \
		JOBS=awsjobs/demo.csv JOB=awsrun-demo CODE=awsjobs/demo OUT=results/awsrun-demo TIMEOUT=60
	@echo "--- fetched files:"; find results/awsrun-demo -type f | sort
	@echo "--- one result:"; cat results/awsrun-demo/awsrun-demo0/output/summary.txt
	@echo "--- every row's output/result.csv in one table, results/awsrun-demo/collected.csv:"
	@cat results/awsrun-demo/collected.csv
	@echo "--- the collected table: results/awsrun-demo/collected.csv"
	@echo "--- the report of the run (open it in a browser): results/awsrun-demo/report.html"

test: $(DEV) $(NODE_PY) $(BENCH_VENV)/bin/aws  ## unit and end-to-end tests (the end-to-end ones need sshd; the AWS CLI runs docs/aws-setup.md's set-up)
	$(PY) -m pytest -q -n $(TEST_WORKERS) tests

SHELL_FILES := INSTALL.sh node/*.sh testbed/*.sh .ci/run
lint: $(DEV)  ## ruff (settings in ruff.toml) on every Python file, shellcheck on every shell file
	@command -v shellcheck >/dev/null 2>&1 || { echo "make lint needs shellcheck: sudo apt-get install shellcheck" >&2; exit 1; }
	$(VENV)/bin/ruff check .
	shellcheck $(SHELL_FILES)

$(BENCH_VENV)/bin/aws: bench/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --disable-pip-version-check -r bench/requirements.txt
	touch $@

bench: $(DEV) $(NODE_PY) $(BENCH_VENV)/bin/aws  ## time and CPU of fetch, upload, setup and pool vs aws s3, rclone, paramiko (FULL=1: full sizes); writes BENCHMARKS.md
	@command -v rclone >/dev/null 2>&1 || { echo "make bench needs rclone: sudo apt-get install rclone" >&2; exit 1; }
	@command -v sshd >/dev/null 2>&1 || test -x /usr/sbin/sshd || { echo "$(SSHD_MISSING)" >&2; exit 1; }
	$(PY) bench/bench.py $(if $(FULL),--full) $(ARGS)
