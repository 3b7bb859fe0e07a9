//! Writes every Trellis CRD to `<dir>/<plural>.<group>.yaml` (default dir: `crds/`).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for crd in trellis_api::crd::all() {
        let path = dir.join(trellis_api::crd::file_name(&crd));
        std::fs::write(&path, trellis_api::crd::render(&crd))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
