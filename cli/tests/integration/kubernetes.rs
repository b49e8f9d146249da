//! `config/kubernetes/`: every manifest validated, and the generated ones in sync with their sources.
//!
//! * Core objects (Namespace, ConfigMaps) and the pod template inside the CassandraDatacenter (as the
//!   `PodTemplate` cass-operator turns it into, with the `cassandra` container it adds) against the
//!   Kubernetes schemas, offline and strict (unknown fields refused), with PyPI's `kubernetes-validate`.
//!   CI installs it into `target/k8s-venv` (.ci/run); elsewhere a missing tool skips that part.
//! * Custom resources (CassandraDatacenter, K8ssandraCluster, Certificate, Issuer, PodMonitor,
//!   PrometheusRule) parsed and checked for what ringseal depends on: the native sidecar, its uid, the
//!   mounts against the paths in the config, the Secret names and keys against the Certificate.
//! * The embedded ringseal.toml loaded by `ringseal check` against a cassandra.yaml as cass-operator
//!   renders it, with real cert-manager-shaped files (keystore.p12, ca.crt, a password file).
//! * Generated files: the PrometheusRule from config/alerts.yml, the dashboard ConfigMap from
//!   config/grafana-dashboard.json, ringseal.nft from `ringseal rules`. A drift fails with the command
//!   that regenerates them.
//! * A typo in a manifest is caught.

use std::path::{Path, PathBuf};
use std::process::Command;

use ringseal_testkit::tools::{run, which};
use serde_json::Value;

