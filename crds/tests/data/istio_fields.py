#!/usr/bin/env python3
"""Lists the field paths of the Istio kinds Trellis serves, and the values of their enum fields,
from istio/api's protos.

Usage: python3 crds/tests/data/istio_fields.py ISTIO_API > crds/tests/data/istio-fields.txt

ISTIO_API is a checkout of github.com/istio/api, or its bare git directory (the protos are then
read from HEAD with `git show`). The output names the commit it was read at and, one line per
field, a Trellis kind and the field's path as YAML spells it (`spec.http.match.uri.exact`):
lists are transparent, `*` stands for a map's key, every nested message is walked down to its
leaves. An enum field's values follow it, a line each: `Kind path = VALUE`.
`crds/tests/istio_fields.rs` checks that Trellis declares every field, or refuses it with "not
supported by Trellis yet" — never "unknown field" —, and accepts every enum value, or refuses it
with that message — never "Unsupported value".

The parser reads the proto3 subset istio/api is written in: packages, imports, (nested)
messages and enums, oneofs, maps, field options; it resolves type names by proto's scoping
rules. Well-known types (google.protobuf.*) are leaves.
"""

import os
import re
import subprocess
import sys

# Trellis kind -> (proto file, message, path in the Trellis object). The Mesh is Trellis' own
# kind; its `outboundTrafficPolicy` is Istio's MeshConfig field of that name.
KINDS = [
    ("VirtualService", "networking/v1alpha3/virtual_service.proto", "istio.networking.v1alpha3.VirtualService", "spec"),
    ("DestinationRule", "networking/v1alpha3/destination_rule.proto", "istio.networking.v1alpha3.DestinationRule", "spec"),
    ("Gateway", "networking/v1alpha3/gateway.proto", "istio.networking.v1alpha3.Gateway", "spec"),
    ("ServiceEntry", "networking/v1alpha3/service_entry.proto", "istio.networking.v1alpha3.ServiceEntry", "spec"),
    ("Sidecar", "networking/v1alpha3/sidecar.proto", "istio.networking.v1alpha3.Sidecar", "spec"),
    ("PeerAuthentication", "security/v1beta1/peer_authentication.proto", "istio.security.v1beta1.PeerAuthentication", "spec"),
    ("RequestAuthentication", "security/v1beta1/request_authentication.proto", "istio.security.v1beta1.RequestAuthentication", "spec"),
    ("AuthorizationPolicy", "security/v1beta1/authorization_policy.proto", "istio.security.v1beta1.AuthorizationPolicy", "spec"),
    ("Mesh", "mesh/v1alpha1/config.proto", "istio.mesh.v1alpha1.MeshConfig.OutboundTrafficPolicy", "spec.outboundTrafficPolicy"),
]

SCALARS = {
    "double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32",
    "fixed64", "sfixed32", "sfixed64", "bool", "string", "bytes",
}

COMMENT = re.compile(r'"(?:[^"\\]|\\.)*"|//[^\n]*|/\*.*?\*/', re.S)
# `// +kubebuilder:altName=jwks_uri`: Istio's CRD accepts the field under that name too.
ALT_NAME = re.compile(r"//\s*\+kubebuilder:altName=(\w+)")
TOKEN = re.compile(r'@altName:\w+|"(?:[^"\\]|\\.)*"|[A-Za-z_][A-Za-z0-9_.]*|\d+|[{}\[\]()<>;=,.-]')


class Source:
    """Reads files of an istio/api checkout or bare git directory."""

    def __init__(self, root):
        self.root = root
        self.worktree = os.path.exists(os.path.join(root, KINDS[0][1]))

    def read(self, path):
        if self.worktree:
            with open(os.path.join(self.root, path), encoding="utf-8") as f:
                return f.read()
        return git(self.root, "show", f"HEAD:{path}")

    def commit(self):
        return git(self.root, "log", "-1", "--format=%H %cs").strip()


def git(root, *args):
    return subprocess.run(["git", "-C", root, *args], check=True, capture_output=True, text=True).stdout


def comment(m):
    """A comment is a space, but for an alternative name it gives its field (`altName`)."""
    text = m.group(0)
    if text.startswith('"'):
        return text
    alt = ALT_NAME.match(text)
    return f" @altName:{alt.group(1)} " if alt else " "


def tokens(text):
    # One pass, so a comment's `/*` (`ns/*`) or a string's `//` is read as what holds it.
    text = COMMENT.sub(comment, text)
    return TOKEN.findall(text)


