#!/usr/bin/env bash
# Fuzz ringseal's parsers with cargo-fuzz: fresh seed corpora, then each target for a bounded time, and
# a line of figures per target (executions, coverage, corpus, result).
#
#   fuzz/run.sh                                       # every target, 60 s each
#   FUZZ_SECONDS=600 fuzz/run.sh jks_resealed         # one target, 10 minutes
#   FUZZ_SANITIZER=none fuzz/run.sh sniff pem_crl     # any list of targets
#
# Targets:
#   jks_parse       the JKS reader (src/tls/jks.rs) on raw bytes, with the seeds' password and with the
#                   input's first bytes as the password (most mutations stop at the integrity digest, as
#                   they would in real life). Seeds: keytool stores.
#   jks_resealed    the input's last 20 bytes replaced by a correct integrity digest, so mutations reach
#                   the entry, certificate and key-decryption code; "wrong password" is then a bug
#   sniff           the plaintext sniffer (listener::sniff::sniff) on a connection's first bytes: total,
#                   decided by the first 5 bytes, and a verdict on a prefix never changes as more arrive
#   cassandra_yaml  cassandra.yaml -> ringseal config (config::cassandra::derive_bytes): errors, warnings
#                   and notes are one line naming the file; a derived table always renders to TOML that
#                   deserializes as a ringseal config (with its stores, and with PEM files in their place);
#                   the redacted rendering shows no password. Seeds: testdata/cassandra-yaml/
#   config_toml     TOML -> Config (Config::from_toml); `{cert}`-style placeholders and the shipped
#                   configs' /etc/ringseal paths name the fixture PKI in fuzz/pki/. Errors are one line
#                   starting `config <path>: `; a config that loads keeps every invariant the runtime
#                   relies on and renders (`describe`, Debug). Seeds: config/, testdata/invalid-configs/
#   pem_crl         the bytes as tls.cert, tls.ca, tls.key and tls.crl (certs_from, key_from,
#                   TlsMaterial::from_der, add_crls): material only when the key matches the leaf; a CRL
#                   that add_crls accepts can revoke the fixture's valid node, or fail to apply to it, but
#                   never change the verdict on its chain. Seeds: the fixture PKI (CRLs signed by its CA)
#                   and openssl's PKCS#1, SEC1 and encrypted keys, a v1 certificate, a CRL (PEM, DER)
#   allow_list      `allow = {...}` TOML, a NUL byte, a DER certificate (FileAllow::into_allow_list,
#                   verify::check_identity): matching is deterministic, an empty certificate never
#                   matches, a list naming one of the certificate's own values admits it, endpoint
#                   verification admits only an IP SAN the certificate lists
#   record_framing  the handshake driver's record framing (relay::handshake::frame and wakes, what its
#                   peek/take loop follows): a flags byte (the peer's CCS taken, our records encrypted,
#                   TLS 1.2, the size of the pieces the bytes arrive in), then the peer's bytes. A flight
#                   arriving in pieces is framed exactly as when it arrives whole, woken the driver
#                   always takes a record or ends (never spins), records stay within the RFC limits.
#                   Seeds: rustls client flights of TLS 1.3 and 1.2 handshakes, hand-made edges
# The checks and seeds of all but the JKS targets are in fuzz/src/lib.rs, which tests/fuzz_seeded.rs
# also runs on a few thousand seeded mutations in `cargo test`.
#
# Needs nightly Rust (`rustup toolchain install nightly`), cargo-fuzz (`cargo install cargo-fuzz`),
# openssl, and keytool (a JRE) for the JKS targets. Environment: FUZZ_SECONDS (per target, default
# 60), FUZZ_JOBS (parallel fuzzing processes per target, default 1), FUZZ_SANITIZER (default address;
# `none` runs several times faster, and the code fuzzed is safe Rust; with more than one job each job
# logs to fuzz/fuzz-<n>.log). The corpus lives in fuzz/corpus/<target>/ (libFuzzer's finds are kept
# between runs; seed-* files are rewritten each run), the fixture PKI in fuzz/pki/ (reused; remove it
# to start afresh); a crash is saved in fuzz/artifacts/<target>/ and makes this script exit non-zero.
# Reproduce one with `RINGSEAL_FUZZ_PKI=$PWD/fuzz/pki cargo +nightly fuzz run <target> <artifact>`.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-60}
jobs=${FUZZ_JOBS:-1}
sanitizer=${FUZZ_SANITIZER:-address}
all=(jks_parse jks_resealed sniff cassandra_yaml config_toml pem_crl allow_list record_framing)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
for target in "${targets[@]}"; do
  [[ " ${all[*]} " == *" $target "* ]] || { echo "run.sh: no target $target (targets: ${all[*]})" >&2; exit 1; }
