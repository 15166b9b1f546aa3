//! A real TLS scanner against a `tls` listener: Debian's `testssl.sh`
//! (`apt-get install testssl.sh`, the `testssl` command; it drives the
//! `openssl` command and its own sockets) scans loopline on 127.0.0.1 with
//! a certificate from a CA made at test time, which the scan is told to
//! trust (`--add-ca`), and an OCSP response for it (`--tls-ocsp`). From the
//! scan's JSON findings the tests check:
//!
//! - the protocols: TLS 1.2 and 1.3 only (SSLv2, SSLv3, TLS 1.0 and 1.1 not
//!   offered), and TLS 1.3 only with `--tls-min-version 1.3`;
//! - resumption: session tickets (a lifetime hint, which testssl reads
//!   over TLS 1.2 when a TLS 1.3 session gave it none) and session IDs;
//! - OCSP stapling: offered with `--tls-ocsp`, not without;
//! - every finding worse than OK or INFO (LOW < MEDIUM < HIGH < CRITICAL,
//!   or a check the scan could not do) against the committed baseline,
//!   `tests/testssl-baseline.txt`: one worse than its line there, or not
//!   there at all, fails the test.
//!
//! testssl's own resumption check is not reliable on loopback: its
//! `openssl s_client ... </dev/null` may close before a TLS 1.3
//! NewSessionTicket arrives (the same happens with `openssl s_server`), so
//! it reports "connect problem" (tickets) or "not supported" (IDs) now and
//! then (over TLS 1.3 only, it may even miss the ticket's lifetime hint).
//! Its verdicts are only printed, and taken as a failure only when they
//! cannot come from that race; resumption itself is checked with
//! `openssl s_client -sess_out`/`-sess_in` as testssl does it, but with a
//! session that lasts until the server's `BYE`, so that every ticket has
//! arrived: by ticket (TLS 1.3 and 1.2) and by session ID (TLS 1.2). The
//! stapled response is read there too (`-status`): the CA's, saying good,
//! and after SIGHUP the file's new one (a bad one keeps the old).
//!
//! Everything stays on loopback: the scan gets the address (`--ip`), does
//! no DNS lookup (`--nodns none`) and fetches no CRL or OCSP answer (no
//! `--phone-out`). Each run is bounded: testssl runs in a process group of
//! its own, killed as a whole when it overruns (and on drop).
#![cfg(feature = "tls")]

mod util;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

use std::thread;
use std::time::{Duration, Instant};

use util::tls::{self as tls, Pki};
use util::{Server, TempDir, PATIENCE};

/// The accepted findings, next to this file.
const BASELINE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/testssl-baseline.txt");

/// Set to `write`, the full scan writes its findings as the new baseline.
const REGENERATE: &str = "LOOPLINE_TESTSSL_BASELINE";

/// What the baseline file starts with (written again when regenerated).
const BASELINE_HEADER: &str = "\
# The testssl.sh findings worse than OK or INFO that tests/testssl.rs
# accepts from its scans of a loopline TLS listener: `ID SEVERITY`, one a
# line, sorted. A finding worse than its line here, or one not here, fails
# the test (LOW < MEDIUM < HIGH < CRITICAL; WARN, a check testssl could not
# do, must match exactly). The resumption verdicts are left out: they vary
# from run to run (see the module doc of tests/testssl.rs).
#
# The lines below come from the throwaway test PKI (util::tls::Pki), not
# from loopline: its server certificate is valid for two days and names no
# CRL or OCSP URI.
#
# Regenerate it, after checking that the scan's findings are acceptable:
#   LOOPLINE_TESTSSL_BASELINE=write cargo test --test testssl
";

/// Findings whose verdict varies from run to run, left out of the
/// baseline: testssl's resumption checks (see the module doc).
const VARYING: &[&str] = &["sessionresumption_ticket", "sessionresumption_ID"];

/// The longest a full scan (`-p -S -s -U`) may take: about 30 s on an idle
/// 2-core machine, so this only catches a hang.
const FULL_SCAN_LIMIT: Duration = Duration::from_secs(240);

/// The longest a scan of protocols and server defaults (`-p -S`) may take:
/// about 20 s on an idle 2-core machine.
const SHORT_SCAN_LIMIT: Duration = Duration::from_secs(150);

/// A child in a process group of its own (testssl starts many openssl
/// processes), the whole group killed on drop.
struct Group(Child);

