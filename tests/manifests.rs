//! The Kubernetes manifests against the binary: every overlay built with
//! `kubectl kustomize`, then each Deployment's and Job's args and
//! environment parsed by the `trellis` command line itself (a renamed flag
//! or variable fails here), its ports, probes and Service matched to the
//! addresses those flags give, its files under a mounted volume, its URLs
//! naming Services that exist, its grace period longer than the shutdown
//! bound, and the NetworkPolicies admitting each server's callers.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;

use clap::{CommandFactory, Parser};
use serde::Deserialize;
use serde_json::Value;
use trellis_cli::{Cli, Command, ServeArgs, ServiceName};

const OVERLAYS: [&str; 3] = ["k8s/base", "k8s/overlays/dev", "k8s/overlays/prod"];

/// Who calls each server (besides the gateway, which reaches them all):
/// what the NetworkPolicies must admit.
const CALLERS: [(&str, &[&str]); 5] = [
    ("auth", &["auth", "session", "cart", "order", "execution"]),
    ("session", &["auth", "cart"]),
    ("cart", &["order"]),
    ("order", &[]),
    ("execution", &["order"]),
];

/// Read by code outside the command line (OpenTelemetry, rustls's system
/// roots for Redis).
const OTHER_VARIABLES: [&str; 3] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "SSL_CERT_FILE",
];

fn kustomize(dir: &str) -> Option<Vec<Value>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = match std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(root.join(dir))
        .output()
    {
        Ok(output) => output,
        Err(error) => {
            assert!(
                std::env::var_os("TRELLIS_REQUIRE_BACKENDS").is_none(),
                "kubectl is needed to build the manifests (TRELLIS_REQUIRE_BACKENDS is set): {error}"
            );
            common::loud(&format!(
                "SKIPPED: manifest consistency of {dir} (no kubectl: {error})"
            ));
            return None;
        }
    };
    assert!(
        output.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    Some(
        serde_yaml::Deserializer::from_str(&text)
            .map(|document| Value::deserialize(document).unwrap())
            .filter(|value| !value.is_null())
            .collect(),
    )
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap()
}

fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// Every variable a container gets: its ConfigMaps' and Secrets' keys
/// (Secrets the overlay does not make are named by the keys their
/// consumers need, with placeholder values), then its own `env`.
fn environment(docs: &[Value], container: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let (kind, reference) = if source["configMapRef"].is_object() {
            ("ConfigMap", &source["configMapRef"])
        } else {
            ("Secret", &source["secretRef"])
        };
        let wanted = str_of(&reference["name"]);
        let found = docs.iter().find(|d| d["kind"] == kind && name(d) == wanted);
        match found {
            Some(doc) => {
                for (key, value) in doc["data"].as_object().into_iter().flatten() {
                    let value = if kind == "Secret" {
                        placeholder(key)
                    } else {
                        str_of(value).to_owned()
                    };
                    env.insert(key.clone(), value);
                }
            }
            None if kind == "ConfigMap" => panic!("no ConfigMap {wanted}"),
            // Made by the operator (prod): the keys its consumers read.
            None => {
                for key in secret_keys(wanted) {
                    env.insert((*key).to_owned(), placeholder(key));
                }
            }
        }
    }
    for variable in container["env"].as_array().into_iter().flatten() {
        let key = str_of(&variable["name"]).to_owned();
        let value = match variable.get("value") {
            Some(value) => str_of(value).to_owned(),
            None => placeholder(&key),
        };
        env.insert(key, value);
    }
    env
}

/// The keys the README tells operators to put in each Secret.
fn secret_keys(secret: &str) -> &'static [&'static str] {
    match secret {
        "trellis-secrets" => &["TRELLIS_DATABASE_URL", "TRELLIS_REDIS_URL"],
        "trellis-service-account" => {
            &["TRELLIS_SERVICE_CLIENT_ID", "TRELLIS_SERVICE_CLIENT_SECRET"]
        }
        "trellis-fulfillment-worker" => &[
            "TRELLIS_FULFILLMENT_CLIENT_ID",
            "TRELLIS_FULFILLMENT_CLIENT_SECRET",
        ],
        other => panic!("a Secret the README does not describe: {other}"),
    }
}

