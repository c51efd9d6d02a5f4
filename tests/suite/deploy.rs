//! What `wash` and wadm read: `wasmcloud.toml` (provider and example component), `wadm.yaml`,
//! the manifests the docs show, and the built example component. Parsed with wadm's own types and
//! checked against the provider's code, so the docs cannot drift from what runs.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use piggybank::config::provider as keys;
use piggybank::provider::links::LinkScope;
use wadm_types::validation::{validate_manifest_bytes, ValidationFailureLevel};
use wadm_types::{Manifest, Properties, TraitProperty};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: impl AsRef<Path>) -> String {
    let path = root().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn toml_file(path: &str) -> toml::Table {
    read(path).parse().unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn str_at<'a>(table: &'a toml::Table, path: &[&str]) -> &'a str {
    let mut value = table.get(path[0]);
    for key in &path[1..] {
        value = value.and_then(|v| v.get(key));
    }
    value
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("missing string {}", path.join(".")))
}

/// The worlds a WIT directory declares.
fn wit_worlds(dir: &str) -> HashSet<String> {
    let text = read(format!("{dir}/world.wit"));
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("world "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn provider_wasmcloud_toml_has_what_wash_needs() {
    let project = toml_file("wasmcloud.toml");
    let cargo = toml_file("Cargo.toml");
    assert_eq!(str_at(&project, &["type"]), "provider");
    assert_eq!(str_at(&project, &["language"]), "rust");
    assert_eq!(str_at(&project, &["name"]), "piggybank");
    assert_eq!(
        str_at(&project, &["version"]),
        str_at(&cargo, &["package", "version"])
    );
    assert!(!str_at(&project, &["provider", "vendor"]).is_empty());
    let bin = str_at(&project, &["provider", "bin_name"]);
    let bins: Vec<&str> = cargo["bin"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b.get("name").and_then(toml::Value::as_str))
        .collect();
    assert!(bins.contains(&bin), "bin_name {bin} is not a cargo binary");
    assert_eq!(bin, keys::NAME);
    let world = str_at(&project, &["provider", "wit_world"]);
    assert!(
        wit_worlds("wit").contains(world),
        "no world {world} in wit/"
    );
}

#[test]
fn component_wasmcloud_toml_has_what_wash_needs() {
    let project = toml_file("examples/admin-component/wasmcloud.toml");
    let cargo = toml_file("examples/admin-component/Cargo.toml");
    assert_eq!(str_at(&project, &["type"]), "component");
    assert_eq!(str_at(&project, &["language"]), "rust");
    assert_eq!(
        str_at(&project, &["name"]),
        str_at(&cargo, &["package", "name"])
    );
    assert_eq!(
        str_at(&project, &["component", "wasm_target"]),
        "wasm32-wasip2"
    );
    let world = str_at(&project, &["component", "wit_world"]);
    assert!(wit_worlds("examples/admin-component/wit").contains(world));
    // The component vendors the provider's WIT, not a copy that could drift.
    let vendored = root().join("examples/admin-component/wit/deps/piggybank-secrets");
    assert_eq!(
        std::fs::canonicalize(vendored).unwrap(),
        std::fs::canonicalize(root().join("wit")).unwrap()
    );
}

/// Parse and validate a manifest with wadm's types; no validation errors allowed.
fn validated(yaml: &str, what: &str) -> Manifest {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (manifest, failures) = runtime
        .block_on(validate_manifest_bytes(yaml.as_bytes()))
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    let errors: Vec<_> = failures
        .iter()
        .filter(|f| matches!(f.level, ValidationFailureLevel::Error))
        .map(|f| f.msg.clone())
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:?}");
    manifest
}

/// Check a manifest against the provider: config keys it knows, keys through a secrets policy
/// of another backend, link configs it accepts, and a component reading a piggybank secret.
fn check_piggybank_manifest(manifest: &Manifest, what: &str) {
    let policies: HashMap<&str, &str> = manifest
        .spec
        .policies
        .iter()
        .map(|p| (p.name.as_str(), p.properties["backend"].as_str()))
        .collect();
    let mut provider_seen = false;
    let mut links_seen = 0;
    let mut secret_readers = 0;
    for component in &manifest.spec.components {
        match &component.properties {
            Properties::Capability { properties }
                if properties.id.as_deref() == Some("piggybank") =>
            {
                provider_seen = true;
                for config in &properties.config {
                    for key in config.properties.iter().flatten().map(|(k, _)| k) {
                        assert!(
                            keys::CONFIG_KEYS.contains(&key.as_str()),
                            "{what}: unknown provider config key {key}"
                        );
                        assert!(
                            key != keys::TRANSIT_XKEY_SEED && key != keys::ENCRYPTION_XKEY_SEED,
                            "{what}: keys belong in secrets, not config"
                        );
                    }
                }
                let secrets: HashMap<&str, &str> = properties
                    .secrets
                    .iter()
                    .map(|s| (s.name.as_str(), s.properties.policy.as_str()))
                    .collect();
                for key in [keys::TRANSIT_XKEY_SEED, keys::ENCRYPTION_XKEY_SEED] {
                    let policy = secrets
                        .get(key)
                        .unwrap_or_else(|| panic!("{what}: provider gets no {key} secret"));
                    let backend = policies[policy];
                    assert_ne!(
                        backend, "nats-kv",
                        "{what}: piggybank cannot serve its own keys"
                    );
                }
            }
            Properties::Component { properties } => {
                secret_readers += properties
                    .secrets
                    .iter()
                    .filter(|s| policies.get(s.properties.policy.as_str()) == Some(&"nats-kv"))
                    .count();
            }
            Properties::Capability { .. } => {}
        }
        for t in component.traits.iter().flatten() {
            let TraitProperty::Link(link) = &t.properties else {
                continue;
            };
            if link.target.name != "piggybank" {
                continue;
            }
            links_seen += 1;
            assert_eq!(
                (link.namespace.as_str(), link.package.as_str()),
                (keys::WIT_NAMESPACE, keys::WIT_PACKAGE)
            );
            assert_eq!(link.interfaces, [keys::WIT_INTERFACE]);
            let mut config = HashMap::new();
            for c in &link.target.config {
                config.extend(c.properties.clone().unwrap_or_default());
            }
            let scope = LinkScope::from_config(&config)
                .unwrap_or_else(|e| panic!("{what}: the provider would refuse this link: {e}"));
            assert!(!scope.prefix.is_empty(), "{what}: show a scoped link");
        }
    }
    assert!(
        provider_seen,
        "{what}: no piggybank provider (id: piggybank)"
    );
    assert!(
        links_seen > 0,
        "{what}: no component linked to the provider"
    );
    assert!(
        secret_readers > 0,
        "{what}: no component reads a piggybank secret"
    );
}

#[test]
fn wadm_yaml_is_valid_and_matches_the_provider() {
    let manifest = validated(&read("wadm.yaml"), "wadm.yaml");
    check_piggybank_manifest(&manifest, "wadm.yaml");
}

/// The README and every page of `docs/`, by path.
fn doc_pages() -> Vec<(String, String)> {
    let mut pages = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| format!("docs/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|p| p.ends_with(".md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
        .into_iter()
        .map(|p| {
            let text = read(&p);
            (p, text)
        })
        .collect()
}

/// Fenced blocks of `lang` in the README and `docs/` (the manifests are in
/// `docs/deployment.md`, the permission example in `docs/piggybank-api.md`).
fn doc_blocks(lang: &str) -> Vec<String> {
    let docs: String = doc_pages().into_iter().map(|(_, text)| text).collect();
    let fence = format!("```{lang}");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in docs.lines() {
        match &mut current {
            None if line.trim_start() == fence => current = Some(String::new()),
            Some(block) if line.trim_start() == "```" => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn readme_manifests_and_toml_parse() {
    let yaml = doc_blocks("yaml");
    assert!(!yaml.is_empty(), "the docs show no manifest");
    for (i, block) in yaml.iter().enumerate() {
        let what = format!("docs yaml block {i}");
        let value: serde_yaml::Value =
            serde_yaml::from_str(block).unwrap_or_else(|e| panic!("{what}: {e}"));
        if value.get("apiVersion").is_some() {
            let manifest = validated(block, &what);
            check_piggybank_manifest(&manifest, &what);
        }
    }
    for (i, block) in doc_blocks("toml").iter().enumerate() {
        block
            .parse::<toml::Table>()
            .unwrap_or_else(|e| panic!("docs toml block {i}: {e}"));
    }
}

/// The example component, built by `make example` (part of `make test`).
#[test]
fn admin_component_is_a_component_importing_the_admin_interface() {
    let path = root().join(
        "examples/admin-component/target/wasm32-wasip2/release/piggybank_admin_component.wasm",
    );
    let wasm = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build it with `make example` (make test does)",
            path.display()
        )
    });
    assert!(wasmparser::Parser::is_component(&wasm), "not a component");
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(&wasm) {
        match payload.unwrap() {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentImportSection(section) if depth == 0 => {
                for import in section {
                    imports.push(import.unwrap().name.0.to_string());
                }
            }
            wasmparser::Payload::ComponentExportSection(section) if depth == 0 => {
                for export in section {
                    exports.push(export.unwrap().name.0.to_string());
                }
            }
            _ => {}
        }
    }
    assert!(
        imports.iter().any(|i| i == "piggybank:secrets/admin@0.2.0"),
        "imports: {imports:?}"
    );
    assert!(
        exports
            .iter()
            .any(|e| e.starts_with("wasi:http/incoming-handler@0.2")),
        "exports: {exports:?}"
    );
}

#[tokio::test]
async fn provider_archive_loads_with_its_claims_and_binary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("piggybank.par.gz");
    // Any bytes will do: packaging the real (debug, over 200 MB) binary takes a minute in a
    // debug build. `make par` packages the real release binary.
    let binary: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    let issuer = nkeys::KeyPair::new_account();
    let subject = nkeys::KeyPair::new_service();
    piggybank::provider::par::write(&binary, &issuer, &subject, &out)
        .await
        .unwrap();

    let par = provider_archive::ProviderArchive::try_load_file(&out)
        .await
        .unwrap();
    let claims = par.claims().expect("signed claims");
    assert_eq!(claims.issuer, issuer.public_key());
    assert_eq!(claims.subject, subject.public_key());
    let metadata = claims.metadata.expect("provider metadata");
    assert_eq!(metadata.name.as_deref(), Some("piggybank"));
    assert_eq!(metadata.vendor, "piggybank");
    assert_eq!(metadata.ver.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    let target = piggybank::provider::par::host_target();
    assert_eq!(par.targets(), std::slice::from_ref(&target));
    assert!(
        par.target_bytes(&target).unwrap() == binary,
        "binary differs"
    );
}

#[test]
fn readme_permission_example_is_the_tested_config() {
    let conf: String = read("examples/piggybank-api/nats-server.conf")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let blocks = doc_blocks("conf");
    assert!(!blocks.is_empty(), "the docs show no nats-server config");
    for block in blocks {
        let shown = block.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            conf.contains(&shown),
            "the docs' config is not in the tested file:\n{block}"
        );
    }
}

#[test]
fn trusted_issuers_in_the_manifests_are_real_account_keys() {
    let mut files = vec![("wadm.yaml".to_string(), read("wadm.yaml"))];
    files.extend(doc_pages());
    for (what, text) in files {
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with("trusted_issuers:"))
        {
            let keys = line.split(':').nth(1).unwrap_or_default();
            for key in keys.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                let account = nkeys::KeyPair::from_public_key(key)
                    .is_ok_and(|k| k.key_pair_type() == nkeys::KeyPairType::Account);
                assert!(account, "{what}: {key} is not an account public key (A...)");
            }
        }
    }
}
