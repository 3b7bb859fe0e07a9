//! `meshctl validate`: validate configuration files offline with the same validator the
//! admission webhook uses.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Serialize;
use trellis_api::document::parse_documents;
use trellis_api::validation::{Finding, ObjectRef, Outcome, Severity, validate};

use crate::{EXIT_INVALID, EXIT_OK};

/// Arguments of `meshctl validate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A file, a directory (its *.yaml, *.yml and *.json files, recursively), or - for stdin.
    /// Repeat to validate several.
    #[arg(short = 'f', long = "filename", required = true, value_name = "FILE|DIR|-")]
    pub files: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per document and finding, then a summary.
    Text,
    /// A JSON report.
    Json,
}

/// What happened to one document.
#[derive(Debug, Serialize)]
pub struct DocumentReport {
    /// The file (`-` for stdin).
    pub file: String,
    /// 1-based line the document starts on.
    pub line: usize,
    /// The object, when the document could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectRef>,
    /// `valid`, `invalid`, `skipped` or `unparsable`.
    pub status: Status,
    /// Errors and warnings.
    pub findings: Vec<Finding>,
    /// Why it was skipped or could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The verdict on a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Validated without errors (warnings allowed).
    Valid,
    /// Validated with errors.
    Invalid,
    /// Not a Trellis kind.
    Skipped,
    /// Not valid YAML/JSON.
    Unparsable,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    documents: &'a [DocumentReport],
    summary: Summary,
}

#[derive(Debug, Default, Serialize)]
struct Summary {
    valid: usize,
    invalid: usize,
    skipped: usize,
    unparsable: usize,
    errors: usize,
    warnings: usize,
}

/// Run `meshctl validate`; returns the exit code (0 valid, 1 invalid). I/O problems are errors
/// (exit 2 from the caller).
pub fn run(args: &Args, stdin: &mut dyn Read, out: &mut dyn Write) -> anyhow::Result<u8> {
    let mut sources = Vec::new();
    let mut stdin_used = false;
    for f in &args.files {
        if f == "-" {
            if stdin_used {
                bail!("- (stdin) can be given only once");
            }
            stdin_used = true;
            let mut text = String::new();
            stdin.read_to_string(&mut text).context("reading stdin")?;
            sources.push(("-".to_string(), text));
        } else {
            for path in expand(Path::new(f))? {
                let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                sources.push((path.display().to_string(), text));
            }
        }
    }
    let reports: Vec<DocumentReport> = sources
        .iter()
        .flat_map(|(file, text)| validate_text(file, text))
        .collect();
    let summary = summarize(&reports);
    match args.output {
        Format::Json => {
            serde_json::to_writer_pretty(
                &mut *out,
                &Report {
                    documents: &reports,
                    summary: summarize(&reports),
                },
            )?;
            writeln!(out)?;
        }
        Format::Text => write_text(&reports, &summary, out)?,
    }
    Ok(if summary.invalid + summary.unparsable > 0 {
        EXIT_INVALID
    } else {
        EXIT_OK
    })
}

/// Validate every document of one file's text.
pub fn validate_text(file: &str, text: &str) -> Vec<DocumentReport> {
    parse_documents(text)
        .into_iter()
        .map(|doc| match doc.content {
            Err(e) => DocumentReport {
                file: file.to_string(),
                line: e.line,
                object: None,
                status: Status::Unparsable,
                findings: Vec::new(),
                note: Some(format!("not valid YAML or JSON: {}", e.message)),
            },
            Ok(value) => {
                let object = Some(ObjectRef::of(&value));
                match validate(&value) {
                    Outcome::Skipped(why) => DocumentReport {
                        file: file.to_string(),
                        line: doc.line,
                        object,
                        status: Status::Skipped,
                        findings: Vec::new(),
                        note: Some(why),
                    },
                    Outcome::Validated { findings, .. } => {
                        let invalid = findings.iter().any(|f| f.severity == Severity::Error);
                        DocumentReport {
                            file: file.to_string(),
                            line: doc.line,
                            object,
                            status: if invalid { Status::Invalid } else { Status::Valid },
                            findings,
                            note: None,
                        }
                    }
                }
            }
        })
        .collect()
}

/// The files a `-f` argument names: the file itself, or a directory's YAML/JSON files in
/// sorted order.
fn expand(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            {
                files.push(p);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("{} holds no .yaml, .yml or .json files", path.display());
    }
    Ok(files)
}

fn summarize(reports: &[DocumentReport]) -> Summary {
    let mut s = Summary::default();
    for r in reports {
        match r.status {
            Status::Valid => s.valid += 1,
            Status::Invalid => s.invalid += 1,
            Status::Skipped => s.skipped += 1,
            Status::Unparsable => s.unparsable += 1,
        }
        for f in &r.findings {
            match f.severity {
                Severity::Error => s.errors += 1,
                Severity::Warning => s.warnings += 1,
            }
        }
    }
    s
}

fn write_text(reports: &[DocumentReport], s: &Summary, out: &mut dyn Write) -> std::io::Result<()> {
    for r in reports {
        let at = format!("{}:{}", r.file, r.line);
        let obj = r.object.as_ref().map(ToString::to_string).unwrap_or_default();
        match r.status {
            Status::Valid if r.findings.is_empty() => writeln!(out, "{at}: {obj}: valid")?,
            Status::Valid | Status::Invalid => {
                for f in &r.findings {
                    writeln!(out, "{at}: {f}")?;
                }
            }
            Status::Skipped => writeln!(out, "{at}: {obj}: skipped: {}", r.note.as_deref().unwrap_or_default())?,
            Status::Unparsable => writeln!(out, "{at}: error: {}", r.note.as_deref().unwrap_or_default())?,
        }
    }
    let validated = s.valid + s.invalid;
    writeln!(
        out,
        "{validated} object(s) validated: {} valid, {} invalid ({} error(s), {} warning(s)); {} skipped; {} unparsable document(s)",
        s.valid, s.invalid, s.errors, s.warnings, s.skipped, s.unparsable
    )
}
