//! The terraform files in `deploy/terraform/`: terraform and its providers
//! cannot be fetched in the project's environment, so these tests parse every
//! `.tf` file with `hcl-rs` and check the structural facts that matter:
//! variables declared and used, resource types, the S3 lifecycle rules that
//! must never touch `control/` (kopeio/etcd-manager#299), least-privilege
//! IAM, the security-group ports, and the templates rendered by
//! `templatefile` (every variable they use is passed, every one passed is
//! used, and the bare-metal example renders a static seed list).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use hcl::eval::{Context, Evaluate};
use hcl::expr::{Expression, ObjectKey, Operation, TemplateExpr, TraversalOperator};
use hcl::{Block, BlockLabel, Body};

fn terraform_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join("terraform")
}

/// One terraform module: its folder and its parsed `.tf` files.
struct Module {
    dir: PathBuf,
    files: Vec<(PathBuf, String, Body)>,
}

impl Module {
    fn load(name: &str) -> Module {
        let dir = terraform_dir().join(name);
        let mut files = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "tf"))
            .collect();
        entries.sort();
        for path in entries {
            let text = std::fs::read_to_string(&path).unwrap();
            let body = hcl::parse(&text)
                .unwrap_or_else(|e| panic!("{} does not parse as HCL: {e}", path.display()));
            files.push((path, text, body));
        }
        assert!(!files.is_empty(), "no .tf files in {}", dir.display());
        Module { dir, files }
    }

    fn blocks(&self, kind: &str) -> Vec<&Block> {
        self.files
            .iter()
            .flat_map(|(_, _, body)| body.blocks())
            .filter(|b| b.identifier() == kind)
            .collect()
    }

    /// `resource "type" "name"` (or data) blocks as (type, block).
    fn typed(&self, kind: &str) -> Vec<(String, &Block)> {
        self.blocks(kind)
            .into_iter()
            .map(|b| (label(b, 0), b))
            .collect()
    }

    fn resource(&self, ty: &str) -> Vec<&Block> {
        self.typed("resource")
            .into_iter()
            .filter(|(t, _)| t == ty)
            .map(|(_, b)| b)
            .collect()
    }

    fn declared_variables(&self) -> BTreeSet<String> {
        self.blocks("variable")
            .into_iter()
            .map(|b| label(b, 0))
            .collect()
    }

    /// Every `var.NAME` in the module's code (comments left out).
    fn used_variables(&self) -> BTreeSet<String> {
        let mut used = BTreeSet::new();
        for (_, text, _) in &self.files {
            for line in text.lines() {
                let code = line.split('#').next().unwrap_or("");
                let bytes = code.as_bytes();
                for (i, _) in code.match_indices("var.") {
                    if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') {
                        continue;
                    }
                    let name: String = code[i + 4..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    used.insert(name);
                }
            }
        }
        used
    }

    /// Every expression of the module, depth first.
    fn expressions(&self) -> Vec<&Expression> {
        let mut out = Vec::new();
        for (_, _, body) in &self.files {
            body_expressions(body, &mut out);
        }
        out
    }
}

fn label(b: &Block, i: usize) -> String {
    match b.labels().get(i) {
        Some(BlockLabel::String(s)) => s.clone(),
        Some(BlockLabel::Identifier(id)) => id.to_string(),
        None => String::new(),
    }
}

fn body_expressions<'a>(body: &'a Body, out: &mut Vec<&'a Expression>) {
    for a in body.attributes() {
        walk(&a.expr, out);
    }
    for b in body.blocks() {
        body_expressions(b.body(), out);
    }
}

fn walk<'a>(e: &'a Expression, out: &mut Vec<&'a Expression>) {
    out.push(e);
    match e {
        Expression::Array(items) => items.iter().for_each(|i| walk(i, out)),
        Expression::Object(obj) => {
            for (k, v) in obj {
                if let ObjectKey::Expression(k) = k {
                    walk(k, out);
                }
                walk(v, out);
            }
        }
        Expression::FuncCall(f) => f.args.iter().for_each(|a| walk(a, out)),
        Expression::Parenthesis(inner) => walk(inner, out),
        Expression::Conditional(c) => {
            walk(&c.cond_expr, out);
            walk(&c.true_expr, out);
            walk(&c.false_expr, out);
        }
        Expression::Operation(op) => match op.as_ref() {
            Operation::Unary(u) => walk(&u.expr, out),
            Operation::Binary(b) => {
                walk(&b.lhs_expr, out);
                walk(&b.rhs_expr, out);
            }
        },
        Expression::ForExpr(f) => {
            walk(&f.collection_expr, out);
            if let Some(k) = &f.key_expr {
                walk(k, out);
            }
            walk(&f.value_expr, out);
            if let Some(c) = &f.cond_expr {
                walk(c, out);
            }
        }
        Expression::Traversal(t) => {
            walk(&t.expr, out);
            for op in &t.operators {
                if let TraversalOperator::Index(i) = op {
                    walk(i, out);
                }
            }
        }
        _ => {}
    }
}

