//! `trellis-manifests install` prints the install manifests; `trellis-manifests olm [DIR]`
//! writes the OLM bundle (default `olm/`); `trellis-manifests demo` prints the demo shop's
//! workloads (plain Deployments in a namespace labelled for injection), its routing and the
//! Mesh tracing change.

use std::io::Write;
use std::path::PathBuf;

use trellis_manifests::install::Options;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = Options::default();
    match args.first().map(String::as_str) {
        Some("install") => emit(&trellis_manifests::to_yaml(&trellis_manifests::install::objects(&opts))),
        Some("demo") => {
            let settings = trellis_manifests::sidecar::Settings::new(&opts);
            let mut objects = trellis_manifests::demo::objects(&settings);
            objects.push(trellis_manifests::demo::mesh_tracing());
            emit(&format!(
                "{}---\n{}",
                trellis_manifests::to_yaml(&objects),
                trellis_manifests::demo::ROUTING
            ))
        }
        Some("olm") => {
            let dir = args
                .get(1)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../olm"));
            for f in trellis_manifests::olm::bundle(&opts) {
                let path = dir.join(&f.path);
                let written = path
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| std::fs::write(&path, &f.content));
                if let Err(e) = written {
                    eprintln!("trellis-manifests: writing {}: {e}", path.display());
                    return std::process::ExitCode::from(1);
                }
                eprintln!("wrote {}", path.display());
            }
            std::process::ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: trellis-manifests install | demo | olm [DIR]");
            std::process::ExitCode::from(2)
        }
    }
}

/// Writes `text` to stdout. A reader that stopped early (`| head`) ends the program quietly
/// with a failure status, as other Unix tools do, instead of a panic from `print!`.
fn emit(text: &str) -> std::process::ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("trellis-manifests: writing to stdout: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