done
pass=changeit
export RINGSEAL_FUZZ_PKI=$PWD/pki

tools=(openssl cargo-fuzz)
[[ " ${targets[*]} " == *" jks_"* ]] && tools+=(keytool)
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is not installed (see the top of $0)" >&2; exit 1; }
done

seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
quiet() { "$@" </dev/null >/dev/null 2>&1; }

# JKS seed stores: the shapes ringseal meets (RSA and EC keys, several keys, a CA-signed chain, trusted
# certificates, a key password of its own, an empty store), plus JCEKS and PKCS#12 look-alikes.
jks_seeds() {
  kt() { keytool "$@" -storepass "$pass" </dev/null >/dev/null 2>&1; }
  gen() { # store alias keyalg-args... ; key password = store password unless KEYPASS is set
    local store=$1 alias=$2; shift 2
    kt -genkeypair -storetype JKS -keystore "$seeds/$store" -keypass "${KEYPASS:-$pass}" -alias "$alias" \
      -dname "CN=$alias,OU=Fuzz" -validity 30 "$@"
  }
  local ec=(-keyalg EC -groupname secp256r1)
  gen rsa.jks node -keyalg RSA -keysize 2048
  gen ec.jks node "${ec[@]}"
  gen several.jks node-rsa -keyalg RSA -keysize 2048
  gen several.jks node-ec "${ec[@]}"
  KEYPASS=otherpass gen several.jks other "${ec[@]}"
  quiet openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=FuzzCA \
    -keyout "$seeds/ca.key" -out "$seeds/ca.pem"
  gen chain.jks node "${ec[@]}"
  kt -certreq -keystore "$seeds/chain.jks" -alias node -file "$seeds/node.csr"
  quiet openssl x509 -req -in "$seeds/node.csr" -CA "$seeds/ca.pem" -CAkey "$seeds/ca.key" \
    -CAcreateserial -days 30 -out "$seeds/node.pem"
  kt -importcert -noprompt -trustcacerts -keystore "$seeds/chain.jks" -alias ca -file "$seeds/ca.pem"
  kt -importcert -noprompt -keystore "$seeds/chain.jks" -alias node -file "$seeds/node.pem"
  kt -importcert -noprompt -storetype JKS -keystore "$seeds/trust.jks" -alias ca -file "$seeds/ca.pem"
  gen empty.jks gone "${ec[@]}"
  kt -delete -keystore "$seeds/empty.jks" -alias gone
  kt -genkeypair -storetype JCEKS -keystore "$seeds/node.jceks" -keypass "$pass" -alias node \
    -dname CN=node "${ec[@]}"
  kt -genkeypair -storetype PKCS12 -keystore "$seeds/node.p12" -keypass "$pass" -alias node \
    -dname CN=node "${ec[@]}"
  for target in jks_parse jks_resealed; do
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
}

