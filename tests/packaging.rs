//! What the Debian package ships, checked without building it: the systemd unit passes
//! `systemd-analyze verify` (with its binary pointed at the one just built), has the settings
//! the deployment relies on, and lets io_uring through its system-call filter; the package
//! metadata installs the unit, the binary and the config as a conffile, and its maintainer
//! scripts make the `ringlb` user. (tools/deb-check.sh installs the real package.)

use std::path::Path;
use std::process::Command;

const UNIT: &str = include_str!("../dist/systemd/ringlb.service");
const MANIFEST: &str = include_str!("../Cargo.toml");

/// `systemd-analyze verify` on `unit` (a copy in a temporary directory, running the binary just
/// built): whether it passed, and what it printed about the unit. `None` when systemd-analyze
/// is not installed.
fn verify(unit: &str) -> Option<(bool, String)> {
    if !Path::new("/usr/bin/systemd-analyze").exists() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ringlb.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/ringlb", env!("CARGO_BIN_EXE_ringlb")),
    )
    .unwrap();
    let out = Command::new("/usr/bin/systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Only what concerns this unit (not other units of the host).
    let about: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ringlb.service"))
        .collect();
    Some((out.status.success(), about.join("\n")))
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let Some((ok, complaints)) = verify(UNIT) else {
        eprintln!("SKIPPED: /usr/bin/systemd-analyze is not installed (apt-get install systemd)");
        return;
    };
    assert!(ok && complaints.is_empty(), "verify: {complaints}");
    // The check is real: an unknown key and a missing binary are both reported.
    let (_, complaints) = verify(&UNIT.replace("UMask=0077", "UMask=0077\nBogusKey=1")).unwrap();
    assert!(complaints.contains("BogusKey"), "{complaints}");
    let (ok, _) =
        verify(&UNIT.replace("ExecStart=/usr/bin/ringlb", "ExecStart=/nonexistent/ringlb"))
            .unwrap();
    assert!(!ok, "a missing ExecStart binary passed");
}

/// The value of `key` in the unit (the last one written, as systemd reads it).
fn setting<'u>(key: &str) -> Option<&'u str> {
    UNIT.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .next_back()
}

#[test]
fn the_unit_has_what_the_deployment_relies_on() {
    for (key, value) in [
        ("Type", "notify"),
        ("NotifyAccess", "all"),
        (
            "ExecStart",
            "/usr/bin/ringlb run --config /etc/ringlb/ringlb.toml",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("User", "ringlb"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("LimitNOFILE", "1048576"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        (
            "RestrictAddressFamilies",
            "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        ),
    ] {
        assert_eq!(setting(key), Some(value), "{key}");
    }
    assert!(setting("WatchdogSec").is_some());
    // Stop waits for the default 30 s drain.
    let stop: u64 = setting("TimeoutStopSec")
        .and_then(|v| v.strip_suffix('s'))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(stop > 30, "TimeoutStopSec={stop}s");
}

#[test]
fn io_uring_gets_through_the_system_call_filter() {
    let filters: Vec<&str> = UNIT
        .lines()
        .filter_map(|l| l.strip_prefix("SystemCallFilter="))
        .collect();
    assert!(!filters.is_empty());
    for f in &filters {
        assert!(!f.starts_with('~'), "a deny list: {f}");
    }
    let allowed: Vec<&str> = filters.iter().flat_map(|f| f.split_whitespace()).collect();
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(allowed.contains(&call), "{call} not allowed by {filters:?}");
    }
    // And the group the unit relies on for the rest holds them too, where systemd can say.
    if let Ok(out) = Command::new("/usr/bin/systemd-analyze")
        .args(["syscall-filter", "@system-service"])
        .output()
        && out.status.success()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("@aio") || text.contains("io_uring_setup"),
            "{text}"
        );
    }
}

#[test]
fn the_package_ships_the_binary_config_unit_and_user_scripts() {
    let meta = MANIFEST
        .split("[package.metadata.deb]")
        .nth(1)
        .expect("Cargo.toml has [package.metadata.deb]");
    for needle in [
        "\"target/release/ringlb\", \"usr/bin/\"",
        "\"config/ringlb.toml\", \"etc/ringlb/ringlb.toml\"",
        "conf-files = [\"/etc/ringlb/ringlb.toml\"]",
        "maintainer-scripts = \"dist/debian/\"",
        "unit-name = \"ringlb\"",
    ] {
        assert!(meta.contains(needle), "{needle} not in the deb metadata");
    }
    let postinst = std::fs::read_to_string("dist/debian/postinst").unwrap();
    assert!(
        postinst.contains("adduser --system --group --no-create-home"),
        "{postinst}"
    );
    // Idempotent: an upgrade (the user exists) does not fail.
    assert!(postinst.contains("getent passwd ringlb"), "{postinst}");
    // The service unit the package installs is this one.
    assert!(Path::new("dist/systemd/ringlb.service").exists());
}
