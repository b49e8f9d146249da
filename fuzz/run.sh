#!/usr/bin/env bash
# Fuzz the JKS reader (src/tls/jks.rs) with cargo-fuzz: a fresh seed corpus from keytool, then each
# target for a bounded time.
#
#   fuzz/run.sh                              # every target, 60 s each
#   FUZZ_SECONDS=600 fuzz/run.sh jks_resealed   # one target, 10 minutes
#
# Targets:
#   jks_parse     parse() on raw bytes, with the seeds' password and with the input's first bytes as
#                 the password (most mutations stop at the integrity digest, as they would in real life)
#   jks_resealed  the input's last 20 bytes replaced by a correct integrity digest, so mutations reach
#                 the entry, certificate and key-decryption code; "wrong password" is then a bug
#
# Needs nightly Rust (`rustup toolchain install nightly`), cargo-fuzz (`cargo install cargo-fuzz`),
# keytool (a JRE) and openssl. Environment: FUZZ_SECONDS (per target, default 60), FUZZ_JOBS (parallel
# fuzzing processes per target, default 1), FUZZ_SANITIZER (default address; `none` runs several times
# faster, and the parser is safe Rust; with more than one job each job logs to fuzz/fuzz-<n>.log). The corpus lives in fuzz/corpus/<target>/ (libFuzzer's finds
# are kept between runs; seed-* files are rewritten each run); a crash is saved in
# fuzz/artifacts/<target>/ and makes this script exit non-zero. Reproduce one with
# `cargo +nightly fuzz run <target> <artifact>`.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-60}
jobs=${FUZZ_JOBS:-1}
sanitizer=${FUZZ_SANITIZER:-address}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(jks_parse jks_resealed)
pass=changeit

for tool in keytool openssl cargo-fuzz; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is not installed (see the top of $0)" >&2; exit 1; }
done

# Seed stores: the shapes ringseal meets (RSA and EC keys, several keys, a CA-signed chain, trusted
# certificates, a key password of its own, an empty store), plus JCEKS and PKCS#12 look-alikes.
seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
kt() { keytool "$@" -storepass "$pass" </dev/null >/dev/null 2>&1; }
gen() { # store alias keyalg-args... ; key password = store password unless KEYPASS is set
  local store=$1 alias=$2; shift 2
  kt -genkeypair -storetype JKS -keystore "$seeds/$store" -keypass "${KEYPASS:-$pass}" -alias "$alias" \
    -dname "CN=$alias,OU=Fuzz" -validity 30 "$@"
}
ec=(-keyalg EC -groupname secp256r1)
gen rsa.jks node -keyalg RSA -keysize 2048
gen ec.jks node "${ec[@]}"
gen several.jks node-rsa -keyalg RSA -keysize 2048
gen several.jks node-ec "${ec[@]}"
KEYPASS=otherpass gen several.jks other "${ec[@]}"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=FuzzCA \
  -keyout "$seeds/ca.key" -out "$seeds/ca.pem" >/dev/null 2>&1
gen chain.jks node "${ec[@]}"
kt -certreq -keystore "$seeds/chain.jks" -alias node -file "$seeds/node.csr"
openssl x509 -req -in "$seeds/node.csr" -CA "$seeds/ca.pem" -CAkey "$seeds/ca.key" -CAcreateserial \
  -days 30 -out "$seeds/node.pem" >/dev/null 2>&1
kt -importcert -noprompt -trustcacerts -keystore "$seeds/chain.jks" -alias ca -file "$seeds/ca.pem"
kt -importcert -noprompt -keystore "$seeds/chain.jks" -alias node -file "$seeds/node.pem"
kt -importcert -noprompt -storetype JKS -keystore "$seeds/trust.jks" -alias ca -file "$seeds/ca.pem"
gen empty.jks gone "${ec[@]}"
kt -delete -keystore "$seeds/empty.jks" -alias gone
kt -genkeypair -storetype JCEKS -keystore "$seeds/node.jceks" -keypass "$pass" -alias node \
  -dname CN=node "${ec[@]}"
kt -genkeypair -storetype PKCS12 -keystore "$seeds/node.p12" -keypass "$pass" -alias node \
  -dname CN=node "${ec[@]}"

for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  rm -f "corpus/$target"/seed-*
  for f in "$seeds"/*.jks "$seeds"/node.jceks "$seeds"/node.p12; do
    cp "$f" "corpus/$target/seed-$(basename "$f")"
    # jks_parse's second form: length byte, password, store.
    if [ "$target" = jks_parse ]; then
      { printf '\x08%s' "$pass"; cat "$f"; } >"corpus/$target/seed-pw-$(basename "$f")"
    fi
  done
done

status=0
for target in "${targets[@]}"; do
  echo "== $target: ${seconds}s, $jobs job(s), sanitizer $sanitizer"
  log=$(mktemp)
  extra=()
  # libFuzzer moves each job's output to fuzz-<n>.log when -jobs is given at all.
  [ "$jobs" -gt 1 ] && { rm -f fuzz-*.log; extra=(-jobs="$jobs" -workers="$jobs"); }
  set +e
  cargo +nightly fuzz run --sanitizer "$sanitizer" "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    "${extra[@]}" 2>&1 | tee "$log" | grep --line-buffered -E 'pulse|DONE|Done [0-9]+ runs|panicked|ERROR|SUMMARY'
  rc=${PIPESTATUS[0]}
  set -e
  execs=0
  for n in $(cat "$log" fuzz-*.log 2>/dev/null | sed -n 's/^stat::number_of_executed_units: *//p'); do
    execs=$((execs + n))
  done
  echo "== $target: $execs executions, exit status $rc"
  if [ "$rc" -ne 0 ]; then
    echo "!! $target failed (a crash is saved in fuzz/artifacts/$target/)" >&2
    status=1
  fi
  rm -f "$log"
done
exit $status
