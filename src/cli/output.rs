//! The one output convention of every command that prints a result: `-o/--output text|json`
//! (as wash's), with `--json` kept as a hidden alias where it existed. In JSON mode a
//! command prints exactly one JSON document on stdout (`audit` prints one per record, a
//! stream it may follow); warnings and progress go to stderr in both modes.
//!
//! A command that writes a file names it with `--out FILE` (`backup`, `keygen`, `get`): `-o`
//! is always the format. Servers (`run`, `dev`) log instead, as `--log-format` says;
//! `completions` prints a script.

use clap::{Args, ValueEnum};
use serde::Serialize;

/// How a command prints its result.
#[derive(Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

#[derive(Args, Clone, Copy, Default)]
pub struct Output {
    /// Print the result as text, or as one JSON document (a file a command writes is
    /// --out FILE)
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    format: Format,
    /// The same as `-o json` (kept for scripts written before -o)
    #[arg(long, hide = true)]
    json: bool,
}

impl Output {
    /// Whether the result is printed as JSON.
    pub fn json(&self) -> bool {
        self.json || self.format == Format::Json
    }

    /// Print `value` as the command's one JSON document.
    pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Probe {
        #[command(flatten)]
        output: Output,
    }

    fn json(args: &[&str]) -> bool {
        let argv = std::iter::once("probe").chain(args.iter().copied());
        Probe::try_parse_from(argv).unwrap().output.json()
    }

    #[test]
    fn json_is_chosen_by_dash_o_by_output_or_by_the_old_flag() {
        assert!(!json(&[]));
        assert!(!json(&["-o", "text"]));
        assert!(json(&["-o", "json"]));
        assert!(json(&["--output", "json"]));
        assert!(json(&["--json"]));
        let err = Probe::try_parse_from(["probe", "-o", "backup.file"])
            .err()
            .expect("a file is not a format")
            .to_string();
        assert!(err.contains("json") && err.contains("text"), "{err}");
    }
}
