//! The docs are tested: every relative link and `#anchor` in the README and `docs/` resolves,
//! every command block is run by a named test or marked illustrative, the README stays a
//! front page, no prose line runs on, and `docs/cli.md` holds the CLI's current `--help`
//! (regenerate it with `UPDATE_DOCS=1 cargo test --test docs`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The README and every page of `docs/`, as (path from the root, text).
fn pages() -> Vec<(String, String)> {
    let mut paths = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| format!("docs/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|p| p.ends_with(".md"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(root().join(&p)).unwrap_or_else(|e| panic!("{p}: {e}"));
            (p, text)
        })
        .collect()
}

/// A fenced block: its info string (`sh illustrative`), its body, where it opens, and the
/// heading it sits under.
struct Block {
    info: String,
    body: String,
    line: usize,
    heading: String,
}

/// One line of a page, and whether it is inside a fenced block (fence lines count as inside).
fn lines_in_fences(text: &str) -> Vec<(&str, bool)> {
    let mut inside = false;
    text.lines()
        .map(|line| {
            if line.trim_start().starts_with("```") {
                inside = !inside;
                (line, true)
            } else {
                (line, inside)
            }
        })
        .collect()
}

fn blocks(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut heading = String::new();
    let mut open: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(info)) => {
                open = Some(Block {
                    info: info.trim().to_string(),
                    body: String::new(),
                    line: i + 1,
                    heading: heading.clone(),
                })
            }
            (Some(_), Some(_)) => blocks.push(open.take().unwrap()),
            (Some(block), None) => {
                block.body.push_str(line);
                block.body.push('\n');
            }
            (None, None) => {
                if let Some(title) = line.strip_prefix('#') {
                    heading = title.trim_start_matches('#').trim().to_string();
                }
            }
        }
    }
    blocks
}

/// GitHub's anchor for a heading: lower case; letters, digits, `-` and `_` kept, spaces
/// become `-`, everything else is dropped.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor a page's headings make (a repeated heading gets `-1`, `-2`, ...).
fn anchors(text: &str) -> HashSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = HashSet::new();
    for (line, fenced) in lines_in_fences(text) {
        if fenced || !line.starts_with('#') {
            continue;
        }
        let base = slug(line.trim_start_matches('#').trim());
        let n = seen.entry(base.clone()).or_insert(0);
        anchors.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    anchors
}