impl Group {
    /// Starts `command` as the leader of a new process group, its stdout
    /// and stderr both into `output`.
    fn spawn(command: &mut Command, output: &Path, stdin: Stdio) -> std::io::Result<Group> {
        let file = File::create(output).expect("output file");
        let child = command
            .process_group(0)
            .stdin(stdin)
            .stdout(file.try_clone().expect("output file"))
            .stderr(file)
            .spawn()?;
        Ok(Group(child))
    }

    /// Its exit status, or None if it is still running after `limit`.
    fn wait_at_most(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill only sends a signal, to the group this child
            // leads (its id is the group's), which this test made.
            unsafe { libc::kill(-(self.0.id() as libc::pid_t), libc::SIGKILL) };
        }
        let _ = self.0.wait();
    }
}

/// One finding of a scan, from its JSON output.
#[derive(Debug, Clone)]
struct Finding {
    id: String,
    severity: String,
    finding: String,
}

/// A finished scan: its findings, and its text output for failures.
struct Scan {
    findings: Vec<Finding>,
    text: String,
}

impl Scan {
    /// Fails the test with `message` and the whole text output.
    fn fail(&self, message: &str) -> ! {
        panic!("{message}\n--- testssl's output ---\n{}", self.text)
    }

    /// The finding `id`; fails if the scan has none, or more than one.
    fn get(&self, id: &str) -> &Finding {
        let mut found = self.findings.iter().filter(|f| f.id == id);
        match (found.next(), found.next()) {
            (Some(finding), None) => finding,
            (None, _) => self.fail(&format!("no finding {id}")),
            (Some(_), Some(_)) => self.fail(&format!("more than one finding {id}")),
        }
    }

    /// Asserts the finding `id` says `want` (or, with `prefix`, begins
    /// with it).
    fn expect(&self, id: &str, want: &str, prefix: bool) {
        let finding = self.get(id);
        let matches = if prefix {
            finding.finding.starts_with(want)
        } else {
            finding.finding == want
        };
        if !matches {
            self.fail(&format!(
                "{id}: expected {}{want:?}, got {finding:?}",
                if prefix {
                    "a finding beginning with "
                } else {
                    ""
                }
            ));
        }
    }

    /// The findings worse than OK and INFO (the varying ones left out),
    /// as `ID SEVERITY` lines, sorted: what the baseline holds.
    fn baseline_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .findings
            .iter()
            .filter(|f| rank(&f.severity) != Some(0) && !VARYING.contains(&f.id.as_str()))
            .map(|f| format!("{} {}", f.id, f.severity))
            .collect();
        lines.sort();
        lines.dedup();
        lines
    }

    /// Fails listing every finding worse than the baseline allows.
    fn expect_within_baseline(&self) {
        let baseline = read_baseline();
        let mut worse = Vec::new();
        for f in &self.findings {
            if rank(&f.severity) == Some(0) || VARYING.contains(&f.id.as_str()) {
                continue;
            }
            let allowed = baseline.get(&f.id);
            let ok = match (
                rank(&f.severity),
                allowed.map(String::as_str).and_then(rank),
            ) {
                // LOW and worse: no worse than the baseline's line.
                (Some(found), Some(limit)) => found <= limit,
                // A scan problem (WARN, FATAL) or an unknown severity:
                // only where the baseline names exactly that.
                _ => allowed == Some(&f.severity),
            };
            if !ok {
                worse.push(format!(
                    "{} {} (baseline: {}): {}",
                    f.id,
                    f.severity,
                    allowed.map_or("none", String::as_str),
                    f.finding
                ));
            }
        }
        if !worse.is_empty() {
            self.fail(&format!(
                "findings worse than {BASELINE} allows:\n  {}\n\
                 (this scan's findings as baseline lines: {:#?})",
                worse.join("\n  "),
                self.baseline_lines()
            ));
        }
        let stale: Vec<&String> = baseline
            .keys()
            .filter(|id| !self.findings.iter().any(|f| &f.id == *id))
            .collect();
        if !stale.is_empty() {
            println!("baseline lines this scan did not find (stale?): {stale:?}");
        }
    }
}

/// How bad a severity is: 0 for what is fine (OK, INFO, DEBUG), then LOW
/// 1 to CRITICAL 4; None for scan problems (WARN, FATAL) and the unknown.
fn rank(severity: &str) -> Option<u8> {
    match severity {
        "OK" | "INFO" | "DEBUG" => Some(0),
        "LOW" => Some(1),
        "MEDIUM" => Some(2),
        "HIGH" => Some(3),
        "CRITICAL" => Some(4),
        _ => None,
    }
}

