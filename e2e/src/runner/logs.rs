//! Container logs: every line a container writes to stdout or stderr is
//! stored as `<RFC 3339 time> <stream> <line>` (the CRI log format without
//! the partial flag) in `logs/<container>/<restart count>.log` under the
//! pod's state dir, so the previous instance stays readable (`--previous`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};

use crate::kubelet::LogOptions;

/// The log file of instance `n` of `container`.
pub fn path(pod_dir: &Path, container: &str, n: u32) -> PathBuf {
    pod_dir.join("logs").join(container).join(format!("{n}.log"))
}

/// Opens (creates) a log file for appending.
pub fn open(path: &Path) -> std::io::Result<Arc<Mutex<std::fs::File>>> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    Ok(Arc::new(Mutex::new(f)))
}

/// Copies `pipe` into `file`, one timestamped line at a time.
pub async fn copy<R: AsyncRead + Unpin>(pipe: R, stream: &'static str, file: Arc<Mutex<std::fs::File>>) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                let ts = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%fZ").to_string();
                let mut rec = Vec::with_capacity(line.len() + 48);
                rec.extend_from_slice(ts.as_bytes());
                rec.push(b' ');
                rec.extend_from_slice(stream.as_bytes());
                rec.push(b' ');
                rec.extend_from_slice(&line);
                rec.push(b'\n');
                let mut f = file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let _ = f.write_all(&rec);
            }
        }
    }
}

/// Renders stored records as `kubectl logs` shows them.
pub fn render(stored: &str, options: &LogOptions) -> String {
    let lines: Vec<&str> = stored.lines().collect();
    let start = options.tail_lines.map_or(0, |n| lines.len().saturating_sub(n));
    let mut out = String::new();
    for rec in &lines[start..] {
        let mut parts = rec.splitn(3, ' ');
        let (ts, _stream, text) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        if options.timestamps {
            out.push_str(ts);
            out.push(' ');
        }
        out.push_str(text);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_render_with_tail_and_timestamps() {
        let stored = "2026-01-01T00:00:00.1Z stdout a\n2026-01-01T00:00:01.1Z stderr b c\n";
        assert_eq!(render(stored, &LogOptions::default()), "a\nb c\n");
        let o = LogOptions {
            tail_lines: Some(1),
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(render(stored, &o), "2026-01-01T00:00:01.1Z b c\n");
    }
}
