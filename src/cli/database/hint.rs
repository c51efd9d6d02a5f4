//! The commands the sealed-mode commands suggest (`status`: init, unlock; `init` and
//! `unlock`: the next unlock), spelled as they must be typed: the flags this command was
//! given on the command line (`-n`, `--piggybank-prefix`, the connection's), then the
//! transit key to pin. Flags that came from the environment are not repeated (the shell that
//! runs the hint has them too); `-t` is always written as the public key, never a seed.

use clap::parser::ValueSource;
use clap::CommandFactory as _;

use crate::cli::dev::shell_word;

/// Flags of this command that a hint never repeats: the pin (written by [`Pin`]), and the
/// command's own choices (output, shares).
const NOT_REPEATED: &[&str] = &[
    "transit_xkey",
    "unverified_instances",
    "json",
    "format",
    "shares",
    "threshold",
    "log_format",
];

/// How the suggested command pins the backend's transit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Pin {
    /// `-t X...`: the public key the instances proved they hold.
    Key(String),
    /// `--unverified-instances`: no instance can prove it (run without TRANSIT_XKEY_SEED).
    Unverified,
}

impl Pin {
    /// The pin `init` or `unlock` used: `Some(public key)` or none (`--unverified-instances`).
    pub(super) fn of(resolved: Option<&str>) -> Self {
        match resolved {
            Some(key) => Pin::Key(key.to_string()),
            None => Pin::Unverified,
        }
    }

    fn words(&self) -> Vec<String> {
        match self {
            Pin::Key(key) => vec!["-t".into(), shell_word(key)],
            Pin::Unverified => vec!["--unverified-instances".into()],
        }
    }
}

/// `piggybank <op>` with this invocation's command-line flags and `pin`.
pub(super) fn command(op: &str, pin: &Pin) -> String {
    let mut words = vec!["piggybank".to_string(), op.to_string()];
    words.extend(given_flags(std::env::args_os()));
    words.extend(pin.words());
    words.join(" ")
}

/// The flags of `argv`'s subcommand that were given on the command line, as words to type
/// again (short form when there is one), but those in [`NOT_REPEATED`].
fn given_flags(argv: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<String> {
    let cli = crate::cli::Cli::command();
    let Ok(matches) = cli.clone().try_get_matches_from(argv) else {
        return Vec::new();
    };
    let Some((name, mut sub)) = matches.subcommand() else {
        return Vec::new();
    };
    let Some(mut command) = cli.find_subcommand(name) else {
        return Vec::new();
    };
    // A grouped spelling (`operator unlock`): the flags are the innermost command's.
    while let Some((name, inner)) = sub.subcommand() {
        let Some(inner_command) = command.find_subcommand(name) else {
            return Vec::new();
        };
        (sub, command) = (inner, inner_command);
    }
    let mut words = Vec::new();
    // The global flags (the connection's) are the top command's; their values are in the
    // subcommand's matches too, wherever they were typed.
    let globals = cli.get_arguments().filter(|a| a.is_global_set());
    for arg in command.get_arguments().chain(globals) {
        let id = arg.get_id().as_str();
        if NOT_REPEATED.contains(&id) || sub.value_source(id) != Some(ValueSource::CommandLine) {
            continue;
        }
        let flag = match (arg.get_short(), arg.get_long()) {
            (Some(short), _) => format!("-{short}"),
            (None, Some(long)) => format!("--{long}"),
            (None, None) => continue,
        };
        if arg.get_action().takes_values() {
            for value in sub.get_raw(id).into_iter().flatten() {
                words.push(flag.clone());
                words.push(shell_word(&value.to_string_lossy()));
            }
        } else {
            words.push(flag);
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(argv: &[&str]) -> Vec<String> {
        given_flags(argv.iter().map(std::ffi::OsString::from))
    }

    #[test]
    fn hints_repeat_the_command_line_flags_but_not_the_pin_or_the_output() {
        assert_eq!(
            flags(&[
                "piggybank",
                "status",
                "-n",
                "sealed1",
                "--json",
                "--nats-address",
                "127.0.0.1:4333",
                "--piggybank-prefix",
                "pb x",
            ]),
            [
                "--piggybank-prefix",
                "'pb x'",
                "-n",
                "sealed1",
                "--nats-address",
                "127.0.0.1:4333"
            ]
        );
        let seed = crate::keys::generate_seed();
        let words = flags(&["piggybank", "unlock", "-t", seed.as_str(), "-n", "a"]);
        assert_eq!(words, ["-n", "a"], "the seed is never repeated");
        let grouped = flags(&["piggybank", "operator", "status", "-n", "b", "-o", "json"]);
        assert_eq!(
            grouped,
            ["-n", "b"],
            "a grouped spelling's flags, but the output's"
        );
        assert_eq!(
            Pin::Key("XPUB".into()).words(),
            ["-t", "XPUB"],
            "the pin is the public key"
        );
    }
}