fn template_text(e: &Expression) -> Option<&str> {
    match e {
        Expression::String(s) => Some(s),
        Expression::TemplateExpr(t) => match t.as_ref() {
            TemplateExpr::QuotedString(s) => Some(s),
            TemplateExpr::Heredoc(h) => Some(&h.template),
        },
        _ => None,
    }
}

/// The literal string of an attribute (`name = "value"`), if it is one.
fn attr_str<'a>(body: &'a Body, key: &str) -> Option<&'a str> {
    body.attributes()
        .find(|a| a.key.as_str() == key)
        .and_then(|a| template_text(&a.expr))
}

fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes()
        .find(|a| a.key.as_str() == key)
        .map(|a| &a.expr)
}

/// Every `templatefile(path, {vars})` call: the template file (resolved from
/// `${path.module}/...`) and the names of the variables passed.
fn templatefile_calls(m: &Module) -> Vec<(PathBuf, BTreeSet<String>)> {
    let mut out = Vec::new();
    for e in m.expressions() {
        let Expression::FuncCall(f) = e else { continue };
        if f.name.name.as_str() != "templatefile" {
            continue;
        }
        let path = template_text(&f.args[0]).expect("templatefile's path is a string");
        let rel = path
            .strip_prefix("${path.module}/")
            .unwrap_or_else(|| panic!("templatefile path {path} is not under ${{path.module}}"));
        let Some(Expression::Object(obj)) = f.args.get(1) else {
            panic!("templatefile({path}) is not given an object of variables");
        };
        let names = obj
            .keys()
            .map(|k| match k {
                ObjectKey::Identifier(id) => id.to_string(),
                ObjectKey::Expression(e) => template_text(e).unwrap_or_default().to_string(),
                other => panic!("unexpected object key {other:?}"),
            })
            .collect();
        out.push((m.dir.join(rel), names));
    }
    out
}

/// The variables a template interpolates (`${name`, not the escaped `$${`),
/// including names used in `%{ if name ... }` directives.
fn template_variables(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for marker in ["${", "%{"] {
        for (i, _) in text.match_indices(marker) {
            if i > 0 && text.as_bytes()[i - 1] == b'$' {
                continue;
            }
            let rest = text[i + 2..].trim_start_matches(['~', ' ']);
            let rest = rest
                .strip_prefix("if ")
                .or_else(|| rest.strip_prefix("for "))
                .unwrap_or(rest)
                .trim_start();
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && !["else", "endif", "endfor"].contains(&name.as_str()) {
                names.insert(name);
            }
        }
    }
    names
}

#[test]
fn every_tf_file_parses_and_declares_exactly_the_variables_it_uses() {
    for name in ["aws", "bare-metal"] {
        let m = Module::load(name);
        let declared = m.declared_variables();
        let used = m.used_variables();
        let undeclared: Vec<_> = used.difference(&declared).collect();
        assert!(
            undeclared.is_empty(),
            "{name}: variables used but not declared: {undeclared:?}"
        );
        let unused: Vec<_> = declared.difference(&used).collect();
        assert!(
            unused.is_empty(),
            "{name}: variables declared but never used: {unused:?}"
        );
        for v in m.blocks("variable") {
            assert!(
                attr_str(v.body(), "description").is_some_and(|d| !d.is_empty()),
                "{name}: variable {} has no description",
                label(v, 0)
            );
        }
    }
}