/// A value that parses where the real one would.
fn placeholder(key: &str) -> String {
    match key {
        k if k.ends_with("_CLIENT_ID") => "6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f".into(),
        "TRELLIS_DATABASE_URL" => "postgres://trellis@db:5432/trellis".into(),
        "TRELLIS_REDIS_URL" => "redis://redis:6379/".into(),
        _ => "placeholder-secret-value-0123456789abcdef".into(),
    }
}

/// `args` plus each variable as the flag clap reads it from, so values are
/// checked by the same parsers; a variable no flag reads is an error.
/// For a Job, variables of the servers' shared ConfigMap that its command
/// does not read are passed over (but must still be read by `serve`).
fn command_line(args: &[String], env: &BTreeMap<String, String>) -> Vec<String> {
    let flags = flags_of(args);
    let serve = flags_of(&["serve".to_owned()]);
    let mut argv = vec!["trellis".to_owned()];
    argv.extend(args.iter().cloned());
    for (key, value) in env {
        let Some((long, takes_value)) = flags.get(key) else {
            assert!(
                OTHER_VARIABLES.contains(&key.as_str()) || serve.contains_key(key),
                "{key} is read by no flag of `trellis {}`",
                args.join(" ")
            );
            continue;
        };
        // A flag in args wins over its variable, as clap does it; an empty
        // variable is unset.
        if value.is_empty() || args.iter().any(|a| a == &format!("--{long}")) {
            continue;
        }
        if *takes_value {
            argv.push(format!("--{long}={value}"));
        } else if matches!(value.as_str(), "1" | "true" | "yes" | "on") {
            argv.push(format!("--{long}"));
        }
    }
    argv
}

/// The flags of the (sub)command `args` starts with, by the variable each
/// reads: its long name and whether it takes a value.
fn flags_of(args: &[String]) -> BTreeMap<String, (String, bool)> {
    let command = Cli::command();
    let mut sub = &command;
    for word in args.iter().take_while(|a| !a.starts_with('-')) {
        match sub.find_subcommand(word) {
            Some(found) => sub = found,
            None => break,
        }
    }
    sub.get_arguments()
        .filter_map(|arg| {
            Some((
                arg.get_env()?.to_str()?.to_owned(),
                (arg.get_long()?.to_owned(), arg.get_action().takes_values()),
            ))
        })
        .collect()
}

/// Files a container reads outside its flags (Redis's CA) are mounted,
/// and the Secret volumes it mounts are readable by its user: a mode
/// without "others may read" needs the pod's fsGroup.
fn check_files(what: &str, pod: &Value, container: &Value, env: &BTreeMap<String, String>) {
    if let Some(file) = env.get("SSL_CERT_FILE") {
        assert!(
            mounted(container, Path::new(file)),
            "{what}: SSL_CERT_FILE {file} is on no volume"
        );
    }
    for volume in pod["volumes"].as_array().into_iter().flatten() {
        let Some(mode) = volume["secret"]["defaultMode"].as_u64() else {
            continue;
        };
        let used = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["name"] == volume["name"]);
        if used && mode & 0o004 == 0 {
            assert!(
                pod["securityContext"]["fsGroup"].is_u64(),
                "{what}: Secret volume {} (mode {mode:o}) is unreadable without an fsGroup",
                str_of(&volume["name"])
            );
        }
    }
}

fn args_of(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| str_of(a).to_owned())
        .collect()
}

fn container_port(container: &Value, port_name: &str) -> Option<u16> {
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == port_name)
        .map(|p| p["containerPort"].as_u64().unwrap() as u16)
}

