//! `meshctl validate`: validate configuration files offline with the same validator the
//! admission webhook uses.

use std::io::{Read, Write};

use anyhow::Context;
use serde::Serialize;
use trellis_api::document::{Document, parse_documents};
use trellis_api::validation::{Finding, ObjectRef, Outcome, Severity, Validator};

use crate::{EXIT_INVALID, EXIT_OK, inputs};

/// Arguments of `meshctl validate`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  meshctl validate -f examples/                       # every *.yaml, *.yml, *.json below it
  meshctl validate -f my-istio-config.yaml -o json    # Istio's YAML is validated as Trellis's
  kubectl get virtualservices -A -o yaml | meshctl validate -f -

Each finding names the file and line, the object (Kind namespace/name), the field path and
what is allowed; the same validator runs in the operator's admission webhook.

Exit status: 0 when everything is valid (warnings allowed), 1 when anything is invalid, 2 on
usage or I/O errors.")]
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

#[derive(Debug, Default, Clone, Copy, Serialize)]
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
///
/// Documents are read and validated one at a time, so a file of any size is validated with
/// the memory of its largest document; text output is written as each is validated.
pub fn run(args: &Args, stdin: &mut dyn Read, out: &mut dyn Write) -> anyhow::Result<u8> {
    let sources = inputs::sources(&args.files)?;
    let validator = Validator::new();
    let mut summary = Summary::default();
    let mut reports = Vec::new();
    let mut write_error = None;
    inputs::for_each_document(&sources, stdin, |file, doc| {
        let report = validate_document(&validator, file, doc);
        summary.add(&report);
        match args.output {
            Format::Json => reports.push(report),
            Format::Text => {
                if write_error.is_none()
                    && let Err(e) = write_report(&report, out)
                {
                    write_error = Some(e);
                }
            }
        }
    })?;
    if let Some(e) = write_error {
        return Err(e).context("writing the report");
    }
    match args.output {
        Format::Json => {
            serde_json::to_writer_pretty(
                &mut *out,
                &Report {
                    documents: &reports,
                    summary,
                },
            )?;
            writeln!(out)?;
        }
        Format::Text => write_summary(&summary, out)?,
    }
    Ok(if summary.invalid + summary.unparsable > 0 {
        EXIT_INVALID
    } else {
        EXIT_OK
    })
}

/// Validate every document of one file's text.
pub fn validate_text(file: &str, text: &str) -> Vec<DocumentReport> {
    let validator = Validator::new();
    parse_documents(text)
        .into_iter()
        .map(|doc| validate_document(&validator, file, doc))
        .collect()
}

/// Validate one document.
fn validate_document(validator: &Validator, file: &str, doc: Document) -> DocumentReport {
    match doc.content {
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
            match validator.validate(&value) {
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
    }
}

impl Summary {
    fn add(&mut self, r: &DocumentReport) {
        match r.status {
            Status::Valid => self.valid += 1,
            Status::Invalid => self.invalid += 1,
            Status::Skipped => self.skipped += 1,
            Status::Unparsable => self.unparsable += 1,
        }
        for f in &r.findings {
            match f.severity {
                Severity::Error => self.errors += 1,
                Severity::Warning => self.warnings += 1,
            }
        }
    }
}

fn write_report(r: &DocumentReport, out: &mut dyn Write) -> std::io::Result<()> {
    let at = format!("{}:{}", r.file, r.line);
    let obj = r.object.as_ref().map(ToString::to_string).unwrap_or_default();
    match r.status {
        Status::Valid if r.findings.is_empty() => writeln!(out, "{at}: {obj}: valid"),
        Status::Valid | Status::Invalid => {
            for f in &r.findings {
                writeln!(out, "{at}: {f}")?;
            }
            Ok(())
        }
        Status::Skipped => writeln!(out, "{at}: {obj}: skipped: {}", r.note.as_deref().unwrap_or_default()),
        Status::Unparsable => writeln!(out, "{at}: error: {}", r.note.as_deref().unwrap_or_default()),
    }
}

fn write_summary(s: &Summary, out: &mut dyn Write) -> std::io::Result<()> {
    let validated = s.valid + s.invalid;
    writeln!(
        out,
        "{validated} object(s) validated: {} valid, {} invalid ({} error(s), {} warning(s)); {} skipped; {} unparsable document(s)",
        s.valid, s.invalid, s.errors, s.warnings, s.skipped, s.unparsable
    )
}