/// The baseline: the severity each id may have at worst.
fn read_baseline() -> BTreeMap<String, String> {
    let text =
        std::fs::read_to_string(BASELINE).unwrap_or_else(|e| panic!("cannot read {BASELINE}: {e}"));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (id, severity) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("{BASELINE}: not `ID SEVERITY`: {l:?}"));
            (id.to_string(), severity.trim().to_string())
        })
        .collect()
}

/// The testssl command: Debian's `testssl`, or `testssl.sh` as upstream
/// names it.
fn testssl_program() -> &'static str {
    for program in ["testssl", "testssl.sh"] {
        if Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
        {
            return program;
        }
    }
    panic!("testssl not found: apt-get install testssl.sh");
}

/// Scans `target` with testssl's `checks` (`-p`, `-S`, ...), trusting
/// `pki`'s CA, within `limit`; returns the findings and the text output.
fn scan(pki: &Pki, target: SocketAddr, checks: &[&str], limit: Duration) -> Scan {
    let dir = TempDir::new("testssl");
    let json = dir.0.join("findings.json");
    let output = dir.0.join("output.txt");
    let mut command = Command::new(testssl_program());
    command
        .args(["--warnings", "off", "--color", "0", "--quiet"])
        .args(["--ip", "127.0.0.1", "--nodns", "none"])
        .args(["--connect-timeout", "10", "--openssl-timeout", "10"])
        .args(["--add-ca", &tls::path(&pki.ca_pem)])
        .args(["--jsonfile", &tls::path(&json)])
        .args(checks)
        .arg(target.to_string())
        .current_dir(&dir.0)
        // Its temporary files, in a directory removed even if it is killed.
        .env("TMPDIR", &dir.0);
    let started = Instant::now();
    let mut testssl = Group::spawn(&mut command, &output, Stdio::null())
        .unwrap_or_else(|e| panic!("cannot start testssl ({e}): apt-get install testssl.sh"));
    let status = testssl.wait_at_most(limit);
    let text = std::fs::read_to_string(&output).unwrap_or_default();
    let Some(status) = status else {
        drop(testssl);
        panic!("testssl {checks:?} ran for more than {limit:?}; its output:\n{text}");
    };
    println!(
        "testssl {checks:?} took {:.1} s, {status}",
        started.elapsed().as_secs_f64()
    );
    // testssl's exit status counts problems; its own failures (a bad
    // command line, no openssl, no connection) are 242 and above.
    if status.code().is_none_or(|code| code >= 240) {
        panic!("testssl {checks:?} failed: {status}; its output:\n{text}");
    }
    let findings = std::fs::read_to_string(&json)
        .ok()
        .and_then(|json| parse_findings(&json))
        .unwrap_or_else(|| panic!("no JSON findings from testssl; its output:\n{text}"));
    if findings.is_empty() {
        panic!("testssl found nothing; its output:\n{text}");
    }
    Scan { findings, text }
}

/// The findings of testssl's flat JSON (`--jsonfile`): an array of objects
/// whose values are all strings (`"id"`, `"severity"`, `"finding"`, ...).
/// None if it is not that.
fn parse_findings(json: &str) -> Option<Vec<Finding>> {
    let mut objects: Vec<BTreeMap<String, String>> = Vec::new();
    let mut object: Option<BTreeMap<String, String>> = None;
    let mut key: Option<String> = None;
    let mut chars = json.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' => object = Some(BTreeMap::new()),
            '}' => objects.push(object.take()?),
            '"' => {
                let string = json_string(&mut chars)?;
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                if chars.peek() == Some(&':') {
                    key = Some(string);
                } else {
                    object.as_mut()?.insert(key.take()?, string);
                }
            }
            _ => {}
        }
    }
    objects
        .into_iter()
        .map(|mut o| {
            Some(Finding {
                id: o.remove("id")?,
                severity: o.remove("severity")?,
                finding: o.remove("finding").unwrap_or_default(),
            })
        })
        .collect()
}

