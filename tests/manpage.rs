//! The man page, docs/loopline.1, is generated from the same clap
//! definition as `--help`; this test fails when the committed page is not
//! what the code generates now. To regenerate it:
//!
//! ```text
//! LOOPLINE_UPDATE_MANPAGE=1 cargo test --test manpage
//! ```

use std::path::Path;

/// The man page the current code generates: the `loopline` program's
/// whole command line (its name and about, the engine's options).
fn generated_page() -> Vec<u8> {
    let mut page = Vec::new();
    let command = loopline::config::command::<loopline::protocol::LooplineCommand>();
    clap_mangen::Man::new(command)
        .render(&mut page)
        .expect("render the man page");
    page
}

#[test]
fn committed_man_page_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/loopline.1");
    let page = generated_page();
    if std::env::var_os("LOOPLINE_UPDATE_MANPAGE").is_some() {
        std::fs::write(&path, &page).expect("write docs/loopline.1");
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == page,
        "docs/loopline.1 is not the page the code generates now; \
         regenerate it with: LOOPLINE_UPDATE_MANPAGE=1 cargo test --test manpage"
    );
}

#[test]
fn man_page_tells_exit_status_and_signals() {
    let page = String::from_utf8(generated_page()).expect("utf-8 page");
    for needed in [
        "\\-\\-listen",
        "\\-\\-max\\-memory",
        "\\-\\-tcp\\-keepalive",
        "RUST_LOG",
        "Exit status",
        "SIGHUP",
    ] {
        assert!(page.contains(needed), "the man page lacks {needed}");
    }
}
