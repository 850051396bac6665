//! The deployment files' shape (deployment.rs runs them as processes). docker-compose.yml is
//! checked against the binaries: service names, ports, and every environment variable of
//! wrapper, crm, hrms and projects is a flag of that binary (read from its clap definition, i.e. what `--help` prints). Then the
//! Kubernetes manifests (deploy/k8s, validated against the Kubernetes schema by scripts/test)
//! against compose: the same images, ports and variables; and the Dockerfile's promises.

use std::collections::{BTreeMap, BTreeSet};

use clap::CommandFactory;

/// `service -> (environment keys, published ports)` from our compose file's block style.
fn parse_compose(text: &str) -> BTreeMap<String, (BTreeSet<String>, Vec<String>)> {
    let mut services = BTreeMap::new();
    let (mut service, mut section) = (None::<String>, "");
    for line in text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
    {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        match indent {
            2 => {
                let name = trimmed.trim_end_matches(':').to_owned();
                services.insert(name.clone(), (BTreeSet::new(), Vec::new()));
                service = Some(name);
            }
            4 => section = trimmed.split(':').next().unwrap_or(""),
            6 => {
                let entry = services.get_mut(service.as_ref().unwrap()).unwrap();
                match section {
                    "environment" => {
                        entry
                            .0
                            .insert(trimmed.split(':').next().unwrap().to_owned());
                    }
                    "ports" => entry.1.push(
                        trimmed
                            .trim_start_matches("- ")
                            .trim_matches('"')
                            .to_owned(),
                    ),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    services
}

fn env_flags(command: clap::Command) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack = vec![command];
    while let Some(c) = stack.pop() {
        for arg in c.get_arguments() {
            if let Some(env) = arg.get_env() {
                names.insert(env.to_string_lossy().into_owned());
            }
        }
        stack.extend(c.get_subcommands().cloned());
    }
    names
}

#[test]
fn compose_matches_the_binaries_flags_and_ports() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docker-compose.yml"
    ))
    .unwrap();
    let services = parse_compose(&text);
    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    for expected in [
        "postgres", "redis", "mongo", "wrapper", "crm", "hrms", "projects", "nginx",
    ] {
        assert!(
            names.contains(&expected),
            "service {expected} missing: {names:?}"
        );
    }
    let binaries = [
        (
            "wrapper",
            env_flags(wrapper::config::Cli::command()),
            "WRAPPER_LISTEN",
            "8080",
        ),
        (
            "crm",
            env_flags(crm::Settings::command()),
            "CRM_LISTEN",
            "8081",
        ),
        (
            "hrms",
            env_flags(hrms::Settings::command()),
            "HRMS_LISTEN",
            "8082",
        ),
        (
            "projects",
            env_flags(projects::Settings::command()),
            "PROJECTS_LISTEN",
            "8083",
        ),
    ];
    for (service, flags, listen, port) in binaries {
        let (env, ports) = &services[service];
        assert!(!env.is_empty(), "{service} has no environment");
        for key in env {
            assert!(
                flags.contains(key),
                "{service}: {key} is not a flag of the binary ({flags:?})"
            );
        }
        assert!(env.contains(listen), "{service} sets no {listen}");
        assert_eq!(ports, &vec![format!("{port}:{port}")], "{service} ports");
    }
    assert_eq!(services["nginx"].1, vec!["80:80"]);
    assert!(text.contains("--appendonly\", \"yes"), "redis keeps an AOF");
    assert!(
        text.contains("--replSet"),
        "mongo runs as a replica set (transactions)"
    );
}

/// Every YAML document of `path` (relative to the repository) as JSON, read by PyYAML from the
/// validators' venv (scripts/services).
/// The YAML documents of `path` (relative to the repository, or absolute) as JSON.
pub(crate) fn yaml_documents(path: &str) -> Vec<serde_json::Value> {
    let python = std::env::var("VALIDATORS_PYTHON").unwrap_or_else(|_| "python3".into());
    let full = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
    };
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
            &full,
        ])
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e} (run scripts/services)"));
    assert!(
        out.status.success(),
        "{path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (image, container ports, environment names) of one service.
type Shape = (String, BTreeSet<u64>, BTreeSet<String>);

fn k8s_shape(name: &str) -> Shape {
    let file = if name == "nginx" {
        "deploy/k8s/nginx.yaml".to_owned()
    } else {
        format!("deploy/k8s/{name}.yaml")
    };
    let docs = yaml_documents(&file);
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap_or_else(|| panic!("{file}: no Deployment"));
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let ports = container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["containerPort"].as_u64())
        .collect();
    let env = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect();
    let service = docs.iter().find(|d| d["kind"] == "Service").unwrap();
    for port in service["spec"]["ports"].as_array().unwrap() {
        assert_eq!(
            port["targetPort"], "http",
            "{file}: the Service targets the named port"
        );
    }
    (container["image"].as_str().unwrap().to_owned(), ports, env)
}