#[test]
fn resources_are_aws_or_local_files_only() {
    let aws = Module::load("aws");
    for (ty, b) in aws.typed("resource").into_iter().chain(aws.typed("data")) {
        assert!(
            ty.starts_with("aws_"),
            "aws: {ty}.{} is not an aws_ type",
            label(b, 1)
        );
    }
    let bare = Module::load("bare-metal");
    assert!(bare.typed("data").is_empty());
    for (ty, b) in bare.typed("resource") {
        assert!(
            ty == "local_file" || ty == "local_sensitive_file",
            "bare-metal: {ty}.{} writes more than files",
            label(b, 1)
        );
    }
    // The shared CA module only makes keys and self-signed CA certificates.
    let pki = Module::load("modules/pki");
    let types: BTreeSet<String> = pki.typed("resource").into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        types,
        BTreeSet::from([
            "tls_private_key".to_string(),
            "tls_self_signed_cert".to_string()
        ])
    );
    for (ty, b) in pki.typed("resource") {
        if ty == "tls_self_signed_cert" {
            assert_eq!(
                attr(b.body(), "is_ca_certificate")
                    .map(ToString::to_string)
                    .as_deref(),
                Some("true")
            );
        }
    }
}

#[test]
fn both_modules_install_the_same_three_cas_and_turn_tls_on() {
    let pki = std::fs::read_to_string(terraform_dir().join("modules/pki/main.tf")).unwrap();
    for ca in ["etcd-manager-ca", "etcd-peers-ca", "etcd-clients-ca"] {
        assert!(pki.contains(ca), "modules/pki does not make {ca}");
    }
    for name in ["aws", "bare-metal"] {
        let m = Module::load(name);
        let modules = m.blocks("module");
        assert!(
            modules.iter().any(|b| attr(b.body(), "source")
                .is_some_and(|s| s.to_string().contains("../modules/pki"))),
            "{name} does not use modules/pki"
        );
        let env = std::fs::read_to_string(m.dir.join("templates/etcd-manager.env.tftpl")).unwrap();
        assert!(
            env.contains("ETCD_MANAGER_PKI_DIR=${pki_dir}"),
            "{name}: no pki dir"
        );
        assert!(!env.contains("INSECURE"), "{name}: TLS turned off");
        assert!(
            !env.contains("=http://"),
            "{name}: plain http URLs with TLS on"
        );
    }
}

#[test]
fn zones_must_be_three_or_five_with_one_instance_and_volume_each() {
    let m = Module::load("aws");
    let zones = m
        .blocks("variable")
        .into_iter()
        .find(|b| label(b, 0) == "zones")
        .expect("variable zones");
    let validation = zones
        .body()
        .blocks()
        .find(|b| b.identifier() == "validation");
    let cond = validation
        .map(|v| attr(v.body(), "condition").expect("condition").to_string())
        .expect("zones has a validation");
    assert!(cond.contains("[3, 5]"), "zones validation: {cond}");
    for ty in ["aws_instance", "aws_ebs_volume", "aws_volume_attachment"] {
        let blocks = m.resource(ty);
        assert_eq!(blocks.len(), 1, "{ty}");
        let for_each = attr(blocks[0].body(), "for_each")
            .map(ToString::to_string)
            .unwrap_or_default();
        assert_eq!(for_each, "local.masters", "{ty} is not one per zone");
    }
    let volume = m.resource("aws_ebs_volume")[0].body();
    assert_eq!(
        attr(volume, "encrypted")
            .map(ToString::to_string)
            .as_deref(),
        Some("true")
    );
    let lifecycle = volume
        .blocks()
        .find(|b| b.identifier() == "lifecycle")
        .expect("data volumes have a lifecycle block");
    assert_eq!(
        attr(lifecycle.body(), "prevent_destroy")
            .map(ToString::to_string)
            .as_deref(),
        Some("true"),
        "data volumes must be protected from terraform destroy"
    );
}

