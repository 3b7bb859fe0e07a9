//! The files a command reads (`-f FILE|DIR|-`, or positional paths): a directory's YAML and JSON
//! files, recursively, following symbolic links but never around a loop; each file's
//! documents streamed one at a time ([`trellis_api::document::Documents`]), so a file of any
//! size is read with the memory of its largest document.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use trellis_api::document::{Document, Documents};

/// One input: a file, or `-` for standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file.
    File(PathBuf),
    /// Standard input.
    Stdin,
}

impl Source {
    /// How findings name it: the path, or `-`.
    pub fn name(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Stdin => "-".to_string(),
        }
    }
}

/// The sources the arguments name, in order: `-` once at most, each file as given, each
/// directory's `*.yaml`, `*.yml` and `*.json` files in sorted order.
pub fn sources(args: &[String]) -> anyhow::Result<Vec<Source>> {
    let mut out = Vec::new();
    let mut stdin_used = false;
    for a in args {
        if a == "-" {
            if stdin_used {
                bail!("- (stdin) can be given only once");
            }
            stdin_used = true;
            out.push(Source::Stdin);
        } else {
            out.extend(expand(Path::new(a))?.into_iter().map(Source::File));
        }
    }
    Ok(out)
}

/// Read every document of every source, in order, calling `each(source name, document)`.
pub fn for_each_document(
    sources: &[Source],
    stdin: &mut dyn Read,
    mut each: impl FnMut(&str, Document),
) -> anyhow::Result<()> {
    for s in sources {
        let name = s.name();
        match s {
            Source::Stdin => read(BufReader::new(&mut *stdin), &name, &mut each)?,
            Source::File(p) => {
                let f = std::fs::File::open(p).with_context(|| format!("reading {name}"))?;
                read(BufReader::with_capacity(64 << 10, f), &name, &mut each)?;
            }
        }
    }
    Ok(())
}

fn read(reader: impl BufRead, name: &str, each: &mut impl FnMut(&str, Document)) -> anyhow::Result<()> {
    for doc in Documents::new(reader) {
        each(name, doc.with_context(|| format!("reading {name}"))?);
    }
    Ok(())
}

/// The files a path names: the file itself, or a directory's YAML/JSON files in sorted order.
/// Symbolic links are followed, except to a directory already being walked (a loop), which
/// is skipped.
fn expand(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    // Directories are known by device and inode, so a link back to one is seen as a loop.
    let mut seen: HashSet<(u64, u64)> = HashSet::from([(meta.dev(), meta.ino())]);
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let p = entry.with_context(|| format!("listing {}", dir.display()))?.path();
            // A dangling link is reported, not skipped: the user named it.
            let m = std::fs::metadata(&p).with_context(|| format!("cannot read {}", p.display()))?;
            if m.is_dir() {
                if seen.insert((m.dev(), m.ino())) {
                    stack.push(p);
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_loop_is_walked_once() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("a.yaml"), "apiVersion: v1\nkind: ConfigMap\n").unwrap();
        std::fs::write(dir.path().join("b.yml"), "apiVersion: v1\nkind: ConfigMap\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not config").unwrap();
        // sub/up -> .. and sub/self -> . : both lead back into the walk.
        std::os::unix::fs::symlink("..", sub.join("up")).unwrap();
        std::os::unix::fs::symlink(".", sub.join("self")).unwrap();
        let files = expand(dir.path()).unwrap();
        assert_eq!(files, [dir.path().join("b.yml"), sub.join("a.yaml")]);
    }

    #[test]
    fn a_linked_directory_outside_is_read() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("c.json"), "{}").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("linked")).unwrap();
        let files = expand(dir.path()).unwrap();
        assert_eq!(files, [dir.path().join("linked").join("c.json")]);
    }
}