# What openssl writes that rcgen does not: PKCS#1 and SEC1 keys, an encrypted key, an RSA and a v1
# certificate, a CRL with a revoked entry (PEM and DER), a certificate with DNS, IP and URI SANs.
openssl_seeds() {
  local o=$seeds/openssl out=corpus/$1
  mkdir -p "$o"
  case $1 in
    pem_crl)
      quiet openssl genrsa -traditional -out "$o/rsa-pkcs1.key" 2048
      quiet openssl ecparam -name prime256v1 -genkey -noout -out "$o/ec-sec1.key"
      quiet openssl pkcs8 -topk8 -in "$o/ec-sec1.key" -passout pass:secret -out "$o/ec-encrypted.key"
      quiet openssl req -x509 -key "$o/rsa-pkcs1.key" -days 30 -subj "/CN=rsa node/OU=Fuzz" \
        -addext subjectAltName=IP:127.0.0.1 -out "$o/rsa.crt"
      quiet openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj /CN=OpensslCA -keyout "$o/ca.key" -out "$o/ca.crt"
      quiet openssl req -new -key "$o/ec-sec1.key" -subj "/CN=v1 node" -out "$o/v1.csr"
      quiet openssl x509 -req -in "$o/v1.csr" -CA "$o/ca.crt" -CAkey "$o/ca.key" -CAcreateserial \
        -days 30 -out "$o/v1.crt"
      printf '[ca]\ndefault_ca = d\n[d]\ndatabase = %s\ncrlnumber = %s\ndefault_md = sha256\ndefault_crl_days = 30\n' \
        "$o/index.txt" "$o/crlnumber" >"$o/ca.cnf"
      : >"$o/index.txt"
      echo 01 >"$o/crlnumber"
      quiet openssl ca -config "$o/ca.cnf" -keyfile "$o/ca.key" -cert "$o/ca.crt" -revoke "$o/v1.crt"
      quiet openssl ca -config "$o/ca.cnf" -keyfile "$o/ca.key" -cert "$o/ca.crt" -gencrl -out "$o/ca.crl"
      quiet openssl crl -in "$o/ca.crl" -outform der -out "$o/ca.crl.der"
      for f in rsa-pkcs1.key ec-sec1.key ec-encrypted.key rsa.crt v1.crt ca.crl ca.crl.der; do
        [ -s "$o/$f" ] && cp "$o/$f" "$out/seed-openssl-$f"
      done
      ;;
    allow_list)
      quiet openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj "/CN=node4/OU=Fuzz/OU=Other" -keyout "$o/san.key" -out "$o/san.crt" \
        -addext "subjectAltName=DNS:Node4.Example,IP:10.0.0.4,IP:fd00::4,URI:spiffe://fuzz/node4"
      quiet openssl x509 -in "$o/san.crt" -outform der -out "$o/san.der"
      { printf 'dns = ["node4.example"]\0'; cat "$o/san.der"; } >"$out/seed-openssl-dns"
      { printf 'ou = ["Other"]\nip = ["::ffff:10.0.0.4"]\0'; cat "$o/san.der"; } >"$out/seed-openssl-ou-ip"
      ;;
  esac
}

[[ " ${targets[*]} " == *" jks_"* ]] && jks_seeds

status=0
summary=()
for target in "${targets[@]}"; do
  if [[ $target != jks_* ]]; then
    # The target writes its own seeds (fuzz/src/lib.rs) when started with RINGSEAL_FUZZ_SEEDS; -runs=0
    # on an empty directory does only that.
    mkdir -p "corpus/$target" "$seeds/empty-$target"
    rm -f "corpus/$target"/seed-*
    RINGSEAL_FUZZ_SEEDS=$PWD/corpus/$target cargo +nightly fuzz run --sanitizer "$sanitizer" "$target" \
      "$seeds/empty-$target" -- -runs=0 >"$seeds/seeding.log" 2>&1 \
      || { cat "$seeds/seeding.log" >&2; echo "!! $target: writing its seeds failed" >&2; exit 1; }
    openssl_seeds "$target"
  fi
  echo "== $target: ${seconds}s, $jobs job(s), sanitizer $sanitizer, $(ls "corpus/$target" | wc -l) corpus files"
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
  # The last status line: "#N DONE cov: C ft: F corp: U/Sb ...".
  last=$(cat "$log" fuzz-*.log 2>/dev/null | grep -E '^#[0-9]+.*cov: ' | tail -n 1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p' <<<"$last")
  crashes=$( (ls "artifacts/$target" 2>/dev/null || true) | wc -l)
  # "Done N runs in S second(s)" when the time ran out; a crash stops the run before.
  took=$(cat "$log" fuzz-*.log 2>/dev/null | sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' | tail -n 1 || true)
  line="$target: $execs executions in ${took:-less than $seconds }s, cov ${cov:-?} ft ${ft:-?}, corpus ${corp:-?} (units/bytes), $(ls "corpus/$target" | wc -l) files, exit status $rc, $crashes artifact(s)"
  echo "== $line"
  summary+=("$line")
  if [ "$rc" -ne 0 ]; then
    echo "!! $target failed (a crash is saved in fuzz/artifacts/$target/)" >&2
    status=1
  fi
  rm -f "$log"
done
echo "== summary ($(date -u +%FT%TZ), sanitizer $sanitizer, $jobs job(s))"
printf '   %s\n' "${summary[@]}"
exit $status