/// The rest of a JSON string whose opening quote was just read, unescaped.
fn json_string(chars: &mut impl Iterator<Item = char>) -> Option<String> {
    let mut string = String::new();
    loop {
        match chars.next()? {
            '"' => return Some(string),
            '\\' => string.push(match chars.next()? {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                'b' => '\u{8}',
                'f' => '\u{c}',
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    char::from_u32(u32::from_str_radix(&hex, 16).ok()?).unwrap_or('\u{fffd}')
                }
                other => other,
            }),
            c => string.push(c),
        }
    }
}

/// A loopline with one TLS listener on 127.0.0.1 with `pki`'s certificate,
/// and `extra` options. Logs at info: a scan makes thousands of handshakes.
fn tls_server(pki: &Pki, extra: &[&str]) -> Server {
    let mut args = pki.server_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_raw(&args, "info")
}

#[test]
fn a_full_scan_finds_tls_1_2_and_1_3_resumption_a_stapled_response_and_nothing_new() {
    let pki = Pki::new();
    let ocsp = tls::path(&pki.ocsp_response());
    let server = tls_server(&pki, &["--tls-ocsp", &ocsp]);
    let scan = scan(
        &pki,
        server.addr,
        &["-p", "-S", "-s", "-U"],
        FULL_SCAN_LIMIT,
    );

    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        scan.expect(old, "not offered", false);
    }
    scan.expect("TLS1_2", "offered", false);
    scan.expect("TLS1_3", "offered", true);
    // Only ciphers with authenticated encryption.
    scan.expect("cipherlist_STRONG", "offered", false);
    for weak in ["NULL", "aNULL", "EXPORT", "LOW", "3DES_IDEA", "AVERAGE"] {
        scan.expect(&format!("cipherlist_{weak}"), "not offered", false);
    }
    // Session tickets (with a lifetime hint) and session IDs.
    scan.expect("TLS_session_ticket", "valid for ", true);
    scan.expect("SSL_sessionID_support", "yes", false);
    // testssl's resumption verdicts vary on loopback (see the module doc),
    // but "not supported" for tickets can only mean a resumption refused.
    let tickets = scan.get("sessionresumption_ticket");
    let ids = scan.get("sessionresumption_ID");
    println!("testssl's resumption verdicts: {tickets:?}, {ids:?}");
    if tickets.finding == "not supported" {
        scan.fail(&format!("testssl saw a ticket not resumed: {tickets:?}"));
    }
    scan.expect("OCSP_stapling", "offered", false);
    // The certificate is checked against the CA it was made with.
    scan.expect("cert_chain_of_trust", "passed.", false);

    if std::env::var(REGENERATE).as_deref() == Ok("write") {
        let lines = scan.baseline_lines().join("\n");
        std::fs::write(BASELINE, format!("{BASELINE_HEADER}{lines}\n")).unwrap();
        println!("wrote {BASELINE}");
    }
    scan.expect_within_baseline();
    server.assert_no_panic();
}

#[test]
fn with_tls_min_version_1_3_only_tls_1_3_is_offered_and_nothing_is_stapled() {
    let pki = Pki::new();
    let server = tls_server(&pki, &["--tls-min-version", "1.3"]);
    let scan = scan(&pki, server.addr, &["-p", "-S"], SHORT_SCAN_LIMIT);
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2"] {
        scan.expect(old, "not offered", false);
    }
    scan.expect("TLS1_3", "offered", true);
    // (Not its ticket hint: over TLS 1.3 testssl looks for it the racy way
    // the module doc tells, and here it has no TLS 1.2 to fall back on.)
    // No `--tls-ocsp`: nothing to staple.
    scan.expect("OCSP_stapling", "not offered", false);
    scan.expect_within_baseline();
    server.assert_no_panic();
}

/// One `openssl s_client` session to `server` trusting `pki`'s CA, with
/// `args`, that sends `QUIT` and lasts until the server's close (so every
/// ticket the server sends after the handshake has arrived); returns what
/// s_client printed (stdout and stderr).
fn s_client(pki: &Pki, server: &Server, args: &[&str]) -> String {
    let dir = TempDir::new("s-client");
    let output = dir.0.join("output.txt");
    let mut command = Command::new("openssl");
    command
        .args(["s_client", "-connect", &server.addr.to_string()])
        .args(["-servername", "localhost", "-verify_return_error"])
        .args(["-CAfile", &tls::path(&pki.ca_pem)])
        // Its stdin's end does not end the session: the server's does.
        .arg("-ign_eof")
        .args(args);
    let mut client = Group::spawn(&mut command, &output, Stdio::piped())
        .unwrap_or_else(|e| panic!("openssl not found ({e}): apt-get install openssl"));
    let mut stdin = client.0.stdin.take().expect("stdin is piped");
    stdin.write_all(b"QUIT\n").expect("write to s_client");
    drop(stdin);
    let status = client.wait_at_most(PATIENCE);
    let printed = std::fs::read_to_string(&output).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "openssl s_client {args:?}: {status:?}\n{printed}"
    );
    assert!(
        printed.contains("\nREADY\n") && printed.contains("\nBYE\n"),
        "openssl s_client {args:?}: no READY ... BYE:\n{printed}"
    );
    printed
}

