//! How meshctl shows what it found: for people first (tables, ✔/✘, colour only on a
//! terminal), for scripts second (`-o json|yaml`: nothing but the data on stdout; progress
//! and messages go to stderr).

use std::io::{IsTerminal, Write};

use comfy_table::Table;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use serde::Serialize;

/// How results are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Tables and sentences, for people.
    #[default]
    Table,
    /// JSON, for scripts.
    Json,
    /// YAML, for scripts.
    Yaml,
}

/// Where meshctl runs: whether it may use colour and ask questions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terminal {
    /// Colour on stdout (a terminal, and `NO_COLOR` unset).
    pub colour: bool,
    /// stdin and stderr are a terminal: progress bars and questions are possible.
    pub interactive: bool,
}

impl Terminal {
    /// What this process is attached to.
    pub fn detect() -> Terminal {
        let no_colour = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Terminal {
            colour: std::io::stdout().is_terminal() && !no_colour,
            interactive: std::io::stdin().is_terminal() && std::io::stderr().is_terminal(),
        }
    }

    /// No terminal at all (tests, pipes, CI).
    pub fn none() -> Terminal {
        Terminal {
            colour: false,
            interactive: false,
        }
    }

    /// `✔` in green (or plain).
    pub fn ok(&self) -> String {
        self.paint(console::Style::new().green(), "✔")
    }

    /// `✘` in red (or plain).
    pub fn fail(&self) -> String {
        self.paint(console::Style::new().red(), "✘")
    }

    /// `‼` in yellow (or plain): a warning.
    pub fn warn(&self) -> String {
        self.paint(console::Style::new().yellow(), "‼")
    }

    /// `text` in bold (or plain).
    pub fn bold(&self, text: &str) -> String {
        self.paint(console::Style::new().bold(), text)
    }

    fn paint(&self, style: console::Style, text: &str) -> String {
        style.force_styling(self.colour).apply_to(text).to_string()
    }
}

/// A table in meshctl's style.
pub fn table<I, S>(header: I) -> Table
where
    I: IntoIterator<Item = S>,
    S: Into<comfy_table::Cell>,
{
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(header);
    t
}

/// Write `data` as JSON or YAML (`Format::Table` is the caller's own rendering).
pub fn write_data<T: Serialize + ?Sized>(out: &mut dyn Write, format: Format, data: &T) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, data)?;
            writeln!(out)?;
        }
        Format::Yaml => out.write_all(serde_yaml_ng::to_string(data)?.as_bytes())?,
        Format::Table => anyhow::bail!("internal: a table is rendered by its command"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_colour_without_a_terminal() {
        let t = Terminal::none();
        assert_eq!(t.ok(), "✔");
        assert_eq!(t.fail(), "✘");
        let c = Terminal {
            colour: true,
            interactive: false,
        };
        assert!(c.ok().contains("\u{1b}["), "{:?}", c.ok());
    }
}