const NS: &str = "cassandra";
/// The uid cass-operator runs Cassandra as.
const CASSANDRA_UID: i64 = 999;
const REGENERATE: &str =
    "RINGSEAL_REGENERATE=1 cargo test -p ringseal-cli --test integration -- kubernetes::";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifests() -> PathBuf {
    root().join("config/kubernetes")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(manifests().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Every document of a YAML stream, as JSON values.
fn docs(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn doc(name: &str) -> Value {
    let mut all = docs(&read(name));
    assert_eq!(all.len(), 1, "{name}: one document");
    all.remove(0)
}

fn yaml_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(manifests())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    names
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} is not a string in {v:#}"))
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list:#}"))
}

// ---------------------------------------------------------------------------------------------
// Generated manifests
// ---------------------------------------------------------------------------------------------

/// `text` with every non-empty line indented by `n` spaces.
fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// prometheusrule.yaml: config/alerts.yml's groups, verbatim (comments included), under a
/// PrometheusRule's spec.
fn prometheus_rule() -> String {
    let alerts = std::fs::read_to_string(root().join("config/alerts.yml")).unwrap();
    let body = &alerts[alerts.find("groups:").expect("alerts.yml has groups")..];
    format!(
        "# Generated from config/alerts.yml by cli/tests/integration/kubernetes.rs; do not edit.\n\
         # Regenerate with: {REGENERATE}\n\
         apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: ringseal\n  \
         namespace: {NS}\nspec:\n{}",
        indent(body, 2)
    )
}

/// grafana-dashboard.yaml: config/grafana-dashboard.json in a ConfigMap that Grafana's sidecar
/// (kube-prometheus-stack) picks up by its label.
fn dashboard_configmap() -> String {
    let json = std::fs::read_to_string(root().join("config/grafana-dashboard.json")).unwrap();
    format!(
        "# Generated from config/grafana-dashboard.json by cli/tests/integration/kubernetes.rs; do not edit.\n\
         # Regenerate with: {REGENERATE}\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ringseal-grafana-dashboard\n  \
         namespace: {NS}\n  labels:\n    grafana_dashboard: \"1\"\ndata:\n  ringseal.json: |\n{}",
        indent(json.trim_end(), 4)
    )
}

/// The uid the ringseal sidecar runs as in the CassandraDatacenter.
fn sidecar_uid() -> i64 {
    let dc = doc("cassandradatacenter.yaml");
    let ringseal = named(
        &dc["spec"]["podTemplateSpec"]["spec"]["initContainers"],
        "ringseal",
    );
    ringseal["securityContext"]["runAsUser"].as_i64().unwrap()
}

/// ringseal.nft: `ringseal rules` for the ConfigMap's config (its [[outbound]]; the [[inbound]]
/// addresses come from cassandra.yaml, which `rules` does not read) and the sidecar's uid.
fn nft_rules(toml_text: &str) -> String {
    let mut table: toml::Table = toml_text.parse().unwrap();
    table.remove("inbound");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ringseal.toml");
    std::fs::write(&config, toml::to_string(&table).unwrap()).unwrap();
    let out = run(
        dir.path(),
        env!("CARGO_BIN_EXE_ringseal"),
        &[
            "rules",
            "--config",
            config.to_str().unwrap(),
            "--uid",
            &sidecar_uid().to_string(),
        ],
    );
    String::from_utf8(out.stdout).unwrap()
}

/// ringseal-config.yaml with its `ringseal.nft` block replaced by `rules` (it is the last key).
fn config_map_with_rules(current: &str, rules: &str) -> String {
    let marker = "  ringseal.nft: |\n";
    let at = current
        .find(marker)
        .expect("ringseal.nft is in ringseal-config.yaml")
        + marker.len();
    format!("{}{}", &current[..at], indent(rules.trim_end(), 4))
}

fn embedded_toml() -> String {
    s(&doc("ringseal-config.yaml"), "/data/ringseal.toml").to_owned()
}

#[test]
fn generated_manifests_match_their_sources() {
    let config_map = read("ringseal-config.yaml");
    let expected = [
        ("prometheusrule.yaml", prometheus_rule()),
        ("grafana-dashboard.yaml", dashboard_configmap()),
        (
            "ringseal-config.yaml",
            config_map_with_rules(&config_map, &nft_rules(&embedded_toml())),
        ),
    ];
    let regenerate = std::env::var_os("RINGSEAL_REGENERATE").is_some();
    let mut stale = Vec::new();
    for (name, want) in &expected {
        let path = manifests().join(name);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(want.as_str()) {
            continue;
        }
        if regenerate {
            std::fs::write(&path, want).unwrap();
            eprintln!("regenerated {}", path.display());
        } else {
            stale.push(*name);
        }
    }
    assert!(
        stale.is_empty(),
        "config/kubernetes/{stale:?} out of sync with config/alerts.yml, config/grafana-dashboard.json \
         or `ringseal rules`; regenerate with:\n  {REGENERATE}"
    );
}

/// Beyond the text: the PrometheusRule carries exactly alerts.yml's groups, the ConfigMap exactly the
/// dashboard, so a generator bug cannot hide behind a byte comparison with its own output.
#[test]
fn prometheus_rule_and_dashboard_carry_the_sources() {
    let alerts: Value =
        docs(&std::fs::read_to_string(root().join("config/alerts.yml")).unwrap()).remove(0);
    let rule = doc("prometheusrule.yaml");
    assert_eq!(s(&rule, "/kind"), "PrometheusRule");
    assert_eq!(rule["spec"]["groups"], alerts["groups"]);
    assert!(!alerts["groups"].as_array().unwrap().is_empty());
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("config/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let cm = doc("grafana-dashboard.yaml");
    let embedded: Value = serde_json::from_str(s(&cm, "/data/ringseal.json")).unwrap();
    assert_eq!(embedded, dashboard);
    assert_eq!(s(&cm, "/metadata/labels/grafana_dashboard"), "1");
}

// ---------------------------------------------------------------------------------------------
// Schemas (kubernetes-validate)
// ---------------------------------------------------------------------------------------------

/// `kubernetes-validate`: CI's venv under target/, else PATH; `None` (skip) outside CI without it.
fn kubernetes_validate() -> Option<PathBuf> {
    let venv = root().join("target/k8s-venv/bin/kubernetes-validate");
    if venv.is_file() {
        return Some(venv);
    }
    if let Some(found) = which("kubernetes-validate") {
        return Some(found);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "kubernetes-validate is required in CI (.ci/run installs it into target/k8s-venv)"
    );
    eprintln!(
        "skipping schema validation: kubernetes-validate is not installed (pip install kubernetes-validate)"
    );
    None
}

/// The Kubernetes version the manifests target: native sidecars are on by default from 1.29.
const KUBERNETES: &str = "1.30.0";

/// Validates `docs` (core objects) strictly; `Err` with the tool's output when one is refused.
fn validate(tool: &Path, docs: &[Value]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        let path = dir.path().join(format!("{i}.yaml"));
        std::fs::write(&path, serde_norway::to_string(d).unwrap()).unwrap();
        files.push(path);
    }
    let out = Command::new(tool)
        .args(["--strict", "--no-warn", "--quiet", "-k", KUBERNETES])
        .args(&files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(text)
    }
}

/// The pod template of a CassandraDatacenter as the `PodTemplate` cass-operator builds from it: with
/// the `cassandra` container it adds (the schema requires one container).
fn pod_template(dc: &Value) -> Value {
    let mut template = dc["spec"]["podTemplateSpec"].clone();
    template["spec"]["containers"] =
        serde_json::json!([{"name": "cassandra", "image": "k8ssandra/cass-management-api:4.1.5"}]);
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "demo-dc1", "namespace": NS},
        "template": template,
    })
}