fn compose_shape(compose: &serde_json::Value, name: &str) -> Shape {
    let service = &compose["services"][name];
    let ports = service["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str()?.rsplit(':').next()?.parse().ok())
        .collect();
    let env = service["environment"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .collect();
    (
        service["image"].as_str().unwrap_or_default().to_owned(),
        ports,
        env,
    )
}

/// The apps of `nginx/apps` (name, port): the one list of the suite's apps.
pub(crate) fn listed_apps() -> Vec<(String, u64)> {
    let list = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../nginx/apps"))
        .expect("nginx/apps");
    list.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, port) = l.split_once(char::is_whitespace).expect("name port");
            (name.to_owned(), port.trim().parse().expect("a port"))
        })
        .collect()
}

#[test]
fn kubernetes_runs_the_images_ports_and_variables_compose_runs() {
    let compose = yaml_documents("docker-compose.yml").remove(0);
    // Every app of nginx/apps, on its port there, and nothing else: the list is the one source
    // of the app names and ports compose, Kubernetes and the edge use.
    let apps = listed_apps();
    let images = |services: &serde_json::Map<String, serde_json::Value>| -> BTreeSet<String> {
        services
            .values()
            .filter_map(|s| s["image"].as_str()?.strip_prefix("tenantsync/"))
            .filter_map(|i| i.split(':').next().map(str::to_owned))
            .filter(|b| b != "wrapper")
            .collect()
    };
    assert_eq!(
        images(compose["services"].as_object().unwrap()),
        apps.iter().map(|(n, _)| n.clone()).collect(),
        "compose runs the apps of nginx/apps"
    );
    for (name, port) in &apps {
        assert_eq!(
            compose_shape(&compose, name).1,
            BTreeSet::from([*port]),
            "compose: {name} is not on its port of nginx/apps"
        );
    }
    let names = apps.iter().map(|(n, _)| n.as_str());
    for name in std::iter::once("wrapper").chain(names).chain(["nginx"]) {
        let (k8s, local) = (k8s_shape(name), compose_shape(&compose, name));
        assert_eq!(k8s.0, local.0, "{name}: image");
        assert_eq!(k8s.1, local.1, "{name}: ports");
        if name != "nginx" {
            // The wrapper migrates at start in compose and in a Job in Kubernetes: same variable.
            assert_eq!(k8s.2, local.2, "{name}: environment variables");
            // Built from the one Dockerfile, for the port it serves.
            let build = &compose["services"][name]["build"]["args"];
            assert_eq!(build["BIN"], name, "{name}: the image's binary");
            assert_eq!(
                build["PORT"].as_str(),
                local.1.first().map(u64::to_string).as_deref()
            );
        }
    }
    // Every resource a file of deploy/k8s holds is listed in the kustomization.
    let kustomization = yaml_documents("deploy/k8s/kustomization.yaml").remove(0);
    let listed: BTreeSet<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s");
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let file = entry.file_name().into_string().unwrap();
        if file != "kustomization.yaml" {
            assert!(
                listed.contains(file.as_str()),
                "{file} is not in kustomization.yaml"
            );
        }
    }
    // Compose waits on health, not on start order.
    for (name, service) in compose["services"].as_object().unwrap() {
        if let Some(deps) = service["depends_on"].as_object() {
            for (dep, how) in deps {
                let condition = how["condition"].as_str().unwrap_or_default();
                assert!(
                    condition.starts_with("service_"),
                    "{name} waits for {dep} without a condition"
                );
            }
        }
    }
}

#[test]
fn the_image_runs_unprivileged_checks_its_health_and_caches_its_dependencies() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let dockerfile = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    let lines: Vec<&str> = dockerfile.lines().map(str::trim).collect();
    let at = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix));
    let user = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER");
    assert!(
        !user.contains("root") && !user.ends_with(" 0"),
        "runs as {user}"
    );
    assert!(at("HEALTHCHECK").is_some(), "no HEALTHCHECK");
    // What ships carries no DWARF (the line tables are split off in the build stage).
    assert!(
        dockerfile.contains("objcopy --strip-debug") && dockerfile.contains("--only-keep-debug"),
        "the image ships its debug info"
    );
    assert!(
        dockerfile.contains("/health/live"),
        "the health check probes liveness"
    );
    let cook = at("RUN cargo chef cook").expect("dependencies built in their own layer");
    let sources = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| **l == "COPY . .")
        .map(|(i, _)| i)
        .next_back()
        .expect("the sources are copied");
    assert!(
        cook < sources,
        "the dependency layer comes before the sources"
    );
    let ignore = std::fs::read_to_string(format!("{root}/.dockerignore")).unwrap();
    for path in ["target/", ".git/", "**/node_modules/"] {
        assert!(
            ignore.lines().any(|l| l == path),
            ".dockerignore lacks {path}"
        );
    }
}

