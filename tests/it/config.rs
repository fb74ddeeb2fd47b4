//! The real binary's config handling: a bad file is named with its field and a non-zero
//! exit, before any port is bound.

use std::process::Command;

fn check(toml: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("sb-cfg-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(crate::switchboard_bin())
        .args(["check", "--config", path.to_str().unwrap()])
        .env_remove("SWITCHBOARD_REQUIRE_ALL")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `switchboard check --config deploy/gateway.toml` with `env` (and no other
/// `SWITCHBOARD_*` variable) and `flags`.
fn check_example(env: &[(&str, &str)], flags: &[&str]) -> (bool, String) {
    check_deploy_file("deploy/gateway.toml", env, flags)
}

/// `switchboard check --config <file>` (relative to the repository root) with `env` (and
/// no other `SWITCHBOARD_*` variable) and `flags`.
fn check_deploy_file(file: &str, env: &[(&str, &str)], flags: &[&str]) -> (bool, String) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut command = Command::new(crate::switchboard_bin());
    command
        .args(["check", "--config", file])
        .args(flags)
        .current_dir(root);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SWITCHBOARD_")) {
        command.env_remove(key);
    }
    let out = command.envs(env.iter().copied()).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn environment_values_take_their_field_type() {
    // A token of digits is a string, as the field is.
    let (ok, out) = check_example(&[("SWITCHBOARD_SENDBACK__TOKEN", "1234567890123456")], &[]);
    assert!(ok, "{out}");
    let (ok, out) = check_example(
        &[
            ("SWITCHBOARD_NODE_ID", "123"),
            ("SWITCHBOARD_SENDBACK__INSECURE_NO_AUTH", "false"),
            ("SWITCHBOARD_LIMITS__MAX_CONNECTIONS", "500"),
        ],
        &[],
    );
    assert!(ok, "{out}");
    // Flags are typed the same way.
    let (ok, out) = check_example(
        &[],
        &[
            "--listen",
            "127.0.0.1:8081",
            "--store",
            "redis://127.0.0.1:6379/2",
        ],
    );
    assert!(ok, "{out}");
}

#[test]
fn bad_environment_values_name_the_variable() {
    for (var, value, needle) in [
        (
            "SWITCHBOARD_LIMITS__MAX_CONNECTIONS",
            "lots",
            "expects an integer, got \"lots\"",
        ),
        ("SWITCHBOARD_NOPE__X", "1", "unknown field `nope`"),
        ("SWITCHBOARD_LIMITS__IDLE_TIMEOUT", "soon", "idle_timeout"),
        (
            "SWITCHBOARD_SENDBACK__TOKEN",
            "short-s3cr3t",
            "sendback.token",
        ),
    ] {
        let (ok, out) = check_example(&[(var, value)], &[]);
        assert!(!ok, "accepted {var}={value}");
        assert!(
            out.contains(&format!("environment variable {var}"))
                && out.contains(needle)
                && !out.contains("gateway.toml"),
            "{var}={value}: {out}"
        );
    }
    let (_, out) = check_example(&[("SWITCHBOARD_SENDBACK__TOKEN", "short-s3cr3t")], &[]);
    assert!(!out.contains("s3cr3t"), "the token is shown: {out}");
}

#[test]
fn valid_config_passes() {
    let (ok, out) = check("[sendback]\ntoken = \"0123456789abcdef\"\n");
    assert!(ok, "{out}");
    assert!(out.contains("config ok"));
}

#[test]
fn bad_configs_name_the_field_and_fail() {
    for (toml, needle) in [
        ("[sendback]\ntoken = \"short\"\n", "sendback.token"),
        (
            "[sendback]\ntoken = \"                \"\n",
            "sendback.token",
        ),
        (
            "[sendback]\ntoken = \"ab   cd   ef   gh   ij\"\n",
            "sendback.token",
        ),
        (
            "[sendback]\ntoken = \"0123456789abcdef\"\n[limits]\nidle_timeout = \"forever\"\n",
            "idle_timeout",
        ),
        (
            "[sendback]\ntoken = \"0123456789abcdef\"\n[limits]\nmax_conections = 1\n",
            "max_conections",
        ),
        (
            "[sendback]\ntoken = \"0123456789abcdef\"\n[functions]\ntransport = \"nope\"\n",
            "functions.transport",
        ),
        ("[[[", "invalid config"),
    ] {
        let (ok, out) = check(toml);
        assert!(!ok, "accepted: {toml}");
        assert!(
            out.contains(needle),
            "message for {toml:?} lacks {needle:?}: {out}"
        );
    }
}

#[test]
fn token_prints_a_fresh_secret_that_check_accepts() {
    let token = |_| {
        let out = Command::new(crate::switchboard_bin())
            .arg("token")
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (a, b) = (token(1), token(2));
    assert_ne!(a, b, "a fresh one each time");
    assert!(
        a.len() >= 32 && a.bytes().all(|c| c.is_ascii_hexdigit()),
        "{a}"
    );
    let (ok, out) = check(&format!("[sendback]\ntoken = \"{a}\"\n"));
    assert!(ok, "{out}");
}

#[test]
fn busy_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = Command::new(crate::switchboard_bin())
        .args([
            "--listen",
            &addr.to_string(),
            "--sendback-listen",
            "127.0.0.1:0",
        ])
        .env("SWITCHBOARD_SENDBACK__TOKEN", "0123456789abcdef")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&addr.to_string()) && err.contains("public"),
        "{err}"
    );
}