/// The targets of a line's inline links, `[text](target)`, outside inline code.
fn link_targets(line: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut in_code = false;
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'`' => in_code = !in_code,
            b']' if !in_code && bytes.get(i + 1) == Some(&b'(') => {
                if let Some(len) = line[i + 2..].find(')') {
                    targets.push(line[i + 2..i + 2 + len].to_string());
                    i += 2 + len;
                }
            }
            _ => {}
        }
        i += 1;
    }
    targets
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let pages = pages();
    let mut checked = 0;
    let mut broken = Vec::new();
    for (page, text) in &pages {
        let dir = Path::new(page).parent().unwrap_or(Path::new(""));
        for (n, (line, fenced)) in lines_in_fences(text).into_iter().enumerate() {
            if fenced {
                continue;
            }
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path, anchor) = match target.split_once('#') {
                    Some((path, anchor)) => (path, Some(anchor)),
                    None => (target.as_str(), None),
                };
                let file = if path.is_empty() {
                    PathBuf::from(page)
                } else {
                    dir.join(path)
                };
                let Ok(file_text) = std::fs::read_to_string(root().join(&file)).or_else(|e| {
                    if root().join(&file).is_dir() {
                        Ok(String::new())
                    } else {
                        Err(e)
                    }
                }) else {
                    broken.push(format!("{page}:{}: {target}: no such file", n + 1));
                    continue;
                };
                if let Some(anchor) = anchor {
                    if !anchors(&file_text).contains(anchor) {
                        broken.push(format!("{page}:{}: {target}: no such heading", n + 1));
                    }
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: is the parser broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The command blocks a test runs exactly as written: (page, the heading the block sits
/// under, the block's text when the test does not read it from the page itself, the test
/// file, the test function). Every other ```sh, ```bash or ```console block must be marked
/// ```sh illustrative (see docs/README.md).
const RUN_BY_A_TEST: &[(&str, &str, Option<&str>, &str, &str)] = &[
    (
        "README.md",
        "Quickstart",
        None, // the test extracts both blocks from the README itself
        "quickstart.rs",
        "the_readme_quickstart_runs_as_written_and_ctrl_c_stops_everything",
    ),
    (
        "docs/deployment.md",
        "NATS contexts",
        Some(
            "piggybank run --context pb\n\
             NATS_CONTEXT=pb piggybank list\n\
             piggybank get db_password --context pb\n",
        ),
        "tls.rs",
        "a_nats_context_gives_commands_their_whole_connection",
    ),
];

/// Every `.rs` file under `tests/` (the test files may live in a subdirectory).
fn test_sources(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            test_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((path.clone(), std::fs::read_to_string(&path).unwrap()));
        }
    }
}

#[test]
fn every_command_block_is_run_by_a_test_or_marked_illustrative() {
    let mut sources = Vec::new();
    test_sources(&root().join("tests"), &mut sources);
    let mut used = vec![false; RUN_BY_A_TEST.len()];
    let mut unmarked = Vec::new();
    for (page, text) in pages() {
        for block in blocks(&text) {
            let mut words = block.info.split_whitespace();
            let lang = words.next().unwrap_or_default();
            if !["sh", "bash", "console"].contains(&lang) {
                continue;
            }
            if words.any(|w| w == "illustrative") {
                continue;
            }
            let known = RUN_BY_A_TEST.iter().position(|(p, heading, body, _, _)| {
                *p == page && *heading == block.heading && body.is_none_or(|b| b == block.body)
            });
            match known {
                Some(i) => used[i] = true,
                None => unmarked.push(format!(
                    "{page}:{} (under \"{}\"): run it in a test and list it in RUN_BY_A_TEST, \
                     or mark it ```{lang} illustrative\n{}",
                    block.line, block.heading, block.body
                )),
            }
        }
    }
    assert!(
        unmarked.is_empty(),
        "command blocks that no test runs:\n{}",
        unmarked.join("\n")
    );
    for (i, (page, heading, _, file, function)) in RUN_BY_A_TEST.iter().enumerate() {
        assert!(
            used[i],
            "RUN_BY_A_TEST lists a block in {page} under \"{heading}\" that is not there (or changed): \
             change {file} {function} to match, then this list"
        );
        let defined = sources.iter().any(|(path, source)| {
            path.file_name().is_some_and(|n| n == *file)
                && source.contains(&format!("fn {function}("))
        });
        assert!(defined, "no test fn {function} in a tests/**/{file}");
    }
}

#[test]
fn the_readme_is_a_front_page() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 300,
        "README.md has {lines} lines: move reference into docs/"
    );
}

#[test]
fn no_prose_line_is_over_200_characters() {
    let mut long = Vec::new();
    for (page, text) in pages() {
        for (n, (line, fenced)) in lines_in_fences(&text).into_iter().enumerate() {
            if !fenced && line.chars().count() > 200 {
                long.push(format!(
                    "{page}:{}: {} characters",
                    n + 1,
                    line.chars().count()
                ));
            }
        }
    }
    assert!(
        long.is_empty(),
        "lines over 200 characters (use a list or a section):\n{}",
        long.join("\n")
    );
}