/// The core objects of the directory, and the pod template inside the CassandraDatacenter.
fn core_objects(dc_text: &str) -> Vec<Value> {
    let mut core = Vec::new();
    for name in yaml_files() {
        for d in docs(&read(&name)) {
            let api = d["apiVersion"].as_str().unwrap_or_default();
            if api == "v1" || api.starts_with("apps/") {
                core.push(d);
            }
        }
    }
    core.push(pod_template(&docs(dc_text).remove(0)));
    core
}

#[test]
fn core_objects_and_the_pod_template_pass_the_kubernetes_schemas() {
    let Some(tool) = kubernetes_validate() else {
        return;
    };
    let started = std::time::Instant::now();
    let core = core_objects(&read("cassandradatacenter.yaml"));
    let kinds: Vec<&str> = core.iter().map(|d| s(d, "/kind")).collect();
    assert_eq!(
        kinds,
        ["ConfigMap", "Namespace", "ConfigMap", "PodTemplate"],
        "the core objects"
    );
    validate(&tool, &core).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("kubernetes-validate: {:.2?}", started.elapsed());
}

/// A misspelt field or value (what a hand edit does) is caught: unknown fields by the schemas (naming
/// the field), wrong values the schemas allow by the checks on what ringseal depends on.
#[test]
fn a_manifest_typo_is_caught() {
    let text = read("cassandradatacenter.yaml");
    let mutate = |right: &str, wrong: &str| {
        assert!(text.contains(right), "{right}");
        text.replacen(right, wrong, 1)
    };
    if let Some(tool) = kubernetes_validate() {
        for (right, wrong) in [
            ("readOnlyRootFilesystem", "readOnlyRootFilesytem"),
            ("mountPath: /config", "mountpath: /config"),
            ("initContainers:", "initContainer:"),
        ] {
            let err = validate(&tool, &core_objects(&mutate(right, wrong))).expect_err(wrong);
            // Named as unexpected, or the right spelling as missing.
            let field = |f: &str| format!("'{}'", f.split(':').next().unwrap());
            assert!(
                err.contains("did not validate")
                    && (err.contains(&field(wrong)) || err.contains(&field(right))),
                "{wrong}: the error does not name it:\n{err}"
            );
        }
    }
    for (right, wrong) in [
        ("    restartPolicy: Always", "    restartPolicy: Allways"),
        (
            "secretName: demo-dc1-keystore-password",
            "secretName: demo-dc1-keystore-pasword",
        ),
        ("runAsUser: 65532", "runAsUser: 999"),
        ("- /config/cassandra.yaml", "- /config/cassandra.yml"),
    ] {
        let dc = docs(&mutate(right, wrong)).remove(0);
        let spec = &dc["spec"]["podTemplateSpec"]["spec"];
        let caught = std::panic::catch_unwind(|| {
            check_pod(&spec["initContainers"], &spec["volumes"], CASSANDRA_UID)
        });
        assert!(caught.is_err(), "{wrong} was not caught");
    }
}