fn mounted(container: &Value, file: &Path) -> bool {
    container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|m| file.starts_with(str_of(&m["mountPath"])))
}

fn check_deployment(docs: &[Value], deployment: &Value) -> ServiceName {
    let label = |key: &str| str_of(&deployment["spec"]["template"]["metadata"]["labels"][key]);
    let component = label("app.kubernetes.io/component").to_owned();
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args = args_of(container);
    let env = environment(docs, container);
    let argv = command_line(&args, &env);
    let what = format!("{} ({})", name(deployment), argv.join(" "));
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{what}: {e}"));
    let Command::Serve { services, args } = cli.command else {
        panic!("{what}: not `trellis serve`");
    };
    assert_eq!(services.len(), 1, "{what}: one server per Deployment");
    let service = services[0];
    assert_eq!(service.as_str(), component, "{what}: component label");
    check_files(&what, pod, container, &env);
    check_serve_args(docs, deployment, container, service, &args, &what);
    service
}

fn check_serve_args(
    docs: &[Value],
    deployment: &Value,
    container: &Value,
    service: ServiceName,
    args: &ServeArgs,
    what: &str,
) {
    let pod = &deployment["spec"]["template"]["spec"];
    // The server's own port, by the name its Service targets.
    let port_name = if service.serves_grpc_services() {
        "grpc"
    } else {
        "http"
    };
    let listen = service.listen_address(&args.servers);
    assert!(
        listen.ip().is_unspecified(),
        "{what}: listens on {listen}, not reachable from other pods"
    );
    assert_eq!(
        container_port(container, port_name),
        Some(listen.port()),
        "{what}: containerPort {port_name}"
    );
    let admin: SocketAddr = args
        .admin_addr
        .unwrap_or_else(|| panic!("{what}: no admin port"));
    assert_eq!(
        container_port(container, "admin"),
        Some(admin.port()),
        "{what}"
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            container[probe]["grpc"]["port"].as_u64(),
            Some(admin.port() as u64),
            "{what}: {probe} on the admin port (plaintext health)"
        );
    }
    let scrape = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        str_of(&scrape["prometheus.io/port"]),
        admin.port().to_string(),
        "{what}"
    );
    assert_eq!(str_of(&scrape["prometheus.io/path"]), "/metrics", "{what}");

    let bound = args.limits.shutdown_drain + args.limits.shutdown_grace;
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > bound.as_secs(),
        "{what}: terminationGracePeriodSeconds {grace} is not above drain + grace {bound:?}"
    );

    // Files the flags name are on a mounted volume.
    let mut files = vec![args.storage.data_dir.clone()];
    files.extend(args.tls.tls_cert.clone());
    files.extend(args.tls.tls_key.clone());
    files.extend(args.tls.tls_ca.clone());
    files.extend(args.tls.tls_client_ca.clone());
    for file in files {
        assert!(
            mounted(container, &file),
            "{what}: {} is on no volume",
            file.display()
        );
    }

    // Every server URL names a Service of this overlay at that port, with
    // the scheme TLS asks for.
    let tls = trellis_runtime::ClientTls::from_args(&args.tls);
    for upstream in ServiceName::ALL {
        let Some(url) = upstream.upstream_url(&args.servers) else {
            continue;
        };
        trellis_runtime::UpstreamTarget::new(url, tls.clone())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let uri: http::Uri = url.parse().unwrap();
        let host = uri.host().unwrap();
        let port = uri.port_u16().unwrap();
        let target = docs
            .iter()
            .find(|d| d["kind"] == "Service" && name(d) == host)
            .unwrap_or_else(|| panic!("{what}: {url} names no Service"));
        assert!(
            target["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["port"].as_u64() == Some(port as u64)),
            "{what}: Service {host} has no port {port}"
        );
    }

    // Its Service selects it and targets its port.
    let service_doc = docs
        .iter()
        .find(|d| d["kind"] == "Service" && name(d) == name(deployment))
        .unwrap_or_else(|| panic!("{what}: no Service"));
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (key, value) in service_doc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&labels[key], value, "{what}: Service selector {key}");
    }
    for port in service_doc["spec"]["ports"].as_array().unwrap() {
        let target = str_of(&port["targetPort"]);
        assert_eq!(
            container_port(container, target).map(u64::from),
            port["port"].as_u64(),
            "{what}: Service port {target}"
        );
    }
}