/// Every security guarantee names its proof by test function: each name in a "Proved by"
/// item of `docs/security.md` is a function in `tests/` or `src/`.
#[test]
fn every_test_security_md_names_exists() {
    let text = std::fs::read_to_string(root().join("docs/security.md")).unwrap();
    let mut sources = Vec::new();
    test_sources(&root().join("tests"), &mut sources);
    test_sources(&root().join("src"), &mut sources);
    let mut proofs = String::new();
    let mut in_proof = false;
    for line in text.lines() {
        if line.starts_with("- ") || line.trim().is_empty() {
            in_proof = line.starts_with("- Proved by:");
        }
        if in_proof {
            proofs.push_str(line);
            proofs.push('\n');
        }
    }
    let mut named = 0;
    let mut missing = Vec::new();
    for name in proofs.split('`').skip(1).step_by(2) {
        let name = name.rsplit("::").next().unwrap_or(name);
        let looks_like_a_test = name.matches('_').count() >= 3
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !looks_like_a_test {
            continue;
        }
        named += 1;
        if !sources
            .iter()
            .any(|(_, s)| s.contains(&format!("fn {name}(")))
        {
            missing.push(name.to_string());
        }
    }
    assert!(
        named >= 30,
        "only {named} test names in docs/security.md's proofs"
    );
    assert!(
        missing.is_empty(),
        "docs/security.md names tests that do not exist: {missing:?}"
    );
}

const HELP_BEGIN: &str = "<!-- BEGIN GENERATED: UPDATE_DOCS=1 cargo test --test docs -->";
const HELP_END: &str = "<!-- END GENERATED -->";

/// `piggybank ARGS --help`, run with a cleared environment, so no env var's value shows.
fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_piggybank"))
        .args(args)
        .arg("--help")
        .env_clear()
        .output()
        .expect("run piggybank");
    assert!(out.status.success(), "piggybank {args:?} --help failed");
    let text = String::from_utf8(out.stdout).expect("UTF-8 help");
    strip_env_values(&text)
}

/// `[env: NAME=value]` becomes `[env: NAME]`: what clap shows depends on the environment.
fn strip_env_values(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("[env: ") {
        let (before, after) = rest.split_at(start);
        out.push_str(before);
        let end = after.find(']').map_or(after.len(), |i| i + 1);
        let inner = &after["[env: ".len()..end.saturating_sub(1).max("[env: ".len())];
        let name = inner.split('=').next().unwrap_or(inner);
        out.push_str(&format!("[env: {name}]"));
        rest = &after[end..];
    }
    out.push_str(rest);
    out.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The subcommands `piggybank --help` lists, but `help`.
fn subcommands(top: &str) -> Vec<String> {
    top.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

fn generated_help() -> String {
    let top = help(&[]);
    let mut out = format!("{HELP_BEGIN}\n\n### `piggybank --help`\n\n```text\n{top}```\n");
    for sub in subcommands(&top) {
        let text = help(&[&sub]);
        out.push_str(&format!(
            "\n### `piggybank {sub} --help`\n\n```text\n{text}```\n"
        ));
    }
    out.push_str(&format!("\n{HELP_END}"));
    out
}

#[test]
fn the_cli_reference_holds_every_commands_help() {
    let path = root().join("docs/cli.md");
    let page = std::fs::read_to_string(&path).unwrap();
    let (before, rest) = page
        .split_once(HELP_BEGIN)
        .expect("docs/cli.md has the generated help section");
    let (_, after) = rest.split_once(HELP_END).expect("the section ends");
    let fresh = format!("{before}{}{after}", generated_help());
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    } else {
        assert!(
            fresh == page,
            "docs/cli.md's --help section is stale: run `UPDATE_DOCS=1 cargo test --test docs` and commit it"
        );
    }
}

#[test]
fn anchors_follow_github() {
    assert_eq!(
        slug("Service discovery and stats (`$SRV`)"),
        "service-discovery-and-stats-srv"
    );
    assert_eq!(
        slug("Changing the data key (keyed mode)"),
        "changing-the-data-key-keyed-mode"
    );
    assert_eq!(slug("Authorization is NATS's"), "authorization-is-natss");
    assert_eq!(
        strip_env_values("x [env: A_B=secret] y\n"),
        "x [env: A_B] y\n"
    );
}