#[test]
fn the_bucket_is_versioned_and_no_lifecycle_rule_can_delete_a_current_object() {
    let m = Module::load("aws");
    let versioning = m.resource("aws_s3_bucket_versioning");
    assert_eq!(versioning.len(), 1);
    let conf = versioning[0]
        .body()
        .blocks()
        .find(|b| b.identifier() == "versioning_configuration")
        .expect("versioning_configuration");
    assert_eq!(attr_str(conf.body(), "status"), Some("Enabled"));

    let lifecycle = m.resource("aws_s3_bucket_lifecycle_configuration");
    assert_eq!(lifecycle.len(), 1);
    let rules: Vec<&Block> = lifecycle[0]
        .body()
        .blocks()
        .filter(|b| b.identifier() == "rule")
        .collect();
    assert!(!rules.is_empty());
    for rule in rules {
        let id = attr_str(rule.body(), "id").unwrap_or("?");
        for block in rule.body().blocks() {
            match block.identifier() {
                // Old versions and abandoned uploads only: never the
                // current version of an object such as control/etcd-cluster-created.
                "filter"
                | "noncurrent_version_expiration"
                | "abort_incomplete_multipart_upload" => {}
                // Allowed only to drop delete markers that hide nothing.
                "expiration" => {
                    let keys: Vec<&str> =
                        block.body().attributes().map(|a| a.key.as_str()).collect();
                    assert_eq!(
                        keys,
                        ["expired_object_delete_marker"],
                        "rule {id}: an expiration of current objects would delete control/ too"
                    );
                }
                other => panic!("rule {id}: '{other}' may touch current objects (control/)"),
            }
        }
        if let Some(filter) = rule.body().blocks().find(|b| b.identifier() == "filter") {
            let prefix = attr(filter.body(), "prefix")
                .map(ToString::to_string)
                .unwrap_or_default();
            assert!(!prefix.contains("control"), "rule {id} filters on {prefix}");
        }
    }
}

#[test]
fn iam_grants_object_access_under_the_backup_prefix_only() {
    let m = Module::load("aws");
    let doc = m
        .typed("data")
        .into_iter()
        .find(|(t, b)| t == "aws_iam_policy_document" && label(b, 1) == "backups")
        .map(|(_, b)| b)
        .expect("data aws_iam_policy_document backups");
    let allowed: BTreeSet<&str> = [
        "s3:ListBucket",
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
    ]
    .into();
    for st in doc
        .body()
        .blocks()
        .filter(|b| b.identifier() == "statement")
    {
        let Some(Expression::Array(actions)) = attr(st.body(), "actions") else {
            panic!("statement without an actions list");
        };
        for a in actions {
            let a = template_text(a).expect("action is a string");
            assert!(
                allowed.contains(a),
                "action {a} is more than the managers need"
            );
        }
        let resources = attr(st.body(), "resources").expect("resources").to_string();
        assert!(
            !resources.contains('*') || resources.contains("local.backup_prefix}/*"),
            "{resources}"
        );
        assert!(
            resources.contains("aws_s3_bucket.backups.arn"),
            "{resources}"
        );
        let lists = actions
            .iter()
            .any(|a| template_text(a) == Some("s3:ListBucket"));
        if lists {
            let cond = st
                .body()
                .blocks()
                .find(|b| b.identifier() == "condition")
                .expect("ListBucket is limited by an s3:prefix condition");
            assert_eq!(attr_str(cond.body(), "variable"), Some("s3:prefix"));
        }
    }
    // The role has this one inline policy and no managed policy.
    assert!(m.resource("aws_iam_role_policy_attachment").is_empty());
    assert_eq!(m.resource("aws_iam_role_policy").len(), 1);
}

#[test]
fn security_group_opens_gossip_peer_api_and_etcd_between_masters_and_metrics_to_monitoring() {
    let m = Module::load("aws");
    let Some(Expression::Object(ports)) = m
        .blocks("locals")
        .into_iter()
        .find_map(|b| attr(b.body(), "master_ports"))
    else {
        panic!("locals.master_ports is not an object");
    };
    let mut opened = BTreeSet::new();
    for (key, rule) in ports {
        let Expression::Object(rule) = rule else {
            panic!("master_ports.{key:?} is not an object");
        };
        let field = |name: &str| {
            rule.iter()
                .find(|(k, _)| matches!(k, ObjectKey::Identifier(id) if id.as_str() == name))
                .map(|(_, v)| template_text(v).map_or_else(|| v.to_string(), str::to_string))
                .unwrap_or_else(|| panic!("master_ports.{key:?} has no {name}"))
        };
        opened.insert((field("protocol"), field("port")));
    }
    for (protocol, port) in [
        ("udp", "var.gossip_port"),
        ("tcp", "var.gossip_port"),
        ("tcp", "var.etcd_peer_port"),
        ("tcp", "var.etcd_client_port"),
        ("tcp", "var.etcd_quarantine_port"),
    ] {
        assert!(
            opened.contains(&(protocol.to_string(), port.to_string())),
            "master_ports does not open {protocol} {port}: {opened:?}"
        );
    }
    let ingress = m.resource("aws_vpc_security_group_ingress_rule");
    let by_name: BTreeMap<String, &Block> = ingress.iter().map(|b| (label(b, 1), *b)).collect();
    let between = by_name["between_masters"].body();
    assert_eq!(
        attr(between, "referenced_security_group_id")
            .map(ToString::to_string)
            .as_deref(),
        Some("aws_security_group.master.id"),
        "master ports must be open to the masters only"
    );
    let metrics = by_name["metrics"].body();
    assert_eq!(
        attr(metrics, "from_port")
            .map(ToString::to_string)
            .as_deref(),
        Some("var.metrics_port")
    );
    assert_eq!(
        attr(metrics, "cidr_ipv4")
            .map(ToString::to_string)
            .as_deref(),
        Some("each.value"),
        "metrics are open to var.monitoring_cidrs only"
    );
}

