#!/usr/bin/env python3
"""Import circles between sibling modules inside each crate, in non-test code.

    python3 .ci/import_circles.py [--allow SRC_DIR ...] [CRATE_SRC_DIR ...]
                                  (default: every crate's src/)

For every `crate::a::b…`, `super::…` and `self::…` path in a module's file (comments, the
`#[cfg(test)] mod tests { … }` block and `#[cfg(test)]` modules left out), an edge is drawn
between the two sibling modules under their deepest common parent (a child using its parent,
or a parent its child, is no circle). Each strongly connected component of more than one
module is printed with one path for each edge. It exits 1 when a circle lies outside every
`--allow` directory (CI allows kubesim's known ones, e2e/src), 0 otherwise."""
import os, re, sys, collections

def module_path(src, f):
    rel = os.path.relpath(f, src)[:-3].split(os.sep)
    if rel[-1] in ('lib', 'main') and len(rel) == 1: return []
    if rel[-1] == 'mod': rel = rel[:-1]
    return rel

def strip(text):
    # drop comments and test code
    text = re.sub(r'//[^\n]*', '', text)
    m = re.search(r'#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{', text)
    if m: text = text[:m.start()]
    return text

def test_modules(text):
    return set(re.findall(r'#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;', text))

def refs(text, here):
    out = []
    # use groups: use crate::{a, b::c};  use super::{x, y}
    for m in re.finditer(r'\buse\s+(crate|super|self)((?:::super)*)::\{([^;]*)\};', text, re.S):
        base = resolve(m.group(1), m.group(2), here)
        if base is None: continue
        for item in split_top(m.group(3)):
            first = re.match(r'\s*(\w+)', item)
            if first and first.group(1) not in ('self',):
                out.append(base + [first.group(1)])
            elif first: out.append(base)
    for m in re.finditer(r'\b(crate|super|self)((?:::super)*)((?:::\w+)+)', text):
        base = resolve(m.group(1), m.group(2), here)
        if base is None: continue
        out.append(base + m.group(3).strip(':').split('::'))
    return out

def split_top(s):
    depth, cur, items = 0, '', []
    for ch in s:
        if ch == '{': depth += 1
        if ch == '}': depth -= 1
        if ch == ',' and depth == 0: items.append(cur); cur = ''
        else: cur += ch
    items.append(cur)
    return items

def resolve(kind, supers, here):
    if kind == 'crate': return []
    n = (1 if kind == 'super' else 0) + supers.count('super')
    if n > len(here): return None
    return here[:len(here) - n]

def scc(nodes, edges):
    index, low, stack, on, out, i = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def visit(v):
        index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
        for w in edges.get(v, ()):
            if w not in index: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            out.append(comp)
    for v in nodes:
        if v not in index: visit(v)
    return out

def crate(src):
    files = {}
    for d, _, fs in os.walk(src):
        for f in fs:
            if f.endswith('.rs'):
                p = os.path.join(d, f)
                files[tuple(module_path(src, p))] = p
    tests = set()
    for mp, p in files.items():
        for t in test_modules(open(p).read()):
            tests.add(mp + (t,))
    known = set(files)
    # inline modules are not files: treat any path prefix as a module if a file exists for it
    edges = collections.defaultdict(lambda: collections.defaultdict(set))  # parent -> a -> {b}
    why = {}
    for mp, p in files.items():
        if any(mp[:len(t)] == t for t in tests): continue
        if p.endswith('/main.rs') and mp == (): continue
        for r in refs(strip(open(p).read()), list(mp)):
            r = tuple(r)
            # the longest known module prefix of r
            k = max((len(x) for x in [r[:n] for n in range(len(r) + 1)] if x in known), default=0)
            q = r[:k]
            c = 0
            while c < len(mp) and c < len(q) and mp[c] == q[c]: c += 1
            if c < len(mp) and c < len(q):
                parent, a, b = mp[:c], mp[c], q[c]
                edges[parent][a].add(b)
                why.setdefault((parent, a, b), []).append((p, "::".join(r)))
    found = []
    for parent, e in sorted(edges.items()):
        nodes = sorted(set(e) | {b for s in e.values() for b in s})
        for comp in scc(nodes, e):
            if len(comp) > 1:
                found.append((parent, sorted(comp), [(a, b, why[(parent, a, b)]) for a in comp for b in e.get(a, ()) if b in comp]))
    return found

def crate_sources():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for d, _, fs in sorted(os.walk(root)):
        if 'Cargo.toml' in fs and os.path.isdir(os.path.join(d, 'src')) and '/target' not in d:
            yield os.path.relpath(os.path.join(d, 'src'))

if __name__ == '__main__':
    args, allowed = sys.argv[1:], []
    while args[:1] == ['--allow'] and len(args) > 1:
        allowed.append(os.path.normpath(args[1])); args = args[2:]
    refused = []
    for src in args or list(crate_sources()):
        for parent, comp, detail in crate(src):
            where = f"{src} {'::'.join(('crate',) + parent)}"
            print(f"{where}: {' <-> '.join(comp)}")
            for a, b, ex in sorted(detail):
                f, path = ex[0]; path = "; ".join(sorted(set(x[1] for x in ex)))
                print(f"    {a} -> {b}   ({os.path.relpath(f)}: {path})")
            if os.path.normpath(src) not in allowed:
                refused.append(where)
    if refused:
        print(f"\n{len(refused)} import circle(s) outside {', '.join(allowed) or 'any allowed directory'}: "
              f"{'; '.join(refused)}. Break each by moving what both modules use into a module "
              "of its own (or into the parent) that neither imports back.", file=sys.stderr)
        sys.exit(1)
