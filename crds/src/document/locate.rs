//! The line of a field in a document's text, for findings that name `file:line`: a field path
//! (`spec.http[0].route[1].destination`) followed through block-style YAML by indentation.
//!
//! # Caveats
//! Flow style (`{...}`, `[...]`) and JSON are not followed into: the line of the enclosing
//! field that could be found is returned instead.

/// One meaningful line: its number in the file, indentation, and text after the indentation.
#[derive(Debug, Clone, Copy)]
struct Entry<'a> {
    line: usize,
    indent: usize,
    text: &'a str,
}

/// A step of a field path.
#[derive(Debug, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let Some(end) = inner.find(']') else { break };
            let token = &inner[..end];
            out.push(match token.parse() {
                Ok(i) => Step::Index(i),
                Err(_) => Step::Key(token),
            });
            rest = &inner[end + 1..];
        }
    }
    out
}

/// The 1-based file line of the field at `path` (as the validator writes paths:
/// `spec.http[0].match[1].headers[x-user]`) in a document whose text starts on file line
/// `start`; the closest enclosing field found when the path cannot be followed to the end,
/// `None` when not even its first step is found.
pub fn field_line(text: &str, start: usize, path: &str) -> Option<usize> {
    let entries: Vec<Entry<'_>> = text
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let trimmed = l.trim_start_matches(' ');
            (!trimmed.is_empty() && !trimmed.starts_with('#')).then(|| Entry {
                line: start + i,
                indent: l.len() - trimmed.len(),
                text: trimmed,
            })
        })
        .collect();
    let mut scope: Vec<Entry<'_>> = entries;
    let mut found = None;
    for step in steps(path) {
        let Some(first) = scope.first().copied() else { break };
        let base = first.indent;
        match step {
            Step::Key(key) => {
                let Some(i) = scope.iter().position(|e| e.indent == base && is_key(e.text, key)) else {
                    break;
                };
                found = Some(scope[i].line);
                let end = scope[i + 1..]
                    .iter()
                    .position(|e| e.indent < base || (e.indent == base && !e.text.starts_with("- ")))
                    .map_or(scope.len(), |p| i + 1 + p);
                scope = scope[i + 1..end].to_vec();
            }
            Step::Index(n) => {
                let items: Vec<usize> = scope
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.indent == base && (e.text.starts_with("- ") || e.text == "-"))
                    .map(|(i, _)| i)
                    .collect();
                let Some(&i) = items.get(n) else { break };
                found = Some(scope[i].line);
                let end = items.get(n + 1).copied().unwrap_or_else(|| {
                    scope[i + 1..]
                        .iter()
                        .position(|e| e.indent < base)
                        .map_or(scope.len(), |p| i + 1 + p)
                });
                let mut item = scope[i..end].to_vec();
                // `- key: value` starts the item's mapping two columns further in.
                let dash = item[0];
                let rest = dash.text[1..].trim_start_matches(' ');
                if rest.is_empty() {
                    item.remove(0);
                } else {
                    item[0] = Entry {
                        line: dash.line,
                        indent: dash.indent + (dash.text.len() - rest.len()),
                        text: rest,
                    };
                }
                scope = item;
            }
        }
    }
    found
}

/// The 1-based line (within `text`) of the second entry `key` of the mapping that starts at
/// `line`, `column` (where the YAML parser reports a repeated key).
pub(super) fn repeated_key(text: &str, line: usize, column: usize, key: String) -> Option<usize> {
    let indent = column.saturating_sub(1);
    let mut seen = 0;
    for (i, l) in text.lines().enumerate().skip(line.saturating_sub(1)) {
        let trimmed = l.trim_start_matches(' ');
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let at = l.len() - trimmed.len();
        // The mapping's first entry may follow a list dash: `- name: x`.
        let trimmed = if i + 1 == line && at < indent {
            l.get(indent..).unwrap_or("")
        } else {
            trimmed
        };
        let at = if i + 1 == line { indent } else { at };
        if at < indent {
            break;
        }
        if at == indent && is_key(trimmed, &key) {
            seen += 1;
            if seen == 2 {
                return Some(i + 1);
            }
        }
    }
    None
}

/// Whether a line's text starts the mapping entry `key` (plain, single- or double-quoted).
fn is_key(text: &str, key: &str) -> bool {
    let rest = if let Some(r) = text.strip_prefix(key) {
        r
    } else if let Some(r) = text.strip_prefix('"').and_then(|t| t.strip_prefix(key)) {
        match r.strip_prefix('"') {
            Some(r) => r,
            None => return false,
        }
    } else if let Some(r) = text.strip_prefix('\'').and_then(|t| t.strip_prefix(key)) {
        match r.strip_prefix('\'') {
            Some(r) => r,
            None => return false,
        }
    } else {
        return false;
    };
    rest == ":" || rest.starts_with(": ") || rest.starts_with(":\t")
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: &str = "\
apiVersion: networking.trellis.dev/v1alpha1
kind: VirtualService
metadata:
  name: payment
spec:
  hosts: [payment]
  http:
  - name: canary
    match:
    - headers:
        x-canary:
          exact: \"true\"
    route:
    - destination:
        host: payment
        subset: v2
  - route:
      - destination:
          host: payment
          subset: v1
        weight: 90
      - destination:
          host: payment
          subset: v3
        weight: 10
";

    #[test]
    fn paths_split_into_keys_and_indexes() {
        assert_eq!(
            steps("spec.http[0].match[1].headers[x-user]"),
            [
                Step::Key("spec"),
                Step::Key("http"),
                Step::Index(0),
                Step::Key("match"),
                Step::Index(1),
                Step::Key("headers"),
                Step::Key("x-user")
            ]
        );
    }

    #[test]
    fn fields_are_found_through_mappings_and_lists() {
        let at = |p: &str| field_line(VS, 10, p);
        assert_eq!(at("metadata.name"), Some(13));
        assert_eq!(at("spec.hosts"), Some(15));
        assert_eq!(at("spec.http[0]"), Some(17));
        assert_eq!(at("spec.http[0].match[0].headers[x-canary]"), Some(20));
        assert_eq!(at("spec.http[0].route[0].destination.subset"), Some(25));
        // The second rule's list is indented under its key.
        assert_eq!(at("spec.http[1].route[1].destination.subset"), Some(33));
        assert_eq!(at("spec.http[1].route[0].weight"), Some(30));
        // Not found to the end: the closest enclosing field.
        assert_eq!(at("spec.http[1].route[7].weight"), Some(26));
        assert_eq!(at("status"), None);
    }
}