#[test]
fn templates_get_exactly_the_variables_they_use() {
    for name in ["aws", "bare-metal"] {
        let m = Module::load(name);
        let calls = templatefile_calls(&m);
        assert!(!calls.is_empty(), "{name}: no templatefile call");
        for (path, passed) in calls {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{name}: template {}: {e}", path.display()));
            let used = template_variables(&text);
            assert_eq!(
                used,
                passed,
                "{name}: {} uses {used:?} but is given {passed:?}",
                path.display()
            );
            // The template parses, and renders with those variables.
            let tpl: hcl::Template = text
                .parse()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let mut ctx = Context::new();
            for v in &passed {
                ctx.declare_var(v.as_str(), "x");
            }
            tpl.evaluate(&ctx)
                .unwrap_or_else(|e| panic!("{} does not render: {e}", path.display()));
        }
    }
}

#[test]
fn bare_metal_example_renders_a_static_seed_list_for_every_master() {
    let dir = terraform_dir().join("bare-metal");
    let text = std::fs::read_to_string(dir.join("templates/etcd-manager.env.tftpl")).unwrap();
    let tpl: hcl::Template = text.parse().unwrap();
    let masters = ["10.0.1.10", "10.0.2.10", "10.0.3.10"];
    let seeds = masters.map(|a| format!("{a}:8000")).join(",");
    for (endpoint, address) in [("", masters[0]), ("http://minio.internal:9000", masters[1])] {
        let mut ctx = Context::new();
        for (k, v) in [
            ("cluster_name", "main"),
            ("backup_store", "s3://b/cluster/backups/etcd/main"),
            ("s3_region", "eu-west-1"),
            ("s3_endpoint", endpoint),
            ("address", address),
            ("pki_dir", "/etc/kubernetes/pki/etcd-manager-main"),
            ("seeds", seeds.as_str()),
            ("backup_interval", "15m"),
        ] {
            ctx.declare_var(k, v);
        }
        for (k, v) in [
            ("cluster_size", 3),
            ("gossip_port", 8000),
            ("client_port", 4001),
            ("peer_port", 2380),
            ("quarantine_port", 8001),
            ("metrics_port", 8081),
        ] {
            ctx.declare_var(k, v);
        }
        let out = tpl.evaluate(&ctx).unwrap();
        let vars: BTreeMap<&str, &str> = out
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                l.split_once('=')
                    .unwrap_or_else(|| panic!("not NAME=value: {l:?}"))
            })
            .collect();
        assert_eq!(vars["ETCD_MANAGER_SEEDS"], seeds);
        assert_eq!(vars["ETCD_MANAGER_ADDRESS"], address);
        assert_eq!(
            vars["ETCD_MANAGER_PEER_URLS"],
            format!("https://{address}:2380")
        );
        assert_eq!(
            vars["ETCD_MANAGER_PKI_DIR"],
            "/etc/kubernetes/pki/etcd-manager-main"
        );
        assert!(
            !vars.contains_key("ETCD_MANAGER_INSECURE")
                && !vars.contains_key("ETCD_MANAGER_ETCD_INSECURE"),
            "the example must not turn TLS off"
        );
        assert_eq!(
            vars.get("ETCD_MANAGER_S3_ENDPOINT").copied().unwrap_or(""),
            endpoint
        );
        assert!(
            vars.keys().all(|k| k.starts_with("ETCD_MANAGER_")),
            "{vars:?}"
        );
    }
    // The example variables name three masters, as the validation demands.
    let tfvars = std::fs::read_to_string(dir.join("example.tfvars")).unwrap();
    let parsed = hcl::parse(&tfvars).expect("example.tfvars parses");
    let Some(Expression::Array(list)) = attr(&parsed, "masters") else {
        panic!("example.tfvars has no masters list");
    };
    assert_eq!(list.len(), 3);
}