/// `name=secret` pairs of a `WRAPPER_REDIS_ACL_USERS` value.
fn acl_users(value: &str) -> BTreeMap<String, String> {
    value
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(n, s)| (n.to_owned(), s.to_owned()))
        .collect()
}

/// Whether `url` connects as `<namespace>-<service>` with `secret`.
fn connects_as(url: &str, service: &str, secret: &str) -> bool {
    url.contains(&format!("://tsync-{service}:{secret}@"))
}

#[test]
fn every_service_connects_to_redis_as_its_own_acl_user_in_compose_and_kubernetes() {
    let listed = listed_apps();
    let services: Vec<&str> = std::iter::once("wrapper")
        .chain(listed.iter().map(|(n, _)| n.as_str()))
        .collect();
    let compose = yaml_documents("docker-compose.yml").remove(0);
    let job = &compose["services"]["redis-acl"];
    assert_eq!(job["command"], serde_json::json!(["redis-acl", "apply"]));
    let users = acl_users(
        job["environment"]["WRAPPER_REDIS_ACL_USERS"]
            .as_str()
            .unwrap_or_default(),
    );
    for &service in &services {
        let url = compose["services"][service]["environment"]["REDIS_URL"]
            .as_str()
            .unwrap_or_default();
        let secret = users.get(service).map(String::as_str).unwrap_or("?");
        assert!(
            connects_as(url, service, secret),
            "compose: {service} connects as {url}, not as its ACL user"
        );
    }
    assert_eq!(
        compose["services"]["wrapper"]["depends_on"]["redis-acl"]["condition"],
        "service_completed_successfully"
    );
    let secrets = yaml_documents("deploy/k8s/secrets.yaml").remove(0);
    let data = &secrets["stringData"];
    let users = acl_users(data["redis-acl-users"].as_str().unwrap_or_default());
    for &service in &services {
        let url = data[format!("{service}-redis-url")]
            .as_str()
            .unwrap_or_default();
        let secret = users.get(service).map(String::as_str).unwrap_or("?");
        assert!(
            connects_as(url, service, secret),
            "k8s: {service}-redis-url is {url}, not its ACL user"
        );
        let deployment = yaml_documents(&format!("deploy/k8s/{service}.yaml"));
        let text = serde_json::to_string(&deployment).unwrap();
        assert!(
            text.contains(&format!("\"key\":\"{service}-redis-url\"")),
            "k8s: {service} does not read its own Redis URL"
        );
    }
    assert!(
        data.get("redis-url").is_none(),
        "a shared Redis URL is left"
    );
    let job = yaml_documents("deploy/k8s/redis-acl-job.yaml").remove(0);
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"],
        serde_json::json!(["redis-acl", "apply"])
    );
}

#[test]
fn the_wrapper_creates_every_apps_service_client_from_the_apps_own_secret() {
    let listed = listed_apps();
    let apps: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    let compose = yaml_documents("docker-compose.yml").remove(0);
    let clients = acl_users(
        compose["services"]["wrapper"]["environment"]["WRAPPER_BOOTSTRAP_SERVICE_CLIENTS"]
            .as_str()
            .unwrap_or_default(),
    );
    for &app in &apps {
        let secret = &compose["services"][app]["environment"]["APP_SERVICE_SECRET"];
        assert_eq!(
            clients.get(app).map(String::as_str),
            secret.as_str(),
            "compose: the wrapper does not create {app}'s service client with its secret"
        );
    }
    // And the tenant the README sends users to exists: compose creates it at the first start,
    // on a plan with every app.
    let tenant = compose["services"]["wrapper"]["environment"]["WRAPPER_BOOTSTRAP_TENANT"]
        .as_str()
        .unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_str(tenant).expect("a tenant");
    let _: wrapper::api::tenants::CreateTenant =
        serde_json::from_str(tenant).expect("the body of POST /api/tenants");
    assert_eq!(parsed["subdomain"], "acme");
    for &app in &apps {
        assert!(
            parsed["features"].as_array().unwrap().contains(&app.into()),
            "acme lacks {app}"
        );
    }
    let wrapper = yaml_documents("deploy/k8s/wrapper.yaml");
    let deployment = wrapper.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let env = pod["containers"][0]["env"].as_array().unwrap();
    let value = env
        .iter()
        .find(|e| e["name"] == "WRAPPER_BOOTSTRAP_SERVICE_CLIENTS")
        .and_then(|e| e["value"].as_str())
        .unwrap_or_default();
    let mount = pod["containers"][0]["volumeMounts"][0]["mountPath"]
        .as_str()
        .unwrap_or_default();
    let items = pod["volumes"][0]["secret"]["items"].as_array().unwrap();
    for &app in &apps {
        let docs = yaml_documents(&format!("deploy/k8s/{app}.yaml"));
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        let app_env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap();
        let key = app_env
            .iter()
            .find(|e| e["name"] == "APP_SERVICE_SECRET")
            .and_then(|e| e["valueFrom"]["secretKeyRef"]["key"].as_str())
            .unwrap_or_default();
        let path = items
            .iter()
            .find(|i| i["key"] == key)
            .and_then(|i| i["path"].as_str())
            .unwrap_or("?");
        assert!(
            value.contains(&format!("{app}=@{mount}/{path}")),
            "k8s: {app}'s service client is not made from the secret it reads ({key}): {value}"
        );
    }
}