#[test]
fn openssl_s_client_resumes_by_ticket_and_by_session_id_and_gets_the_staple() {
    let pki = Pki::new();
    let ocsp = tls::path(&pki.ocsp_response());
    let server = tls_server(&pki, &["--tls-ocsp", &ocsp]);
    let dir = TempDir::new("s-client-sessions");

    // The stapled response: the one the CA made, saying `good`.
    let printed = s_client(&pki, &server, &["-status"]);
    assert!(
        printed.contains("OCSP Response Status: successful")
            && printed.contains("Cert Status: good"),
        "no good OCSP response stapled:\n{printed}"
    );

    for (case, options) in [
        ("TLS 1.3, ticket", ["-tls1_3"].as_slice()),
        ("TLS 1.2, ticket", &["-tls1_2"]),
        // No ticket extension: only the session ID can resume it.
        ("TLS 1.2, session ID", &["-tls1_2", "-no_ticket"]),
    ] {
        let session = tls::path(&dir.0.join(format!("session {case}.pem")));
        let name = if options[0] == "-tls1_3" {
            "TLSv1.3"
        } else {
            "TLSv1.2"
        };
        let first = s_client(&pki, &server, &[options, &["-sess_out", &session]].concat());
        assert!(
            first.contains(&format!("\nNew, {name}, ")),
            "{case}: the first session is not a new {name} one:\n{first}"
        );
        let second = s_client(&pki, &server, &[options, &["-sess_in", &session]].concat());
        assert!(
            second.contains(&format!("\nReused, {name}, ")),
            "{case}: the session was not resumed:\n{second}"
        );
    }
    server.assert_no_panic();
}

/// What the server staples, as `openssl s_client -status` reads it.
fn stapled_status(pki: &Pki, server: &Server) -> &'static str {
    let printed = s_client(pki, server, &["-status"]);
    assert!(
        printed.contains("OCSP Response Status: successful"),
        "no OCSP response stapled:\n{printed}"
    );
    ["good", "revoked"]
        .into_iter()
        .find(|word| printed.contains(&format!("Cert Status: {word}")))
        .unwrap_or_else(|| panic!("no certificate status in:\n{printed}"))
}

/// `--tls-ocsp` is read again on SIGHUP, as the certificate is: a response
/// that cannot be used keeps the old one and names the option and the
/// file; a new one is stapled on the next handshakes.
#[test]
fn sighup_reads_the_ocsp_response_again_and_a_bad_one_keeps_the_old() {
    let pki = Pki::new();
    let dir = TempDir::new("ocsp-reload");
    let staple = dir.0.join("staple.der");
    std::fs::copy(pki.ocsp_response(), &staple).unwrap();
    let revoked = pki.ocsp_response_revoked();
    let mut server = tls_server(&pki, &["--tls-ocsp", &tls::path(&staple)]);
    assert_eq!(stapled_status(&pki, &server), "good");

    // PEM text where DER belongs: the reload is refused, the old staple kept.
    std::fs::write(&staple, b"-----BEGIN OCSP RESPONSE-----\n").unwrap();
    server.signal("HUP");
    let refused = server.wait_for_log("reload: keeping the old TLS configuration");
    assert!(
        refused.contains("--tls-ocsp") && refused.contains(&tls::path(&staple)),
        "{refused}"
    );
    assert_eq!(stapled_status(&pki, &server), "good");

    // A new response, and the next handshake staples it.
    std::fs::copy(&revoked, &staple).unwrap();
    server.signal("HUP");
    let reloaded = server.wait_for_log("reload: TLS certificate");
    assert!(reloaded.contains("OCSP response"), "{reloaded}");
    assert_eq!(stapled_status(&pki, &server), "revoked");
    server.assert_no_panic();
}