class Parser:
    """Collects every message (full name -> fields) and enum (full names) of the files read."""

    def __init__(self, source):
        self.source = source
        self.messages = {}  # full name -> list of (json name, type name, is map, scope)
        self.enums = {}  # full name -> value names, in declaration order
        self.read = set()

    def file(self, path):
        if path in self.read or path.startswith("google/"):
            return
        self.read.add(path)
        toks = tokens(self.source.read(path))
        package = ""
        i = 0
        while i < len(toks):
            t = toks[i]
            if t == "package":
                package, i = toks[i + 1], skip_statement(toks, i)
            elif t == "import":
                j = i + 1
                if toks[j] in ("public", "weak"):
                    j += 1
                self.file(toks[j].strip('"'))
                i = skip_statement(toks, i)
            elif t == "message":
                i = self.message(toks, i, package)
            elif t == "enum":
                i = self.enum(toks, i, package)
            else:
                i = skip_statement(toks, i)

    def message(self, toks, i, scope):
        name = f"{scope}.{toks[i + 1]}"
        fields = self.messages.setdefault(name, [])
        assert toks[i + 2] == "{", (name, toks[i + 2])
        i += 3
        while toks[i] != "}":
            t = toks[i]
            if t.startswith("@altName:"):
                i += 1  # read by the field it precedes
            elif t == "message":
                i = self.message(toks, i, name)
            elif t == "enum":
                i = self.enum(toks, i, name)
            elif t == "oneof":
                i += 3
                while toks[i] != "}":
                    i = i + 1 if toks[i].startswith("@altName:") else self.field(toks, i, name, fields)
                i += 1
            elif t in ("option", "reserved", "extensions", ";"):
                i = skip_statement(toks, i)
            else:
                i = self.field(toks, i, name, fields)
        return i + 1

    def enum(self, toks, i, scope):
        """enum Name { VALUE = n [options]; option ...; reserved ...; }"""
        values = self.enums.setdefault(f"{scope}.{toks[i + 1]}", [])
        i += 3
        while toks[i] != "}":
            if toks[i] in ("option", "reserved") or toks[i].startswith("@altName:"):
                i = skip_statement(toks, i) if not toks[i].startswith("@") else i + 1
            else:
                values.append(toks[i])
                i = skip_statement(toks, i)
        return i + 1

    def field(self, toks, i, scope, fields):
        if toks[i] == "option":
            return skip_statement(toks, i)
        start = i
        if toks[i] in ("repeated", "optional"):
            i += 1
        if toks[i] == "map":
            # map < key , value > name = n
            value, name, is_map = toks[i + 4], toks[i + 6], True
        else:
            value, name, is_map = toks[i], toks[i + 1], False
        fields.append((json_name(name), value, is_map, scope))
        j = start - 1
        while j >= 0 and toks[j].startswith("@altName:"):
            fields.append((toks[j].split(":", 1)[1], value, is_map, scope))
            j -= 1
        return skip_statement(toks, i)

    def resolve(self, type_name, scope):
        """The full name of the message `type_name` names as seen from `scope`, or None for a
        scalar, an enum or a well-known type (a leaf)."""
        kind, name = self.lookup(type_name, scope)
        return name if kind == "message" else None

    def lookup(self, type_name, scope):
        """("message" | "enum", full name), or ("leaf", None) for a scalar or well-known type."""
        if type_name in SCALARS or type_name.startswith("google.protobuf."):
            return "leaf", None
        if type_name.startswith("."):
            candidates = [type_name[1:]]
        else:
            parts = scope.split(".")
            candidates = [".".join(parts[:k] + [type_name]) for k in range(len(parts), -1, -1)]
        for c in candidates:
            if c in self.messages:
                return "message", c
            if c in self.enums:
                return "enum", c
        raise SystemExit(f"cannot resolve type {type_name} in {scope}")


def skip_statement(toks, i):
    depth = 0
    while True:
        t = toks[i]
        if t in ("[", "("):
            depth += 1
        elif t in ("]", ")"):
            depth -= 1
        elif t == "{":
            return skip_block(toks, i - 1) if depth == 0 else i + 1
        elif t == ";" and depth == 0:
            return i + 1
        i += 1


def skip_block(toks, i):
    while toks[i] != "{":
        i += 1
    depth = 0
    while True:
        if toks[i] == "{":
            depth += 1
        elif toks[i] == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1


def json_name(proto_name):
    """protoc's JSON name: each `_x` becomes `X`."""
    out, upper = [], False
    for c in proto_name:
        if c == "_":
            upper = True
        else:
            out.append(c.upper() if upper else c)
            upper = False
    return "".join(out)


def walk(parser, message, prefix, stack, out):
    for name, type_name, is_map, scope in parser.messages[message]:
        path = f"{prefix}.{name}"
        out.append(path)
        kind, child = parser.lookup(type_name, scope)
        if kind == "enum" and not is_map:
            out.extend(f"{path} = {v}" for v in parser.enums[child])
        if kind != "message" or child in stack:
            continue
        walk(parser, child, f"{path}.*" if is_map else path, stack + [child], out)


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    source = Source(sys.argv[1])
    parser = Parser(source)
    print("# Field paths of the Istio kinds Trellis serves, read from istio/api's protos.")
    print(f"# istio/api commit {source.commit()}")
    print("# Generated by crds/tests/data/istio_fields.py; do not edit. Lists are transparent,")
    print("# `*` stands for a map's key; `path = VALUE` is a value of an enum field. The Mesh's lines")
    print("# are MeshConfig's outboundTrafficPolicy.")
    for kind, path, message, prefix in KINDS:
        parser.file(path)
        out = []
        walk(parser, message, prefix, [message], out)
        for p in out:
            print(f"{kind} {p}")


if __name__ == "__main__":
    main()