#[test]
fn the_wrapper_believes_forwarded_addresses_from_the_edge_alone() {
    let compose = yaml_documents("docker-compose.yml").remove(0);
    let edge = compose["services"]["nginx"]["networks"]["default"]["ipv4_address"]
        .as_str()
        .expect("the edge has a fixed address");
    let subnet: wrapper::context::IpRange =
        compose["networks"]["default"]["ipam"]["config"][0]["subnet"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .unwrap();
    assert!(subnet.contains(edge.parse().unwrap()));
    let trusted = compose["services"]["wrapper"]["environment"]["WRAPPER_TRUSTED_PROXIES"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(trusted, edge, "compose trusts more than the edge");
    let k8s = k8s_shape("wrapper");
    assert!(k8s.2.contains("WRAPPER_TRUSTED_PROXIES"));
}

#[test]
fn the_edge_and_the_wrapper_serve_one_parent_domain_and_the_cluster_waits_for_a_replica() {
    let conf = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../nginx/nginx.conf"))
        .unwrap();
    let server_name = |text: &str| -> String {
        text.lines()
            .find_map(|l| l.trim().strip_prefix("server_name "))
            .map(|d| d.trim_end_matches(';').to_owned())
            .expect("a server_name")
    };
    let compose = yaml_documents("docker-compose.yml").remove(0);
    assert_eq!(
        compose["services"]["wrapper"]["environment"]["WRAPPER_COOKIE_DOMAIN"]
            .as_str()
            .unwrap_or_default(),
        server_name(&conf),
        "compose: the wrapper's cookie domain is not the edge's"
    );
    let config = yaml_documents("deploy/k8s/config.yaml").remove(0);
    let domain = config["data"]["cookie-domain"].as_str().unwrap_or_default();
    let edge = yaml_documents("deploy/k8s/nginx-config.yaml").remove(0);
    assert_eq!(
        server_name(edge["data"]["nginx.conf"].as_str().unwrap_or_default()),
        domain,
        "k8s: the edge's parent domain is not the wrapper's"
    );
    let wrapper = yaml_documents("deploy/k8s/wrapper.yaml");
    let deployment = wrapper.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    let var = |name: &str| env.iter().find(|e| e["name"] == name).cloned();
    assert_eq!(
        var("WRAPPER_COOKIE_DOMAIN").unwrap()["valueFrom"]["configMapKeyRef"]["key"],
        "cookie-domain"
    );
    assert_eq!(var("WRAPPER_RELAY_WAIT_REPLICAS").unwrap()["value"], "1");
    // TLS at the Ingress, for the same parent domain; the edge behind it takes the client from
    // the range the wrapper trusts too.
    let ingress = yaml_documents("deploy/k8s/ingress.yaml").remove(0);
    let wildcard = format!("*{domain}");
    assert_eq!(ingress["spec"]["tls"][0]["hosts"][0], wildcard.as_str());
    assert_eq!(ingress["spec"]["rules"][0]["host"], wildcard.as_str());
    assert!(ingress["spec"]["tls"][0]["secretName"].is_string());
    assert_eq!(
        var("WRAPPER_TRUSTED_PROXIES").unwrap()["valueFrom"]["configMapKeyRef"]["key"],
        "trusted-proxies"
    );
    let edge_conf = edge["data"]["nginx.conf"].as_str().unwrap_or_default();
    for range in config["data"]["trusted-proxies"]
        .as_str()
        .unwrap_or_default()
        .split(',')
    {
        assert!(
            edge_conf.contains(&format!("set_real_ip_from {range};")),
            "the edge does not take the client from behind {range}"
        );
    }
    assert!(edge_conf.contains("proxy_set_header X-Forwarded-Proto $forwarded_proto;"));
}