// ---------------------------------------------------------------------------------------------
// Custom resources: what ringseal depends on
// ---------------------------------------------------------------------------------------------

/// The directory mounted at `path` in `container`, or `None`.
fn mount<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)?["mountPath"]
        .as_str()
}

/// The checks on one pod spec (CassandraDatacenter's template or K8ssandraCluster's datacenter):
/// `init` its init containers, `volumes` its volumes, `pod_uid` the uid Cassandra runs as.
fn check_pod(init: &Value, volumes: &Value, pod_uid: i64) {
    let names: Vec<&str> = init
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    // After cass-operator's config step (cassandra.yaml exists), before Cassandra (init containers).
    assert_eq!(names, ["server-config-init", "ringseal-rules", "ringseal"]);

    let ringseal = named(init, "ringseal");
    assert_eq!(s(ringseal, "/restartPolicy"), "Always", "a native sidecar");
    let uid = ringseal["securityContext"]["runAsUser"].as_i64().unwrap();
    assert_ne!(
        uid, pod_uid,
        "ringseal must not run as Cassandra's uid: ringseal.nft exempts its uid from interception"
    );
    assert_eq!(ringseal["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        ringseal["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        assert_eq!(s(ringseal, &format!("/{probe}/httpGet/path")), path);
        assert_eq!(
            s(ringseal, &format!("/{probe}/httpGet/port")),
            "ringseal-metrics"
        );
    }
    let port = |name: &str| {
        named(&ringseal["ports"], name)["containerPort"]
            .as_i64()
            .unwrap()
    };
    assert!(ringseal["resources"]["requests"]["memory"].is_string());
    assert!(ringseal["resources"]["limits"]["memory"].is_string());

    // The command line: the config from the ConfigMap mount, cassandra.yaml from cass-operator's volume.
    let args: Vec<&str> = ringseal["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let arg = |flag: &str| args[args.iter().position(|a| *a == flag).unwrap() + 1];
    assert_eq!(args[0], "run");
    assert_eq!(
        arg("--cassandra-yaml"),
        format!(
            "{}/cassandra.yaml",
            mount(ringseal, "server-config").unwrap()
        ),
        "cass-operator renders /config/cassandra.yaml into the server-config volume"
    );
    assert_eq!(mount(ringseal, "server-config"), Some("/config"));
    let config_dir = mount(ringseal, "ringseal-config").unwrap();
    assert_eq!(arg("--config"), format!("{config_dir}/ringseal.toml"));

    // The config's files are where the Secrets are mounted, under the keys cert-manager writes.
    let toml: toml::Table = embedded_toml().parse().unwrap();
    let tls = toml["tls"].as_table().unwrap();
    let tls_dir = mount(ringseal, "ringseal-tls").unwrap();
    let pw_dir = mount(ringseal, "ringseal-keystore-password").unwrap();
    assert_eq!(
        tls["keystore"].as_str(),
        Some(format!("{tls_dir}/keystore.p12").as_str())
    );
    assert_eq!(
        tls["ca"].as_str(),
        Some(format!("{tls_dir}/ca.crt").as_str())
    );
    let cert = docs(&read("certificate.yaml")).remove(0);
    let secret = named(volumes, "ringseal-tls");
    assert_eq!(
        s(secret, "/secret/secretName"),
        s(&cert, "/spec/secretName"),
        "the sidecar mounts the Certificate's Secret"
    );
    let pw_volume = named(volumes, "ringseal-keystore-password");
    let pw_ref = &cert["spec"]["keystores"]["pkcs12"]["passwordSecretRef"];
    assert_eq!(cert["spec"]["keystores"]["pkcs12"]["create"], true);
    assert_eq!(s(pw_volume, "/secret/secretName"), s(pw_ref, "/name"));
    let item = &pw_volume["secret"]["items"][0];
    assert_eq!(s(item, "/key"), s(pw_ref, "/key"));
    assert_eq!(
        tls["keystore_password_file"].as_str(),
        Some(format!("{pw_dir}/{}", s(item, "/path")).as_str())
    );
    // Mode 0440 with group 999 (fsGroup): the sidecar reads the Secrets through its group.
    assert_eq!(secret["secret"]["defaultMode"], 0o440);
    assert_eq!(
        ringseal["securityContext"]["runAsGroup"].as_i64(),
        Some(CASSANDRA_UID)
    );

    // Ports: the TLS port is ssl_storage_port (7001) and metrics listens where the probes look.
    assert_eq!(port("ringseal-tls"), 7001);
    let metrics = toml["metrics"]["listen"].as_str().unwrap();
    assert!(
        metrics.starts_with("0.0.0.0:"),
        "probes come from the kubelet: {metrics}"
    );
    assert_eq!(
        metrics.rsplit(':').next().unwrap(),
        port("ringseal-metrics").to_string()
    );

    // The interception step: NET_ADMIN, root (hence Pod Security "privileged"), the ConfigMap's rules.
    let rules = named(init, "ringseal-rules");
    assert_eq!(
        rules["securityContext"]["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN"])
    );
    assert_eq!(rules["securityContext"]["runAsUser"], 0);
    let rules_dir = mount(rules, "ringseal-config").unwrap();
    assert!(
        rules["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_str() == Some(&format!("{rules_dir}/ringseal.nft"))),
        "ringseal-rules loads the ConfigMap's ruleset"
    );
    let nft = s(&doc("ringseal-config.yaml"), "/data/ringseal.nft").to_owned();
    assert!(
        nft.contains(&format!("meta skuid {uid} return")),
        "ringseal.nft exempts the sidecar's uid {uid}:\n{nft}"
    );
    assert_eq!(
        named(volumes, "ringseal-config")["configMap"]["name"],
        "ringseal-config"
    );
}

#[test]
fn cassandra_datacenter_runs_ringseal_as_a_native_sidecar() {
    let dc = doc("cassandradatacenter.yaml");
    assert_eq!(
        s(&dc, "/apiVersion"),
        "cassandra.datastax.com/v1beta1",
        "cass-operator's API"
    );
    assert_eq!(s(&dc, "/kind"), "CassandraDatacenter");
    let spec = &dc["spec"]["podTemplateSpec"]["spec"];
    let pod_uid = spec["securityContext"]["runAsUser"].as_i64().unwrap();
    assert_eq!(pod_uid, CASSANDRA_UID);
    check_pod(&spec["initContainers"], &spec["volumes"], pod_uid);
    // Cassandra's own internode encryption stays off: ringseal does it.
    assert_eq!(
        s(
            &dc,
            "/spec/config/cassandra-yaml/server_encryption_options/internode_encryption"
        ),
        "none"
    );
    // The identity patterns name this datacenter's headless service (<cluster>-<dc>-service).
    let service = format!(
        "{}-{}-service.{NS}.svc.cluster.local",
        s(&dc, "/spec/clusterName"),
        s(&dc, "/metadata/name")
    );
    check_identity(&service);
}

#[test]
fn k8ssandra_cluster_carries_the_same_sidecar() {
    let k = doc("k8ssandracluster.yaml");
    assert_eq!(s(&k, "/apiVersion"), "k8ssandra.io/v1alpha1");
    assert_eq!(s(&k, "/kind"), "K8ssandraCluster");
    let dc = &k["spec"]["cassandra"]["datacenters"][0];
    let pod_uid = dc["podSecurityContext"]["runAsUser"].as_i64().unwrap();
    check_pod(
        &dc["initContainers"],
        &dc["extraVolumes"]["volumes"],
        pod_uid,
    );
    let cdc = doc("cassandradatacenter.yaml");
    let template = &cdc["spec"]["podTemplateSpec"]["spec"];
    assert_eq!(dc["initContainers"], template["initContainers"]);
    assert_eq!(dc["extraVolumes"]["volumes"], template["volumes"]);
    assert_eq!(dc["podSecurityContext"], template["securityContext"]);
    assert_eq!(
        s(
            &k,
            "/spec/cassandra/config/cassandraYaml/server_encryption_options/internode_encryption"
        ),
        "none"
    );
    check_identity(&format!(
        "{}-{}-service.{NS}.svc.cluster.local",
        s(&k, "/metadata/name"),
        s(dc, "/metadata/name")
    ));
}

/// The Certificate's names are what both listeners' patterns allow.
fn check_identity(service: &str) {
    let cert = docs(&read("certificate.yaml")).remove(0);
    let dns = s(&cert, "/spec/dnsNames/0");
    assert_eq!(dns, format!("*.{service}"));
    let toml: toml::Table = embedded_toml().parse().unwrap();
    for listener in ["inbound", "outbound"] {
        let allow = &toml[listener].as_array().unwrap()[0]["allow"];
        let patterns: Vec<&str> = allow["dns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(patterns, [format!("*.{service}")], "{listener}");
        let uri = allow["uri"][0].as_str().unwrap();
        let issued = s(&cert, "/spec/uris/0");
        assert_eq!(
            issued.rsplit_once('/').unwrap().0,
            uri.strip_suffix("/*").unwrap(),
            "{listener}: the URI pattern allows the Certificate's URI"
        );
    }
    let usages: Vec<&str> = cert["spec"]["usages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(usages.contains(&"server auth") && usages.contains(&"client auth"));
}

#[test]
fn issuers_certificates_and_monitoring_resources() {
    let all = docs(&read("issuer.yaml"));
    let kinds: Vec<&str> = all.iter().map(|d| s(d, "/kind")).collect();
    assert_eq!(kinds, ["Issuer", "Certificate", "Issuer"]);
    let ca_cert = &all[1];
    assert_eq!(ca_cert["spec"]["isCA"], true);
    let ca_issuer = &all[2];
    assert_eq!(
        s(ca_issuer, "/spec/ca/secretName"),
        s(ca_cert, "/spec/secretName")
    );
    let cert = docs(&read("certificate.yaml")).remove(0);
    assert_eq!(s(&cert, "/apiVersion"), "cert-manager.io/v1");
    assert_eq!(
        s(&cert, "/spec/issuerRef/name"),
        s(ca_issuer, "/metadata/name")
    );
    assert_eq!(s(&cert, "/spec/issuerRef/kind"), "Issuer");

    let monitor = doc("podmonitor.yaml");
    assert_eq!(s(&monitor, "/kind"), "PodMonitor");
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(s(endpoint, "/port"), "ringseal-metrics");
    assert_eq!(s(endpoint, "/path"), "/metrics");
    let dc = doc("cassandradatacenter.yaml");
    let labels = &monitor["spec"]["selector"]["matchLabels"];
    assert_eq!(
        s(labels, "/cassandra.datastax.com~1cluster"),
        s(&dc, "/spec/clusterName")
    );
    assert_eq!(
        s(labels, "/cassandra.datastax.com~1datacenter"),
        s(&dc, "/metadata/name")
    );
    // Everything lives in one namespace.
    for name in yaml_files() {
        for d in docs(&read(&name)) {
            let ns = d["metadata"]["namespace"].as_str().or(d["metadata"]["name"]
                .as_str()
                .filter(|_| d["kind"] == "Namespace"));
            assert_eq!(ns, Some(NS), "{name}: {}", d["kind"]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The embedded config, loaded
// ---------------------------------------------------------------------------------------------

/// cert-manager's Secret as the pod sees it (keystore.p12 with the password of the password Secret,
/// ca.crt), made with `ringseal certs`, under `dir`; returns the config with the pod's paths mapped
/// there.
fn pod_files(dir: &Path, with_password: bool) -> PathBuf {
    let bin = env!("CARGO_BIN_EXE_ringseal");
    let tls = dir.join("etc/ringseal/tls");
    let pw = dir.join("etc/ringseal/keystore-password");
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::create_dir_all(&pw).unwrap();
    std::fs::write(dir.join("p12.password"), "c3rt-manager-generated").unwrap();
    run(
        dir,
        bin,
        &["certs", "ca", "--cluster-name", "demo", "--out", "ca"],
    );
    run(
        dir,
        bin,
        &[
            "certs",
            "node",
            "--ca",
            "ca",
            "--name",
            "demo-dc1",
            "--ip",
            "10.244.1.7",
            "--dns",
            "*.demo-dc1-service.cassandra.svc.cluster.local",
            "--out",
            "node",
            "--p12-password-file",
            "p12.password",
        ],
    );
    std::fs::copy(dir.join("node/demo-dc1.p12"), tls.join("keystore.p12")).unwrap();
    std::fs::copy(dir.join("ca/ca.crt"), tls.join("ca.crt")).unwrap();
    if with_password {
        std::fs::copy(dir.join("p12.password"), pw.join("password")).unwrap();
    }
    // What server-config-init writes for pod 10.244.1.7 of cluster demo (the keys ringseal reads).
    std::fs::write(
        dir.join("cassandra.yaml"),
        "cluster_name: demo\nlisten_address: 10.244.1.7\nstorage_port: 7000\nssl_storage_port: 7001\n\
         server_encryption_options:\n  internode_encryption: none\n",
    )
    .unwrap();
    let root = dir.to_str().unwrap();
    let config = dir.join("ringseal.toml");
    std::fs::write(
        &config,
        embedded_toml().replace("\"/etc/ringseal/", &format!("\"{root}/etc/ringseal/")),
    )
    .unwrap();
    config
}

fn check(dir: &Path, config: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringseal"))
        .arg("check")
        .arg("--config")
        .arg(config)
        .arg("--cassandra-yaml")
        .arg(dir.join("cassandra.yaml"))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The ConfigMap's ringseal.toml over the cassandra.yaml cass-operator renders, with the mounted
/// Secrets: `check` accepts it, listens on the pod IP and applies the patterns on both listeners.
#[test]
fn the_embedded_config_loads_over_the_rendered_cassandra_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let config = pod_files(dir.path(), true);
    let (code, stdout, stderr) = check(dir.path(), &config);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("inbound[0] listen 10.244.1.7:7001 -> forward 10.244.1.7:7000"),
        "{stdout}"
    );
    let allow = "allow dns=*.demo-dc1-service.cassandra.svc.cluster.local \
                 uri=spiffe://cluster.local/ns/cassandra/sa/*";
    assert_eq!(stdout.matches(allow).count(), 2, "{stdout}");
    assert!(stdout.contains("client auth required"), "{stdout}");
    assert!(stdout.contains("cluster    demo"), "{stdout}");
}

/// cert-manager's keystore is there, its password Secret is not (never created, or another key):
/// one line naming the missing file and the config key, exit 64.
#[test]
fn a_missing_keystore_password_secret_names_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = pod_files(dir.path(), false);
    let (code, stdout, stderr) = check(dir.path(), &config);
    assert_eq!(code, Some(64), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let line = stderr.trim_end();
    assert_eq!(line.lines().count(), 1, "one line: {stderr}");
    let file = dir.path().join("etc/ringseal/keystore-password/password");
    for want in [
        "tls.keystore_password_file",
        file.to_str().unwrap(),
        "No such file",
    ] {
        assert!(line.contains(want), "{want:?} missing in: {line}");
    }
    assert!(!line.contains("c3rt-manager-generated"), "{line}");
}
