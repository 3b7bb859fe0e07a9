//! A line diff of two texts, as `diff -u` shows it: changed lines with `-` and `+`, and up to
//! [`CONTEXT`] unchanged lines around each change (` `), gaps marked `@@`.

/// Unchanged lines shown around a change.
pub const CONTEXT: usize = 3;

/// The longest text compared line by line; past this (after the common start and end are
/// set aside) the middle is shown as removed and added whole.
const MAX_LINES: usize = 4_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Same,
    Removed,
    Added,
}

/// The diff of `before` and `after` (empty when they are equal).
pub fn lines(before: &str, after: &str) -> Vec<String> {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (ma, mb) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let mut ops: Vec<(Op, &str)> = a[..prefix].iter().map(|l| (Op::Same, *l)).collect();
    ops.extend(middle(ma, mb));
    ops.extend(a[a.len() - suffix..].iter().map(|l| (Op::Same, *l)));
    render(&ops)
}

/// The edit script of two slices with no common first or last line: a longest common
/// subsequence by dynamic programming.
fn middle<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<(Op, &'a str)> {
    if a.len() > MAX_LINES || b.len() > MAX_LINES {
        return a
            .iter()
            .map(|l| (Op::Removed, *l))
            .chain(b.iter().map(|l| (Op::Added, *l)))
            .collect();
    }
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut ops) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((Op::Same, a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removals before additions, as `diff -u` shows a changed line.
            ops.push((Op::Removed, a[i]));
            i += 1;
        } else {
            ops.push((Op::Added, b[j]));
            j += 1;
        }
    }
    ops
}

fn render(ops: &[(Op, &str)]) -> Vec<String> {
    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, (op, _))| *op != Op::Same)
        .map(|(i, _)| i)
        .collect();
    let near = |i: usize| changed.iter().any(|c| c.abs_diff(i) <= CONTEXT);
    let mut out = Vec::new();
    let mut skipped = false;
    for (i, (op, line)) in ops.iter().enumerate() {
        match op {
            Op::Same if !near(i) => skipped = true,
            _ => {
                if skipped && !out.is_empty() {
                    out.push("@@".to_string());
                }
                skipped = false;
                let mark = match op {
                    Op::Same => ' ',
                    Op::Removed => '-',
                    Op::Added => '+',
                };
                out.push(format!("{mark}{line}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_line_with_its_context() {
        let before = "a\nb\nc\nd\ne\nf\ng\nh\nimage: op:0.0.9\ni\n";
        let after = "a\nb\nc\nd\ne\nf\ng\nh\nimage: op:0.1.0\ni\n";
        assert_eq!(
            lines(before, after),
            [" f", " g", " h", "-image: op:0.0.9", "+image: op:0.1.0", " i"]
        );
        assert!(lines(before, before).is_empty());
    }

    #[test]
    fn insertions_removals_and_gaps() {
        let before = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n";
        let after = "0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n12\n";
        assert_eq!(
            lines(before, after),
            ["+0", " 1", " 2", " 3", "@@", " 8", " 9", " 10", "-11", " 12"]
        );
    }
}