fn check_job_container(docs: &[Value], job: &Value, container: &Value) {
    let args = args_of(container);
    // A Secret key a Job reads is one the servers read too.
    for variable in container["env"].as_array().into_iter().flatten() {
        if let Some(key) = variable["valueFrom"]["secretKeyRef"]["key"].as_str() {
            let secret = str_of(&variable["valueFrom"]["secretKeyRef"]["name"]);
            assert!(
                secret_keys(secret).contains(&key),
                "{}: {secret} has no key {key}",
                name(job)
            );
        }
    }
    let env = environment(docs, container);
    check_files(name(job), &job["spec"]["template"]["spec"], container, &env);
    let argv = command_line(&args, &env);
    Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("{} ({}): {e}", name(job), argv.join(" ")));
}

fn check_network_policies(docs: &[Value], deployments: &BTreeMap<String, &Value>) {
    let policies = of_kind(docs, "NetworkPolicy");
    for (server, callers) in CALLERS {
        let policy = policies
            .iter()
            .find(|p| {
                p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == server
            })
            .unwrap_or_else(|| panic!("no NetworkPolicy for {server}"));
        let rules = policy["spec"]["ingress"].as_array().unwrap();
        let admitted: BTreeSet<&str> = rules
            .iter()
            .flat_map(|rule| rule["from"].as_array().into_iter().flatten())
            .filter_map(|from| {
                from["podSelector"]["matchLabels"]["app.kubernetes.io/component"].as_str()
            })
            .collect();
        for caller in callers.iter().chain(&["gateway"]) {
            assert!(
                admitted.contains(caller),
                "{server} does not admit {caller}: {admitted:?}"
            );
        }
        let container = &deployments[server]["spec"]["template"]["spec"]["containers"][0];
        for rule in rules {
            for port in rule["ports"].as_array().into_iter().flatten() {
                let named = str_of(&port["port"]);
                assert!(
                    container_port(container, named).is_some(),
                    "{server}'s policy admits port {named}, which its pods do not have"
                );
            }
        }
    }
}

#[test]
fn every_overlay_matches_what_the_binary_accepts() {
    for overlay in OVERLAYS {
        let Some(docs) = kustomize(overlay) else {
            continue;
        };
        let mut deployments = BTreeMap::new();
        let mut servers = BTreeSet::new();
        for deployment in of_kind(&docs, "Deployment") {
            let server = check_deployment(&docs, deployment);
            assert!(
                servers.insert(server.as_str()),
                "{overlay}: two Deployments of {}",
                server.as_str()
            );
            deployments.insert(server.as_str().to_owned(), deployment);
        }
        let every: BTreeSet<&str> = ServiceName::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(servers, every, "{overlay}: a Deployment per server");
        for job in of_kind(&docs, "Job") {
            let spec = &job["spec"]["template"]["spec"];
            for container in spec["initContainers"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(spec["containers"].as_array().unwrap())
            {
                check_job_container(&docs, job, container);
            }
        }
        check_network_policies(&docs, &deployments);
        // Every server is disrupted and scaled one way or the other.
        for server in &every {
            let named = format!("trellis-{server}");
            assert!(
                of_kind(&docs, "PodDisruptionBudget")
                    .iter()
                    .any(|d| name(d) == named),
                "{overlay}: no PodDisruptionBudget for {server}"
            );
        }
    }
}