#[test]
fn example_configs_in_deploy_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("deploy")).unwrap() {
        let path = entry.unwrap().path();
        // tls.toml names certificate files that exist only on a real host: checked with
        // certificates made for it by `the_tls_example_checks_with_real_certificates`.
        if path.file_name().is_some_and(|n| n == "tls.toml") {
            continue;
        }
        if path.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(crate::switchboard_bin())
                .args(["check", "--config", path.to_str().unwrap()])
                .current_dir(&root)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "checked {checked} configs");
}

/// deploy/tls.toml is a working config once its certificate files exist: here made by a
/// test CA, their paths given as the environment variables a deployment would use.
#[test]
fn the_tls_example_checks_with_real_certificates() {
    let dir = tests::process::TempDir::new();
    let ca = crate::tls::Ca::new("example internal CA");
    let (cert, key) = ca.leaf("gw-1").write(dir.path(), "public");
    let (sendback_cert, sendback_key) = ca.leaf("gw-1 send-back").write(dir.path(), "sendback");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let files = [
        ("SWITCHBOARD_PUBLIC__TLS__CERT_FILE", path(&cert)),
        ("SWITCHBOARD_PUBLIC__TLS__KEY_FILE", path(&key)),
        ("SWITCHBOARD_SENDBACK__TLS__CERT_FILE", path(&sendback_cert)),
        ("SWITCHBOARD_SENDBACK__TLS__KEY_FILE", path(&sendback_key)),
        ("SWITCHBOARD_FUNCTIONS__CA_FILE", path(&ca_file)),
    ];
    let env: Vec<(&str, &str)> = files.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (ok, out) = check_deploy_file("deploy/tls.toml", &env, &[]);
    assert!(ok, "{out}");
    // As written (no such files here), the check names the first file it could not load.
    let (ok, out) = check_deploy_file("deploy/tls.toml", &[], &[]);
    assert!(!ok && out.contains("public.tls.cert_file"), "{out}");
    // A key that is not the certificate's is refused, naming it.
    let mut swapped = env.clone();
    swapped[1].1 = env[3].1;
    let (ok, out) = check_deploy_file("deploy/tls.toml", &swapped, &[]);
    assert!(!ok && out.contains("public.tls"), "{out}");
}
